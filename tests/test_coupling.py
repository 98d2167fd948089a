"""The one coupling (structure) and its transformers, and the builders' vocabulary.

The autograd harness (test_layers_autograd.py, cases in layer_cases.py) checks Coupling,
AdditiveCoupling and AffineCoupling for invertibility and log-determinants; here: the sliced
and the masked paths compute the same map, the layer chooses between them from its mask, the
conditioner's sizes and their errors, the transformers on their own, the state dict, and the
builders (parameter counts of the base commit, deprecated keywords).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.autograd.functional import jacobian

from flowlib.convnets import ResNetConditioner
from flowlib.core import FlowInputError
from flowlib.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    channel_mask,
    checkerboard_mask,
    half_mask,
)
from flowlib.dequantize import UniformDequantization, VariationalDequantization, dequantized_bits_per_dim
from flowlib.distributions import StandardNormal
from flowlib.image_models import ImageFlowModel, count_parameters, glow_image, nice_image, realnvp_image
from flowlib.metrics import bits_per_dim
from flowlib.models import glow_vector, nice, nice_vector, realnvp, realnvp_vector
from flowlib.multiscale import MultiScale
from flowlib.nets import MLP
from flowlib.transformers import Additive, Affine, Transformer, soft_clamp


def _randomise(module: nn.Module, seed: int = 0, scale: float = 0.3) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=g))
    return module


# -- the transformers ------------------------------------------------------------------------
TRANSFORMERS = {"additive": Additive(), "affine": Affine(clamp=2.0), "affine, no clamp": Affine(clamp=None)}


@pytest.mark.parametrize("name", sorted(TRANSFORMERS))
@pytest.mark.parametrize("shape", [(5, 3), (4, 2, 3, 3)])
def test_transformer_inverts_and_reports_its_log_derivative(name: str, shape: tuple[int, ...]) -> None:
    tau = TRANSFORMERS[name]
    g = torch.Generator().manual_seed(3)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    h = torch.randn(shape[0], tau.params * shape[1], *shape[2:], generator=g, dtype=torch.float64)
    y, ld = tau(x, h)
    back, ld_inv = tau.inverse(y, h)
    assert y.shape == x.shape and ld.shape == x.shape and ld_inv.shape == x.shape
    torch.testing.assert_close(back, x)
    torch.testing.assert_close(ld_inv, -ld)
    # Elementwise: the Jacobian is diagonal, so dy_i/dx_i is the gradient of sum(y).
    xr = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(tau(xr, h)[0].sum(), xr)
    torch.testing.assert_close(ld, grad.abs().log())
    full = jacobian(lambda v: tau(v, h[:1])[0], x[:1]).reshape(x[0].numel(), x[0].numel())
    assert torch.count_nonzero(full - torch.diag(torch.diagonal(full))) == 0
    # h = 0 is the identity (a zero-initialised conditioner starts its layer there).
    y0, ld0 = tau(x, torch.zeros_like(h))
    torch.testing.assert_close(y0, x)
    assert not ld0.any()


def test_affine_keeps_the_parameter_layout_of_trained_models() -> None:
    x = torch.tensor([[1.0, 2.0]])
    h = torch.tensor([[0.5, -0.25, 3.0, 4.0]])  # log-scales of both coordinates first, then shifts
    y, ld = Affine(clamp=None)(x, h)
    torch.testing.assert_close(y, x * torch.exp(h[:, :2]) + h[:, 2:])
    torch.testing.assert_close(ld, h[:, :2])
    assert Affine.params == 2 and Additive.params == 1


def test_soft_clamp_bounds() -> None:
    s = torch.tensor([-1e6, -3.0, -1e-3, 0.0, 1e-3, 3.0, 1e6])
    for c in (0.5, 2.0, 3.0):
        out = soft_clamp(s, c)
        assert bool((out.abs() < c).all()) and bool((out.abs() <= s.abs()).all())
        assert torch.equal(torch.sign(out), torch.sign(s))
        torch.testing.assert_close(out[2:5], (2 / torch.pi) * s[2:5], atol=1e-9, rtol=1e-5)  # slope 2/pi at 0
        assert abs(float(out[-1]) - c) < 1e-5 * c
    assert soft_clamp(s, None) is s
    from flowlib import coupling

    assert coupling.soft_clamp is soft_clamp  # one soft clamp, re-exported


def test_transformer_errors() -> None:
    with pytest.raises(FlowInputError, match=r"Affine: expected parameters h of shape \(3, 4\)"):
        Affine()(torch.randn(3, 2), torch.randn(3, 3))
    with pytest.raises(FlowInputError, match="clamp"):
        Affine(clamp=0.0)
    with pytest.raises(FlowInputError, match="AffineCoupling: clamp"):
        AffineCoupling(half_mask(4, 0), MLP(2, 4), clamp=-1.0)


# -- structure: slice or mask ----------------------------------------------------------------
def test_the_layer_slices_channel_and_vector_masks_and_masks_checkerboards() -> None:
    sliced = {
        "channel mask": channel_mask(4, 3, 3, 0),
        "odd channels, parity 1": channel_mask(5, 2, 2, 1),
        "vector half": half_mask(6, 1),
        "vector alternate": half_mask(5, 0, kind="alternate"),
    }
    for name, mask in sliced.items():
        layer = AffineCoupling(mask, MLP(1, 1))  # sizes are checked at the first call, not here
        assert layer.sliced, name
        assert "mask" in dict(layer.named_buffers()) and "sliced" in repr(layer)
    masked = {
        "checkerboard": checkerboard_mask(2, 4, 4, 0),
        "checkerboard and ones (variational dequantization)": torch.cat(
            [checkerboard_mask(1, 4, 4, 1), torch.ones(1, 4, 4)]),
        "keeps everything": torch.ones(3),
        "moves everything": torch.zeros(1),
    }
    for name, mask in masked.items():
        assert not AdditiveCoupling(mask, MLP(1, 1)).sliced, name
    assert Coupling.conditioner_sizes(channel_mask(5, 2, 2, 1), Affine) == (3, 4)
    assert Coupling.conditioner_sizes(channel_mask(5, 2, 2, 0), Additive()) == (2, 3)
    assert Coupling.conditioner_sizes(half_mask(5, 0, kind="alternate"), Affine()) == (3, 4)
    assert Coupling.conditioner_sizes(checkerboard_mask(3, 4, 4, 0), Affine) == (3, 6)
    assert Coupling.conditioner_sizes(torch.zeros(1), Affine) == (1, 2)


class _AsMasked(nn.Module):
    """The masked form of a sliced conditioner ``net`` for a (1, 1, d) image mask.

    Reads m*x, runs ``net`` on the kept entries and writes its output at the moved ones; the
    entries it writes at the kept positions are garbage that the layer must ignore.
    """

    def __init__(self, net: nn.Module, kept: torch.Tensor, moved: torch.Tensor, params: int) -> None:
        super().__init__()
        self.net, self.kept, self.moved, self.params = net, kept, moved, params

    def forward(self, masked_x: torch.Tensor) -> torch.Tensor:
        b, d = masked_x.shape[0], masked_x.shape[-1]
        out = self.net(masked_x.reshape(b, d)[:, self.kept]).reshape(b, self.params, -1)
        h = torch.full((b, self.params, d), 1e3, dtype=masked_x.dtype)
        h[:, :, self.moved] = out
        return h.reshape(b, self.params, 1, d)


@pytest.mark.parametrize("transformer", [Additive(), Affine(clamp=2.0), Affine(clamp=None)],
                         ids=["additive", "affine", "affine-no-clamp"])
@pytest.mark.parametrize("kind", ["half", "alternate"])
def test_sliced_and_masked_paths_are_the_same_map(transformer: Transformer, kind: str) -> None:
    d = 5
    vector_mask = half_mask(d, 1, kind=kind)
    kept = torch.nonzero(vector_mask).flatten()
    moved = torch.nonzero(1 - vector_mask).flatten()
    net = _randomise(MLP(*Coupling.conditioner_sizes(vector_mask, transformer), hidden=8, layers=2))
    sliced = Coupling(vector_mask, net, transformer)
    # The same split of the same coordinates as a (1, 1, d) image: no longer one value per
    # channel, so the layer multiplies by the mask; its conditioner wraps the very same MLP.
    masked = Coupling(vector_mask.view(1, 1, d), _AsMasked(net, kept, moved, transformer.params), transformer)
    assert sliced.sliced and not masked.sliced
    x = torch.randn(7, d, generator=torch.Generator().manual_seed(2))
    z_s, ld_s = sliced(x)
    z_m, ld_m = masked(x.view(7, 1, 1, d))
    torch.testing.assert_close(z_m.view(7, d), z_s)
    torch.testing.assert_close(ld_m, ld_s)
    assert torch.equal(z_s[:, kept], x[:, kept]), "the kept coordinates pass unchanged"
    back_s, ld_is = sliced.inverse(z_s)
    back_m, ld_im = masked.inverse(z_m)
    torch.testing.assert_close(back_s, x)
    torch.testing.assert_close(back_m.view(7, d), x)
    torch.testing.assert_close(ld_is, -ld_s)
    torch.testing.assert_close(ld_im, -ld_m)


def test_masked_path_is_the_formula_of_the_papers() -> None:
    """z = m*x + (1-m)*(x*exp(s) + t), (s_raw, t) = NN(m*x), s = (1-m)*soft_clamp(s_raw)."""
    mask = checkerboard_mask(2, 4, 4, 1)
    layer = AffineCoupling(mask, _randomise(ResNetConditioner(2, 4, 8, 1)), clamp=2.0)
    x = torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(5))
    s_raw, t = layer.conditioner(mask * x).chunk(2, dim=1)
    s = (1 - mask) * soft_clamp(s_raw, 2.0)
    z_ref = mask * x + (1 - mask) * (x * torch.exp(s) + (1 - mask) * t)
    z, ld = layer(x)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(ld, s.flatten(1).sum(1))


def test_masked_path_ignores_huge_outputs_at_the_kept_entries() -> None:
    """clamp=None and a conditioner that writes 1e4 where nothing is transformed: no inf, no NaN."""

    class Huge(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 2 * x.shape[1], *x.shape[2:]), 1e4) * checkerboard_mask(1, 2, 2, 0)

    layer = AffineCoupling(checkerboard_mask(1, 2, 2, 0), Huge(), clamp=None)
    x = torch.randn(4, 1, 2, 2, requires_grad=True)
    z, ld = layer(x)
    (z.sum() + ld.sum()).backward()
    assert torch.equal(z, x) and not ld.any() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("case", ["affine, no clamp, vector half", "additive, checkerboard",
                                  "affine, channels"])
def test_more_layouts_against_autograd(case: str) -> None:
    """The harness's checks (float64) for layouts beyond its one case per class."""
    g = torch.Generator().manual_seed(11)
    if case == "affine, no clamp, vector half":
        mask, x = half_mask(4, 0), torch.randn(3, 4, generator=g, dtype=torch.float64)
        layer = AffineCoupling(mask, _randomise(MLP(2, 4, hidden=8, layers=1), scale=0.2), clamp=None)
    elif case == "additive, checkerboard":
        mask, x = checkerboard_mask(1, 3, 3, 0), torch.randn(3, 1, 3, 3, generator=g, dtype=torch.float64)
        layer = AdditiveCoupling(mask, _randomise(ResNetConditioner(1, 1, 4, 1)))
    else:
        mask, x = channel_mask(4, 2, 2, 0), torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
        layer = AffineCoupling(mask, _randomise(ResNetConditioner(2, 4, 4, 1)), clamp=1.0)
    layer = layer.double()
    for fn, inp in ((layer, x), (layer.inverse, layer(x)[0].detach())):
        out, ld = fn(inp)
        d = inp[0].numel()
        for i in range(inp.shape[0]):
            jac = jacobian(lambda v, fn=fn: fn(v)[0], inp[i:i + 1]).reshape(d, d)
            torch.testing.assert_close(torch.linalg.slogdet(jac)[1], ld[i])
    torch.testing.assert_close(layer.inverse(layer(x)[0])[0], x)
    assert not torch.allclose(layer(x)[0], x)


