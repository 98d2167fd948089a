"""The vector flows of the first lectures, beyond the generic autograd harness.

Planar / radial invertibility and their inverses, the numerical inverse of the mixture
of logistics, ActNorm's data-dependent initialisation, masks and couplings (also on
images), the model builders and constructor validation.
"""

from __future__ import annotations

import math

import pytest
import torch
from layer_cases import example
from torch.autograd.functional import jacobian

import flowlib
from flowlib.actnorm import ActNorm
from flowlib.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    Scaling,
    channel_mask,
    checkerboard_mask,
    half_mask,
    soft_clamp,
)
from flowlib.elementwise import MixtureLogisticCDF, solve_monotone
from flowlib.models import nice, planar_flow, radial_flow, realnvp
from flowlib.nets import MLP, ConvNet
from flowlib.planar import Planar, Radial
from flowlib.transformers import Additive
from flowlib.transformers import Affine as AffineTransformer

FlowInputError = flowlib.FlowInputError


def _perturb(net, generator, scale=0.3):
    with torch.no_grad():
        net.last.weight.copy_(scale * torch.randn(net.last.weight.shape, generator=generator))
        net.last.bias.copy_(scale * torch.randn(net.last.bias.shape, generator=generator))
    return net


# -- planar -----------------------------------------------------------------------------
def test_planar_reparameterisation_keeps_w_dot_u_hat_above_minus_one():
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        f = Planar(4).double()
        scale = 10.0 ** (trial % 4 - 1)  # raw parameters from 0.1 to 100
        with torch.no_grad():
            f.w.copy_(scale * torch.randn(4, generator=g, dtype=torch.float64))
            f.u.copy_(scale * torch.randn(4, generator=g, dtype=torch.float64))
        c = torch.dot(f.w, f.u_hat()).item()
        assert c >= -1.0 - 1e-9
        assert f.is_invertible()


def test_planar_u_hat_equals_m_of_w_dot_u():
    f = Planar(3).double()
    wu = torch.dot(f.w, f.u)
    assert torch.dot(f.w, f.u_hat()).item() == pytest.approx(-1 + math.log1p(math.exp(wu.item())), abs=1e-12)


def _raw_planar(wu: float) -> Planar:
    f = Planar(2, enforce_invertibility=False)
    with torch.no_grad():
        f.w.copy_(torch.tensor([1.0, 0.0]))
        f.u.copy_(torch.tensor([wu, 0.5]))
        f.b.fill_(0.2)
    return f


def test_raw_planar_that_folds_is_reported_and_forward_raises():
    f = _raw_planar(-2.5)
    assert not f.is_invertible()
    report = f.invertibility_report()
    assert "NOT invertible" in report and "w.u" in report and "1.5" in report  # violated by 1.5
    with pytest.raises(FlowInputError, match=r"Planar\.forward.*w\.u >= -1"):
        f(torch.randn(4, 2))
    with pytest.warns(RuntimeWarning, match="NOT invertible"):
        f.inverse(torch.randn(4, 2))
    # A model built from it refuses to give a density rather than a wrong one.
    model = flowlib.FlowModel(flowlib.Compose(f), flowlib.StandardNormal(2))
    with pytest.raises(FlowInputError):
        model.log_prob(torch.randn(3, 2))


def test_raw_planar_that_is_invertible_round_trips():
    f = _raw_planar(-0.9).double()
    assert f.is_invertible() and "invertible" in f.invertibility_report()
    z = torch.randn(50, 2, dtype=torch.float64)
    x, ld_i = f.inverse(z)
    z_back, ld_f = f(x)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=0)
    torch.testing.assert_close(ld_f, -ld_i, atol=1e-8, rtol=0)


def test_planar_numerical_forward_near_the_boundary():
    # w.u_hat very close to -1: the projection a -> a + c tanh(a + b) is almost flat at a = -b.
    f = Planar(3).double()
    with torch.no_grad():
        f.w.copy_(torch.tensor([2.0, -1.0, 0.5], dtype=torch.float64))
        f.u.copy_(-8.0 * f.w / f.w.pow(2).sum())  # w.u = -8 -> w.u_hat = -1 + softplus(-8)
        f.b.fill_(0.3)
    assert torch.dot(f.w, f.u_hat()).item() < -0.999
    z = 3 * torch.randn(200, 3, dtype=torch.float64)
    x, _ = f.inverse(z)
    z_back, _ = f(x)
    assert (z_back - z).abs().max() < 1e-6


