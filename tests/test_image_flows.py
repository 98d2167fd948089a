"""Image flows: 1x1 convolutions, multi-scale Glow / RealNVP / NICE, dequantization, bits/dim.

Small images (1x8x8, narrow conditioners) keep every test to seconds on a CPU.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from layer_cases import example
from torch.autograd.functional import jacobian

from flowlib import FlowInputError
from flowlib.actnorm import ActNorm
from flowlib.convnets import ResNetConditioner, ZeroConv2d
from flowlib.core import Flow, sum_except_batch
from flowlib.dequantize import (
    LogitPreprocess,
    UniformDequantization,
    VariationalDequantization,
    as_levels,
    dequantized_bits_per_dim,
)
from flowlib.distributions import StandardNormal
from flowlib.image_models import ImageFlowModel, count_parameters, glow_image, nice_image, realnvp_image
from flowlib.linear import InvertibleLinear, InvertibleLinearLU
from flowlib.multiscale import MultiScale, Squeeze, squeeze, unsqueeze

SHAPE = (1, 8, 8)
SMALL = dict(hidden=8, blocks=1)


def _perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.05) -> None:
    """Give every zero-initialised output convolution small random weights (no identity maps)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, ZeroConv2d):
                m.conv.weight.copy_(scale * torch.randn(m.conv.weight.shape, generator=g))
                m.conv.bias.copy_(scale * torch.randn(m.conv.bias.shape, generator=g))


def _levels(n: int, levels: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, levels, (n, *SHAPE), generator=g, dtype=torch.uint8)


@pytest.fixture(scope="module", params=["affine", "spline"])
def glow(request) -> ImageFlowModel:
    """A full Glow: 2 levels, 4 steps each, ActNorm initialised on data, couplings perturbed; its
    couplings affine (the paper's) or rational-quadratic splines (Durkan et al., 2019)."""
    torch.manual_seed(0)
    model = glow_image(SHAPE, scales=2, depth=4, grey_levels=17, transformer=request.param, **SMALL)
    model.initialize(_levels(32, 17))
    _perturb(model)
    return model.eval()


# -- the invertible 1x1 convolution ---------------------------------------------------------
@pytest.mark.parametrize("cls", [InvertibleLinear, InvertibleLinearLU])
def test_linear_logdet_matches_float64_slogdet_for_64_channels(cls):
    g = torch.Generator().manual_seed(3)
    f = cls(64, generator=g)
    with torch.no_grad():  # move far from the rotation it started as
        for p in f.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=g))
    x = torch.randn(2, 64, 3, 5, generator=g)
    z, logdet = f(x)
    w64 = f._compute_weight().double()
    expected = 15 * torch.linalg.slogdet(w64)[1]
    assert abs(logdet[0].double().item() - expected.item()) < 1e-5 * max(1.0, abs(expected.item()))
    # The same W acts on each pixel: compare with an explicit per-pixel matrix product.
    z_ref = torch.einsum("ij,bjhw->bihw", w64, x.double())
    torch.testing.assert_close(z.double(), z_ref, atol=1e-4, rtol=1e-4)
    x_back, logdet_inv = f.inverse(z)
    # float32 round-trip error grows with the condition number of W (large for this random LU).
    cond = torch.linalg.cond(w64).item()
    torch.testing.assert_close(x_back, x, atol=1e-6 * cond, rtol=1e-4)
    torch.testing.assert_close(logdet_inv, -logdet)


@pytest.mark.parametrize("cls", [InvertibleLinear, InvertibleLinearLU])
def test_linear_serves_vectors_and_images(cls):
    g = torch.Generator().manual_seed(1)
    f, _ = example(cls, g)
    v = torch.randn(5, 4, generator=g)
    z, ld = f(v)
    torch.testing.assert_close(ld, torch.linalg.slogdet(f._compute_weight().double())[1].float().expand(5))
    torch.testing.assert_close(f.inverse(z)[0], v, atol=1e-5, rtol=1e-5)
    for bad in (torch.randn(5, 3), torch.randn(5, 3, 2, 2), torch.randn(5, 4, 2), torch.randn(4)):
        with pytest.raises(FlowInputError, match="expected"):
            f(bad)