def test_conditioner_size_errors_name_what_was_expected() -> None:
    layer = AffineCoupling(channel_mask(4, 2, 2, 0), ResNetConditioner(2, 2, 4, 1))  # 2, not 2 x 2
    with pytest.raises(FlowInputError,
                       match=r"AffineCoupling: the layer slices.*\(3, 4, 2, 2\).*conditioner_sizes"):
        layer(torch.randn(3, 4, 2, 2))
    masked = AdditiveCoupling(checkerboard_mask(2, 2, 2, 0), ResNetConditioner(2, 4, 4, 1))  # 4, not 2
    with pytest.raises(FlowInputError, match=r"multiplies by its mask.*\(3, 2, 2, 2\)"):
        masked.inverse(torch.randn(3, 2, 2, 2))
    good = AffineCoupling(channel_mask(4, 2, 2, 0), ResNetConditioner(2, 4, 4, 1))
    with pytest.raises(FlowInputError, match=r"\(batch, 4, 2, 2\)"):
        good(torch.randn(3, 4, 3, 3))
    with pytest.raises(FlowInputError, match="binary mask"):
        AdditiveCoupling(torch.tensor([0.5, 1.0]), MLP(1, 1))
    with pytest.raises(FlowInputError, match="callable conditioner"):
        AdditiveCoupling(half_mask(2), 3)
    with pytest.raises(FlowInputError, match="transformer instance"):
        Coupling(half_mask(2), MLP(1, 2), Affine)
    with pytest.raises(FlowInputError, match="Transformer"):
        Coupling(half_mask(2), MLP(1, 2), nn.Identity())
    with pytest.raises(FlowInputError, match="parity"):
        half_mask(4, 2)