# -- radial -----------------------------------------------------------------------------
@pytest.mark.parametrize("beta_raw", [-6.0, 0.0, 3.0])
def test_radial_closed_form_forward(beta_raw):
    f = Radial(3).double()
    with torch.no_grad():
        f.z0.copy_(torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64))
        f.alpha_raw.fill_(0.4)
        f.beta_raw.fill_(beta_raw)  # strong contraction, mild, expansion
    z = torch.cat([f.z0.detach().unsqueeze(0), 10 ** torch.linspace(-6, 3, 40, dtype=torch.float64)
                   .unsqueeze(1) * torch.randn(40, 3, dtype=torch.float64)])
    x, ld_i = f.inverse(z)
    z_back, ld_f = f(x)
    torch.testing.assert_close(z_back, z, atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(ld_f, -ld_i, atol=1e-9, rtol=1e-9)
    assert not Radial.numerical_forward and Planar.numerical_forward
    assert f.is_invertible() and "invertible" in f.invertibility_report()


# -- mixture of logistics -----------------------------------------------------------------
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-9)])
def test_mixture_logistic_inverse_accuracy(dtype, tol):
    g = torch.Generator().manual_seed(3)
    f = MixtureLogisticCDF(3, components=5).to(dtype)
    with torch.no_grad():
        f.logits.copy_(torch.randn(3, 5, generator=g))
        f.loc.copy_(2 * torch.randn(3, 5, generator=g))
        f.log_scale.copy_(0.5 * torch.randn(3, 5, generator=g))
    x = torch.linspace(-12, 12, 301, dtype=dtype).unsqueeze(1).repeat(1, 3)
    z, ld = f(x)
    assert torch.isfinite(z).all() and torch.isfinite(ld).all()
    assert (z[1:] > z[:-1]).all()  # increasing
    x_back, ld_i = f.inverse(z)
    assert ((x_back - x).abs() / (1 + x.abs())).max() < tol
    torch.testing.assert_close(ld_i, -ld, atol=100 * tol, rtol=0)
    assert MixtureLogisticCDF.numerical_inverse


def test_mixture_logistic_tails_are_finite():
    f = MixtureLogisticCDF(1, components=3)
    x = torch.tensor([[-80.0], [-30.0], [30.0], [80.0]])
    z, ld = f(x)
    assert torch.isfinite(z).all() and torch.isfinite(ld).all()
    x_back, _ = f.inverse(z)
    torch.testing.assert_close(x_back, x, rtol=1e-5, atol=1e-4)


def test_solve_monotone_gives_implicit_gradients():
    y = torch.tensor([0.3, -2.0, 5.0], dtype=torch.float64, requires_grad=True)
    # Solve a + a^3 = y: da/dy = 1 / (1 + 3 a^2).
    a = solve_monotone(lambda a: (a + a**3 - y, 1 + 3 * a * a), y.detach() - 10, y.detach() + 10)
    torch.testing.assert_close(a + a**3, y, atol=1e-12, rtol=0)
    (grad,) = torch.autograd.grad(a.sum(), y)
    torch.testing.assert_close(grad, 1 / (1 + 3 * a.detach() ** 2))