def test_lu_logdet_is_the_sum_of_log_s():
    f, x = example(InvertibleLinearLU, torch.Generator().manual_seed(2))
    _, ld = f(x)
    pixels = x.shape[2] * x.shape[3]
    torch.testing.assert_close(ld, (pixels * f.log_s.sum()).expand(x.shape[0]))


def test_linear_eval_cache_is_invalidated_by_parameter_updates():
    f, x = example(InvertibleLinear, torch.Generator().manual_seed(4))
    f.eval()
    with torch.no_grad():
        z, _ = f(x)
        first = f._get("inverse")
        assert f._get("inverse") is first  # cached while nothing changes
        f.weight.add_(0.1)  # what an optimiser step does: an in-place update
        z2, ld2 = f(x)
        assert f._get("inverse") is not first
        torch.testing.assert_close(f.inverse(z2)[0], x, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ld2[0], 6 * torch.linalg.slogdet(f.weight.double())[1].float())
    # Training mode: gradients reach W through the inverse too.
    f.train()
    x_back, _ = f.inverse(z)
    x_back.sum().backward()
    assert f.weight.grad is not None and f.weight.grad.abs().sum() > 0


# -- squeeze and the multi-scale flow -----------------------------------------------------
def test_squeeze_is_space_to_depth_and_needs_even_sizes():
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    z, ld = Squeeze()(x)
    assert z.shape == (1, 4, 2, 2) and ld.shape == (1,) and float(ld) == 0
    # Channel i*2 + j holds the pixels (2r + i, 2c + j).
    torch.testing.assert_close(z[0, 1], torch.tensor([[1.0, 3.0], [9.0, 11.0]]))
    torch.testing.assert_close(unsqueeze(squeeze(x)), x)
    with pytest.raises(FlowInputError, match="divisible"):
        Squeeze()(torch.randn(2, 1, 5, 4))
    with pytest.raises(FlowInputError, match="divisible"):
        Squeeze().inverse(torch.randn(2, 3, 2, 2))


def test_glow_round_trip_and_logdet_is_sum_of_parts(glow):
    g = torch.Generator().manual_seed(5)
    y = torch.rand(6, *SHAPE, generator=g)
    with torch.no_grad():
        z, logdet = glow.flow(y)
        y_back, logdet_inv = glow.flow.inverse(z)
    assert z.shape == y.shape
    torch.testing.assert_close(y_back, y, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logdet_inv, -logdet, atol=1e-4, rtol=1e-5)

    # Walk the same path by hand, layer by layer, and add up the pieces.
    logit, ms = glow.flow[0], glow.flow[1]
    assert isinstance(ms, MultiScale) and ms.scales == 2 and len(ms.flows[0]) == 12
    with torch.no_grad():
        h, total = logit(y)
        parts = 1
        for scale in range(ms.scales):
            h = squeeze(h)
            for layer in ms.flows[scale]:
                h, ld = layer(h)
                total, parts = total + ld, parts + 1
            if scale < ms.scales - 1:
                h, ld = ms.priors[scale](h)
                total, parts = total + ld, parts + 1
                h = h.chunk(2, dim=1)[0]
    assert parts == 1 + 24 + 1
    torch.testing.assert_close(total, logdet, atol=1e-4, rtol=1e-5)