# -- the state dict ----------------------------------------------------------------------------
def test_state_dict_keys_and_loading() -> None:
    layer = AffineCoupling(channel_mask(4, 2, 2, 0), _randomise(ResNetConditioner(2, 4, 4, 1)))
    keys = set(layer.state_dict())
    assert "mask" in keys and all(k == "mask" or k.startswith("conditioner.") for k in keys)
    # A sliced coupling saved before the mask was stored loads as it is.
    old = {k: v for k, v in layer.state_dict().items() if k != "mask"}
    fresh = AffineCoupling(channel_mask(4, 2, 2, 0), ResNetConditioner(2, 4, 4, 1))
    fresh.load_state_dict(old)
    x = torch.randn(2, 4, 2, 2)
    torch.testing.assert_close(fresh(x)[0], layer(x)[0])
    # A different mask would silently mean a different layer: refused.
    other = AffineCoupling(channel_mask(4, 2, 2, 1), ResNetConditioner(2, 4, 4, 1))
    with pytest.raises(RuntimeError, match="the stored mask differs"):
        other.load_state_dict(layer.state_dict())


# -- builders ----------------------------------------------------------------------------------
#: Parameter counts measured on the base commit c34e29c (before the one coupling), per builder call.
BASE_COUNTS = [
    (lambda: glow_image((1, 32, 32), scales=3, depth=8, hidden=64), 3_747_040),
    (lambda: glow_image((1, 28, 28), scales=2, depth=8, hidden=64), 2_449_200),
    (lambda: glow_image((1, 28, 28), scales=2, depth=4, hidden=32, blocks=1), 169_920),  # shipped glow_mnist
    (lambda: glow_image((1, 8, 8), scales=2, depth=4, hidden=32, conditioner="glow", grey_levels=17), 30_400),
    (lambda: realnvp_image((1, 28, 28), scales=2, depth=4, hidden=32, blocks=1), 179_568),  # realnvp_mnist
    (lambda: realnvp_image((1, 8, 8), scales=2, depth=4, hidden=16, blocks=1, grey_levels=17), 53_040),
    (lambda: realnvp_image((1, 28, 28)), 1_244_656),
    (lambda: nice_image((1, 28, 28), couplings=4, hidden=16, blocks=1), 20_568),  # shipped nice_mnist
    (lambda: nice_image((1, 8, 8), hidden=16, grey_levels=17), 38_408),
    (lambda: realnvp_vector(2), 53_068),
    (lambda: realnvp_vector(5, couplings=4, hidden=16), 1_702),
    (lambda: realnvp_vector(1, couplings=2, hidden=8), 218),  # d = 1: nothing to slice, masked
    (lambda: nice_vector(2), 133_638),
    (lambda: nice_vector(5, couplings=4, hidden=16), 2_575),
    (lambda: glow_vector(2), 53_178),
]