# -- ActNorm ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(256, 3), (16, 3, 5, 4)])
def test_actnorm_init_standardises(shape):
    x = 4.0 + 2.5 * torch.randn(*shape)
    f = ActNorm(3)
    z, ld = f(x)
    dims = [0] if len(shape) == 2 else [0, 2, 3]
    torch.testing.assert_close(z.mean(dim=dims), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std(dim=dims, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    pixels = 1 if len(shape) == 2 else 5 * 4
    torch.testing.assert_close(ld, (pixels * f.log_scale.sum()).expand(shape[0]))
    assert f.is_initialized and bool(f.initialized)


def test_actnorm_image_logdet_matches_autograd():
    f = ActNorm(2).double()
    f(torch.randn(8, 2, 3, 3, dtype=torch.float64) * 3 + 1)
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64)
    jac = jacobian(lambda t: f(t)[0], x).reshape(2, 18, 2, 18)
    _, ld = f(x)
    for i in range(2):
        assert torch.linalg.slogdet(jac[i, :, i, :])[1].item() == pytest.approx(ld[i].item(), abs=1e-9)


def test_actnorm_does_not_reinitialise_after_loading():
    trained = ActNorm(3)
    trained(5 + 3 * torch.randn(64, 3))
    fresh = ActNorm(3)
    fresh.load_state_dict(trained.state_dict())
    assert fresh.is_initialized
    fresh.train()
    fresh(torch.randn(64, 3) * 0.1 - 7)  # data with other statistics: must not re-initialise
    torch.testing.assert_close(fresh.bias, trained.bias)
    torch.testing.assert_close(fresh.log_scale, trained.log_scale)
    # Loading an uninitialised state dict clears the flag again.
    fresh.load_state_dict(ActNorm(3).state_dict())
    assert not fresh.is_initialized


def test_actnorm_no_init_in_eval_or_inverse():
    f = ActNorm(3)
    f.eval()
    f(torch.randn(10, 3) + 3)
    assert not f.is_initialized and torch.all(f.bias == 0)
    f.train()
    f.inverse(torch.randn(10, 3) + 3)
    assert not f.is_initialized and torch.all(f.log_scale == 0)


def test_actnorm_checks_channels_and_rank():
    f, _ = example(ActNorm, torch.Generator().manual_seed(0))
    for bad in (torch.randn(4, 2), torch.randn(4, 3, 5), torch.randn(3), torch.randn(2, 4, 2, 2)):
        with pytest.raises(FlowInputError, match="ActNorm"):
            f(bad)
    with pytest.raises(FlowInputError, match="ActNorm"):
        ActNorm(3)(torch.randn(1, 3))  # one value per channel: no variance to initialise from


# -- masks and couplings ------------------------------------------------------------------
def test_masks():
    assert half_mask(5, 0).tolist() == [1, 1, 1, 0, 0]
    assert half_mask(5, 1).tolist() == [0, 0, 0, 1, 1]
    assert half_mask(5, 0, kind="alternate").tolist() == [1, 0, 1, 0, 1]
    cb = checkerboard_mask(2, 3, 3, 0)
    assert cb.shape == (2, 3, 3) and cb[0, 0, 0] == 1 and cb[1, 0, 1] == 0
    torch.testing.assert_close(checkerboard_mask(2, 3, 3, 1), 1 - cb)
    ch = channel_mask(4, 2, 2, 0)
    assert ch[:2].eq(1).all() and ch[2:].eq(0).all()
    torch.testing.assert_close(channel_mask(4, 2, 2, 1), 1 - ch)


def test_couplings_start_as_identity():
    x = torch.randn(7, 4)
    # Vector masks are sliced: the conditioners read the 2 kept coordinates.
    for layer in (AdditiveCoupling(half_mask(4, 0), MLP(2, 2)), AffineCoupling(half_mask(4, 1), MLP(2, 4))):
        z, ld = layer(x)
        torch.testing.assert_close(z, x)
        assert torch.all(ld == 0)


@pytest.mark.parametrize("mask_fn,channels", [(checkerboard_mask, 1), (channel_mask, 2)])
@pytest.mark.parametrize("kind", ["additive", "affine"])
def test_couplings_on_images(mask_fn, channels, kind):
    g = torch.Generator().manual_seed(1)
    mask = mask_fn(channels, 4, 4, 1)
    if kind == "additive":
        sizes = Coupling.conditioner_sizes(mask, Additive)
        layer = AdditiveCoupling(mask, _perturb(ConvNet(*sizes, hidden=8), g))
    else:
        sizes = Coupling.conditioner_sizes(mask, AffineTransformer)
        layer = AffineCoupling(mask, _perturb(ConvNet(*sizes, hidden=8), g))
    assert layer.sliced == (mask_fn is channel_mask)
    layer = layer.double()
    x = torch.randn(2, channels, 4, 4, generator=g, dtype=torch.float64)
    z, ld = layer(x)
    assert not torch.allclose(z, x)
    # The kept half is untouched.
    torch.testing.assert_close(z * mask.double(), x * mask.double())
    x_back, ld_i = layer.inverse(z)
    torch.testing.assert_close(x_back, x)
    torch.testing.assert_close(ld_i, -ld)
    d = channels * 16
    jac = jacobian(lambda t: layer(t)[0], x).reshape(2, d, 2, d)
    for i in range(2):
        assert torch.linalg.slogdet(jac[i, :, i, :])[1].item() == pytest.approx(ld[i].item(), abs=1e-8)


def test_soft_clamp_bounds():
    s = torch.linspace(-1e4, 1e4, 1001)
    out = soft_clamp(s, 2.0)
    assert out.abs().max() < 2.0 and (out[1:] >= out[:-1]).all()
    assert soft_clamp(torch.tensor(1e-3), 2.0).item() == pytest.approx(2 / math.pi * 1e-3, rel=1e-4)
    assert soft_clamp(s, None) is s


def test_affine_coupling_scale_is_bounded_by_clamp():
    g = torch.Generator().manual_seed(0)
    layer = AffineCoupling(half_mask(2, 0), _perturb(MLP(1, 2, hidden=8), g, scale=50.0), clamp=1.5)
    _, ld = layer(100 * torch.randn(64, 2, generator=g))
    assert ld.abs().max() < 1.5


def test_conditioner_with_wrong_output_shape_is_reported():
    with pytest.raises(FlowInputError, match="AffineCoupling"):
        AffineCoupling(half_mask(4, 0), MLP(2, 2))(torch.randn(3, 4))  # needs 2 x 2 outputs
    with pytest.raises(FlowInputError, match="AdditiveCoupling"):
        AdditiveCoupling(half_mask(4, 0), MLP(2, 4))(torch.randn(3, 4))  # needs 2


# -- builders ------------------------------------------------------------------------------
def _n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_nice_builder():
    model = nice(2, couplings=4, hidden=32, layers=2)
    # 4 MLPs 1 -> 32 -> 32 -> 1 (the kept coordinate in, the shift of the other out) and a
    # 2-vector of scales.
    assert _n_params(model) == 4 * ((1 * 32 + 32) + (32 * 32 + 32) + (32 * 1 + 1)) + 2
    # coupling="mask" chose the masked form (2 -> 32 -> 32 -> 2) before the layer chose by
    # itself: now it warns and is ignored.
    with pytest.warns(DeprecationWarning, match="coupling= is deprecated and ignored"):
        old = nice(2, couplings=4, hidden=32, layers=2, coupling="mask")
    assert _n_params(old) == _n_params(model)
    x = torch.randn(9, 2)
    assert model.log_prob(x).shape == (9,)
    assert model.sample(5).shape == (5, 2)


def test_realnvp_builder_defaults_are_small_and_work():
    model = realnvp(2)
    n = _n_params(model)
    assert 20_000 < n <= 150_000
    assert model.log_prob(torch.randn(33, 2)).shape == (33,)
    assert model.sample(4).shape == (4, 2)
    assert sum(isinstance(f, ActNorm) for f in model.flow) >= 2


def test_realnvp_builder_in_higher_dimension_round_trips():
    model = realnvp(5, couplings=4, hidden=16)
    x = torch.randn(64, 5)
    model.log_prob(x)  # initialises ActNorm
    model.eval()
    with torch.no_grad():
        z = model.encode(x)
        torch.testing.assert_close(model.decode(z), x, atol=1e-5, rtol=1e-5)
    # counted: 5 ActNorms (2 * 5 each); the couplings alternate between keeping the 3 even
    # coordinates (MLP 3 -> 16 -> 16 -> 2 * 2) and the 2 odd ones (MLP 2 -> 16 -> 16 -> 2 * 3).
    even = (3 * 16 + 16) + (16 * 16 + 16) + (16 * 4 + 4)
    odd = (2 * 16 + 16) + (16 * 16 + 16) + (16 * 6 + 6)
    assert _n_params(model) == 5 * 10 + 2 * even + 2 * odd
    with pytest.warns(DeprecationWarning, match="coupling="):  # once the masked form, now ignored
        old = realnvp(5, couplings=4, hidden=16, coupling="mask")
    assert _n_params(old) == _n_params(model)


@pytest.mark.parametrize("mixing", ["none", "permutation", "linear"])
def test_realnvp_mixing_options(mixing):
    model = realnvp(3, couplings=3, hidden=8, mixing=mixing, seed=1)
    x = torch.randn(16, 3)
    assert model.log_prob(x).shape == (16,)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model.decode(model.encode(x)), x, atol=1e-5, rtol=1e-5)
    with pytest.raises(FlowInputError, match="realnvp"):
        realnvp(3, mixing="shuffle")