def test_glow_logdet_matches_autograd_jacobian(glow):
    flow = copy.deepcopy(glow.flow).double()
    y = torch.rand(1, *SHAPE, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    _, logdet = flow(y)
    jac = jacobian(lambda t: flow(t)[0], y, vectorize=True).reshape(64, 64)
    assert abs(torch.linalg.slogdet(jac)[1].item() - logdet.item()) < 1e-6


def test_reconstruction_keeps_every_split_latent(glow):
    x = as_levels(_levels(4, 17, seed=7), 17) / 17
    with torch.no_grad():
        z = glow.encode(x)
        latents = glow.flow[1].split_latents(z)
        assert [tuple(t.shape[1:]) for t in latents] == [(2, 4, 4), (8, 2, 2)]
        torch.testing.assert_close(glow.flow[1].merge_latents(latents), z)
        x_back = glow.decode(z)
        torch.testing.assert_close(x_back, x, atol=1e-5, rtol=1e-5)
        z_again = glow.encode(x_back)
    for a, b in zip(latents, glow.flow[1].split_latents(z_again), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_temperature_zero_is_deterministic_and_the_mode(glow):
    torch.manual_seed(1)
    a = glow.sample(5, temperature=0.0)
    torch.manual_seed(2)
    b = glow.sample(5, temperature=0.0)
    assert torch.equal(a, b) and torch.equal(a[0], a[4])
    with torch.no_grad():
        mode = glow.decode(torch.zeros(1, *SHAPE))
    torch.testing.assert_close(a[:1], mode)
    # The split prior is not trivial here, so the mode is not just decode of "z2 = 0".
    prior = glow.flow[1].priors[0]
    assert prior.net.conv.weight.abs().sum() > 0


def test_temperature_scales_every_latent_including_split_priors(glow):
    torch.manual_seed(3)
    spreads = []
    for t in (0.0, 0.3, 1.0):
        with torch.no_grad():
            x = glow.sample(100, temperature=t)
            z = glow.encode(x)
        # eps ~ N(0, T^2) at every level: the encoded latent's spread is T at every level.
        for eps in glow.flow[1].split_latents(z):
            assert abs(eps.std().item() - t) < 0.05 + 0.05 * t
        spreads.append(x.std(dim=0).mean().item())
    assert spreads[0] < 1e-6 < spreads[1] < spreads[2]


def _fresh(glow: ImageFlowModel) -> ImageFlowModel:
    """A new, untrained Glow of the fixture's architecture (its transformer included)."""
    spline = type(glow.flow[1].flows[0][2].transformer).__name__ == "RationalQuadraticSpline"
    return glow_image(SHAPE, scales=2, depth=4, grey_levels=17, transformer="spline" if spline else "affine",
                      **SMALL)


def test_state_dict_round_trip_keeps_log_prob_and_actnorm(glow):
    fresh = _fresh(glow)
    assert not any(m.is_initialized for m in fresh.modules() if isinstance(m, ActNorm))
    fresh.load_state_dict(glow.state_dict())
    assert all(m.is_initialized for m in fresh.modules() if isinstance(m, ActNorm))
    x = _levels(8, 17, seed=8)
    # Training mode: an uninitialised ActNorm would re-initialise on this batch here.
    fresh.train()
    torch.manual_seed(0)
    with torch.no_grad():
        lp_fresh = fresh.log_prob(x)
    torch.manual_seed(0)
    with torch.no_grad():
        lp = glow.log_prob(x)
    torch.testing.assert_close(lp_fresh, lp)


def _old_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict as flowlib wrote it before MultiScale's per-scale flows were called ``flows``."""
    return {k.replace("flow.flows.1.flows.", "flow.flows.1.steps.", 1): v for k, v in state.items()}


def test_multiscale_keeps_its_flows_as_flows_and_steps_is_a_deprecated_view(glow):
    ms = glow.flow[1]
    keys = list(glow.state_dict())
    assert any(k.startswith("flow.flows.1.flows.1.") for k in keys)
    assert not any(".steps." in k for k in keys)
    with pytest.warns(DeprecationWarning, match=r"MultiScale\.flows"):
        assert ms.steps is ms.flows
    with pytest.raises(AttributeError, match=r"read-only.*MultiScale\.flows"):
        ms.steps = torch.nn.ModuleList()
    assert "steps" not in ms._modules


def test_a_state_dict_of_the_old_layout_loads_with_identical_outputs(glow):
    old = _old_layout(glow.state_dict())
    assert sum(".steps." in k for k in old) > 20 and not any(k.startswith("flow.flows.1.flows.") for k in old)
    fresh = _fresh(glow).eval()
    loaded = fresh.load_state_dict(old)  # strict: every key found, none left over
    assert not loaded.missing_keys and not loaded.unexpected_keys
    for (k, a), (_, b) in zip(fresh.state_dict().items(), glow.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    x = _levels(8, 17, seed=9)
    y = torch.rand(8, *SHAPE, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        assert torch.equal(fresh.flow(y)[0], glow.flow(y)[0])
        assert torch.equal(fresh.flow(y)[1], glow.flow(y)[1])
        torch.manual_seed(0)
        lp_old = fresh.log_prob(x)
        torch.manual_seed(0)
        assert torch.equal(lp_old, glow.log_prob(x))
    # A key under both names is not silently dropped: strict loading reports the old one.
    key = "flow.flows.1.steps.0.flows.0.bias"
    both = {**glow.state_dict(), key: old[key]}
    with pytest.raises(RuntimeError, match=r"Unexpected key.*flow\.flows\.1\.steps\.0\.flows\.0\.bias"):
        fresh.load_state_dict(both)


def test_builders_reject_shapes_the_squeezes_cannot_divide():
    with pytest.raises(FlowInputError, match="glow_image.*divisible by 4"):
        glow_image((1, 6, 6), scales=2, **SMALL)
    with pytest.raises(FlowInputError, match="realnvp_image.*divisible by 8"):
        realnvp_image((1, 12, 12), scales=3, **SMALL)
    with pytest.raises(FlowInputError, match="image shape"):
        glow_image((64,), **SMALL)
    with pytest.raises(FlowInputError, match="depth"):
        glow_image(SHAPE, depth=0, **SMALL)
    model = glow_image((3, 4, 12), scales=2, **SMALL)  # any size divisible by 2^scales works
    assert model.sample(2).shape == (2, 3, 4, 12)


def test_models_reject_wrong_data(glow):
    with pytest.raises(FlowInputError, match=r"expected images of shape \(batch, 1, 8, 8\)"):
        glow.log_prob(torch.zeros(2, 1, 8, 4, dtype=torch.uint8))
    with pytest.raises(FlowInputError, match="0..16"):
        glow.log_prob(torch.full((2, *SHAPE), 17, dtype=torch.uint8))
    with pytest.raises(FlowInputError, match=r"not all integers; for intensities in \[0, 1\]"):
        glow.log_prob(torch.full((2, *SHAPE), 0.51))
    with pytest.raises(FlowInputError, match="expected"):
        glow.flow(torch.rand(2, 1, 4, 4))


@pytest.mark.parametrize("builder", [nice_image, realnvp_image, glow_image])
def test_every_builder_gives_a_trainable_image_model(builder):
    torch.manual_seed(0)
    model = builder(SHAPE, grey_levels=17, **SMALL)
    x = _levels(8, 17, seed=9)
    model.initialize(x)
    bpd = model.bits_per_dim(x)
    assert bpd.shape == (8,) and torch.isfinite(bpd).all()
    bpd.mean().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert count_parameters(model) > 0
    levels = model.sample_levels(3, temperature=0.7)
    assert levels.shape == (3, *SHAPE) and levels.min() >= 0 and levels.max() <= 16


# -- dequantization and bits per dimension -------------------------------------------------
class _Probit(Flow):
    """z = Phi^{-1}(y): with a standard-normal base, the density of y is exactly 1 on [0, 1]^D."""

    abstract = True  # a test helper, kept out of flowlib's layer list

    def forward(self, x):
        z = math.sqrt(2) * torch.erfinv(2 * x - 1)
        return z, sum_except_batch(0.5 * z * z + 0.5 * math.log(2 * math.pi))

    def inverse(self, z):
        log_dydz = -0.5 * z * z - 0.5 * math.log(2 * math.pi)
        return 0.5 * (1 + torch.erf(z / math.sqrt(2))), sum_except_batch(log_dydz)


@pytest.mark.parametrize("levels", [256, 17])
def test_uniform_model_scores_log2_levels_bits_per_dim(levels):
    expected = math.log2(levels)  # 8 for 256 levels, 4.0875 for 17
    d = math.prod(SHAPE)
    assert dequantized_bits_per_dim(torch.zeros(3), d, levels).tolist() == pytest.approx([expected] * 3)
    model = ImageFlowModel(_Probit(), StandardNormal(SHAPE), grey_levels=levels)
    x = _levels(5, levels, seed=10)
    want = torch.full((5,), expected)
    torch.testing.assert_close(model.bits_per_dim(x), want, atol=1e-4, rtol=0)
    torch.testing.assert_close(model.bits_per_dim(x, samples=3), want, atol=1e-4, rtol=0)
    # The same levels cast to float (as fit() does) give the same score.
    torch.testing.assert_close(model.bits_per_dim(x.float()), want, atol=1e-4, rtol=0)


def test_bits_per_dim_formula_hand_case():
    # D = 2, K = 4, log p_cont = log 3 (nats): bpd = (-log 3 + 2 log 4) / (2 log 2) = 2 - log2(3)/2.
    got = dequantized_bits_per_dim(torch.tensor([math.log(3.0)]), 2, 4)
    assert got.item() == pytest.approx(2 - math.log2(3) / 2)


def test_uniform_dequantization_stays_in_the_cell():
    x = as_levels(_levels(4, 17, seed=11), 17)
    y, corr = UniformDequantization(17)(x)
    assert bool(((y * 17 - x) >= 0).all() and ((y * 17 - x) < 1).all())
    torch.testing.assert_close(corr, torch.full((4,), -64 * math.log(17)))


def test_variational_dequantization_log_q_matches_autograd():
    torch.manual_seed(0)
    deq = VariationalDequantization(17, (1, 2, 2), couplings=2, hidden=8, blocks=1)
    _perturb(deq, scale=0.3)
    deq = deq.double()
    x = as_levels(_levels(1, 17, seed=12)[:, :, :2, :2], 17).double()
    y, corr = deq(x, generator=torch.Generator().manual_seed(42))
    # The same eps as the module drew: u = sigmoid(v(eps; x)), log q = log N(eps) - log|du/deps|.
    eps = torch.randn((1, 1, 2, 2), generator=torch.Generator().manual_seed(42), dtype=torch.float64)

    def u_of(e):
        h, _ = deq.flow(torch.cat([e, 2 * x / 16 - 1], dim=1))
        return torch.sigmoid(h[:, :1])

    jac = jacobian(u_of, eps).reshape(4, 4)
    log_q = -0.5 * (eps * eps + math.log(2 * math.pi)).sum() - torch.linalg.slogdet(jac)[1]
    assert corr.item() == pytest.approx(-4 * math.log(17) - log_q.item(), abs=1e-8)
    u = y * 17 - x
    torch.testing.assert_close(u, u_of(eps))
    assert bool(((u > 0) & (u < 1)).all())


def test_variational_dequantization_trains_with_the_model():
    torch.manual_seed(0)
    model = glow_image(SHAPE, scales=1, depth=1, grey_levels=17, dequantization="variational", **SMALL)
    x = _levels(4, 17, seed=13)
    model.initialize(x)
    _perturb(model)
    model.bits_per_dim(x).mean().backward()
    grads = [p.grad for p in model.dequantizer.parameters()]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_logit_preprocess_is_finite_at_the_ends():
    f = LogitPreprocess(0.05)
    x = torch.tensor([[0.0, 1.0, 0.5]])
    y, ld = f(x)
    bound = math.log(0.95 / 0.05)
    torch.testing.assert_close(y, torch.tensor([[-bound, bound, 0.0]]))
    assert torch.isfinite(ld).all()
    torch.testing.assert_close(f.inverse(y)[0], x, atol=1e-6, rtol=0)
    with pytest.raises(FlowInputError, match="alpha"):
        LogitPreprocess(0.7)


def test_spline_glow_starts_as_the_identity_map_and_rejects_an_unknown_transformer():
    model = glow_image(SHAPE, scales=2, depth=2, grey_levels=17, transformer="spline", spline_bins=5, **SMALL)
    step = model.flow[1].flows[0][2]
    assert type(step.transformer).__name__ == "RationalQuadraticSpline" and step.transformer.bins == 5
    h = torch.randn(3, *step.event_shape, generator=torch.Generator().manual_seed(1))
    z, logdet = step(h)  # zero last convolution: every bin the same width and height, slopes 1
    torch.testing.assert_close(z, h, atol=1e-5, rtol=0)
    torch.testing.assert_close(logdet, torch.zeros(3), atol=1e-4, rtol=0)
    with pytest.raises(FlowInputError, match="glow_image.*transformer"):
        glow_image(SHAPE, transformer="cubic")


def test_conditioner_starts_at_zero():
    net = ResNetConditioner(2, 4, hidden=8, blocks=2)
    assert torch.equal(net(torch.randn(3, 2, 4, 4)), torch.zeros(3, 4, 4, 4))
    with pytest.raises(FlowInputError, match="expected input"):
        net(torch.randn(3, 3, 4, 4))