@pytest.mark.parametrize("index", range(len(BASE_COUNTS)))
def test_builders_build_the_architectures_of_the_base_commit(index: int) -> None:
    build, count = BASE_COUNTS[index]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the new spellings never warn
        model = build()
    assert count_parameters(model) == count


def _same(a: nn.Module, b: nn.Module) -> None:
    assert count_parameters(a) == count_parameters(b)
    assert list(a.state_dict()) == list(b.state_dict())
    assert [v.shape for v in a.state_dict().values()] == [v.shape for v in b.state_dict().values()]


OLD_AND_NEW = {
    "glow_image": (lambda: glow_image((1, 8, 8), levels=2, steps=2, hidden=8, blocks=1, bins=17,
                                      coupling="mask"),
                   lambda: glow_image((1, 8, 8), scales=2, depth=2, hidden=8, blocks=1, grey_levels=17)),
    "realnvp_image": (lambda: realnvp_image((1, 8, 8), levels=1, steps=4, hidden=8, bins=5, coupling="split"),
                      lambda: realnvp_image((1, 8, 8), scales=1, depth=4, hidden=8, grey_levels=5)),
    "nice_image": (lambda: nice_image((1, 4, 4), hidden=8, bins=17),
                   lambda: nice_image((1, 4, 4), hidden=8, grey_levels=17)),
    "realnvp dispatch": (lambda: realnvp((1, 8, 8), levels=1, steps=2, hidden=8),
                         lambda: realnvp((1, 8, 8), scales=1, depth=2, hidden=8)),
    "realnvp_vector": (lambda: realnvp_vector(4, couplings=3, coupling="mask"),
                       lambda: realnvp_vector(4, couplings=3)),
    "nice_vector": (lambda: nice(3, couplings=2, coupling="split"), lambda: nice_vector(3, couplings=2)),
}