@pytest.mark.parametrize("builder", [planar_flow, radial_flow])
def test_generative_builders_score_their_own_samples(builder):
    torch.manual_seed(0)
    model = builder(2, layers=4).double()
    x, log_p = model.sample_and_log_prob(64)
    assert x.shape == (64, 2) and log_p.shape == (64,)
    assert x.requires_grad  # trainable by reverse KL
    # The density direction (numerical for planar) gives the same log-density.
    torch.testing.assert_close(model.log_prob(x.detach()), log_p.detach(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("builder", [nice, realnvp, planar_flow, radial_flow])
def test_builders_check_dims(builder):
    with pytest.raises(FlowInputError, match=builder.__name__):
        builder(0)
    assert builder((3,)).event_shape == (3,)


@pytest.mark.parametrize("builder", [planar_flow, radial_flow])
def test_planar_radial_builders_refuse_image_shapes(builder):
    with pytest.raises(FlowInputError, match="expected a dimension d"):
        builder((1, 8, 8))


@pytest.mark.parametrize("name", ["nice", "realnvp", "glow"])
def test_one_builder_name_for_vectors_and_images(name):
    from flowlib import image_models, models

    image = getattr(models, name)((1, 8, 8), scales=1, depth=2, hidden=8) if name != "nice" else \
        models.nice((1, 8, 8), couplings=2, hidden=8)
    assert isinstance(image, image_models.ImageFlowModel) and tuple(image.event_shape) == (1, 8, 8)
    vector = getattr(models, name)(4)
    assert tuple(vector.event_shape) == (4,)
    x = torch.randn(5, 4)
    assert vector.log_prob(x).shape == (5,)


# -- constructor validation ------------------------------------------------------------------
@pytest.mark.parametrize(
    "make,name",
    [
        (lambda: Planar(0), "Planar"),
        (lambda: Radial(0), "Radial"),
        (lambda: MixtureLogisticCDF(0), "MixtureLogisticCDF"),
        (lambda: MixtureLogisticCDF(2, components=0), "MixtureLogisticCDF"),
        (lambda: ActNorm(0), "ActNorm"),
        (lambda: Scaling(0), "Scaling"),
        (lambda: Scaling((1, 0, 3)), "Scaling"),
        (lambda: AffineCoupling(half_mask(2, 0), MLP(2, 4), clamp=0.0), "AffineCoupling"),
        (lambda: AffineCoupling(half_mask(2, 0), MLP(2, 4), clamp=-1.0), "AffineCoupling"),
        (lambda: AffineCoupling(torch.tensor(1.0), MLP(2, 4)), "AffineCoupling"),
        (lambda: AffineCoupling(torch.tensor([0.0, 0.5]), MLP(2, 4)), "AffineCoupling"),
        (lambda: AdditiveCoupling(torch.zeros(0), MLP(2, 2)), "AdditiveCoupling"),
        (lambda: AdditiveCoupling(torch.tensor([0.0, 2.0]), MLP(2, 2)), "AdditiveCoupling"),
        (lambda: AdditiveCoupling(half_mask(2, 0), "not a net"), "AdditiveCoupling"),
        (lambda: half_mask(0, 0), "half_mask"),
        (lambda: half_mask(4, 2), "half_mask"),
        (lambda: checkerboard_mask(1, 0, 4, 0), "checkerboard_mask"),
        (lambda: channel_mask(1, 4, 4, 0), "channel_mask"),
        (lambda: MLP(0, 2), "MLP"),
        (lambda: ConvNet(1, 2, hidden=0), "ConvNet"),
    ],
)
def test_invalid_constructor_arguments(make, name):
    with pytest.raises(FlowInputError, match=name):
        make()