@pytest.mark.parametrize("name", sorted(OLD_AND_NEW))
def test_old_keywords_warn_and_build_the_same_model(name: str) -> None:
    old, new = OLD_AND_NEW[name]
    with pytest.warns(DeprecationWarning, match=r"deprecated"):
        a = old()
    _same(a, new())


def test_old_spellings_elsewhere_warn_and_mean_the_same() -> None:
    flow = realnvp_image((1, 4, 4), scales=1, depth=2, hidden=4, grey_levels=5).flow
    with pytest.warns(DeprecationWarning, match="grey_levels="):
        model = ImageFlowModel(flow, StandardNormal((1, 4, 4)), levels=5)
    assert model.grey_levels == 5
    with pytest.warns(DeprecationWarning, match=r"\.grey_levels"):
        assert model.levels == 5
    with pytest.warns(DeprecationWarning, match="grey_levels="):
        assert UniformDequantization(levels=7).grey_levels == 7
    with pytest.warns(DeprecationWarning, match="couplings="):
        deq = VariationalDequantization(5, (1, 2, 2), steps=3, hidden=4)
    assert len(deq.flow) == 3
    with pytest.warns(DeprecationWarning, match="grey_levels="):
        old = bits_per_dim(torch.tensor([-3.0]), 4, levels=256)
    torch.testing.assert_close(old, bits_per_dim(torch.tensor([-3.0]), 4, grey_levels=256))
    torch.testing.assert_close(dequantized_bits_per_dim(torch.tensor(0.0), 784, 256), torch.tensor(8.0))
    ms = flow[1]
    with pytest.warns(DeprecationWarning, match="scales"):
        assert ms.levels == ms.scales == 1
    with pytest.warns(DeprecationWarning, match="scale_shapes"):
        assert MultiScale.level_shapes((1, 8, 8), 2) == MultiScale.scale_shapes((1, 8, 8), 2)
    with pytest.warns(DeprecationWarning, match="flows="):
        MultiScale((1, 4, 4), steps=[[AffineCoupling(channel_mask(4, 2, 2, 0), MLP(1, 1))]])


def test_builders_reject_unknown_options() -> None:
    with pytest.raises(FlowInputError, match="conditioner must be one of"):
        realnvp_image((1, 8, 8), conditioner="unet")
    with pytest.raises(FlowInputError, match="depth must be an integer >= 1"):
        glow_image((1, 8, 8), depth=0)
    with pytest.raises(FlowInputError, match="3 scales"):
        glow_image((1, 12, 12), scales=3)
    with pytest.raises(TypeError, match="unexpected keyword argument 'sizes'"):
        glow_image((1, 8, 8), sizes=2)
    with pytest.raises(FlowInputError, match="mixing must be one of"):
        realnvp_vector(3, mixing="shuffle")
