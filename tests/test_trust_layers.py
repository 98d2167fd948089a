"""Issue 12 at the layers' and models' doors: no silent wrong answer, no NaN without a message.

Each test is a regression test for one case of the issue (its item number in the name's
comment): it failed on the code before the fix and passes after.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from layer_cases import CASES, LayerCase

from flowlib.actnorm import ActNorm
from flowlib.core import FlowInputError
from flowlib.data.toys import TOYS, get_toy
from flowlib.dequantize import LogitPreprocess, UniformDequantization, VariationalDequantization
from flowlib.distributions import DiagonalGaussian, StandardNormal
from flowlib.image_models import glow_image, mean_bits_per_dim, nice_image, realnvp_image
from flowlib.metrics import integrate_density_2d
from flowlib.models import planar_flow, realnvp_vector
from flowlib.planar import Planar

SHAPE = (1, 8, 8)


def _glow(**kw):
    return glow_image(SHAPE, scales=2, depth=2, hidden=8, blocks=1, grey_levels=17, **kw)


def _digits(n: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 17, (n, *SHAPE), generator=torch.Generator().manual_seed(seed)).float()


# -- item 1: the planar log-determinant near w = 0 -------------------------------------------------
@pytest.mark.parametrize("norm", [0.0, 1e-9, 1e-6, 1e-3, 1.0])
def test_planar_logdet_matches_autograd_near_w_zero(norm: float) -> None:
    g = torch.Generator().manual_seed(3)
    f = Planar(3).double()
    with torch.no_grad():
        direction = torch.randn(3, generator=g, dtype=torch.float64)
        f.w.copy_(norm * direction / direction.norm())
        f.u.copy_(torch.randn(3, generator=g, dtype=torch.float64))
        f.b.fill_(0.3)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64)
    x, logdet = f.inverse(z)
    want = torch.stack([torch.linalg.slogdet(torch.autograd.functional.jacobian(
        lambda v: f.inverse(v.unsqueeze(0))[0][0], zi))[1] for zi in z])
    torch.testing.assert_close(logdet, want, atol=1e-9, rtol=1e-9)
    if norm == 0.0:  # the identity up to a translation: logdet exactly 0
        assert torch.equal(logdet, torch.zeros(6, dtype=torch.float64))
    z_back, logdet_fwd = f.forward(x)
    torch.testing.assert_close(logdet_fwd, -want, atol=1e-7, rtol=1e-7)
    torch.testing.assert_close(z_back, z, atol=1e-6 * (1 + float(x.detach().abs().max())), rtol=0)


def test_planar_w_zero_has_finite_gradients() -> None:
    f = Planar(2)
    with torch.no_grad():
        f.w.zero_()
    x, logdet = f.inverse(torch.randn(4, 2))
    (x.sum() + logdet.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in f.parameters())
    assert f.is_invertible() and f.w_dot_u_hat() == 0.0


def test_planar_flow_with_w_zero_integrates_to_one() -> None:
    torch.manual_seed(0)
    model = planar_flow(2, layers=1)
    with torch.no_grad():
        model.flow[0].w.zero_()
    assert integrate_density_2d(model, bounds=6.0, resolution=200) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("layers", [1, 6])
def test_planar_widget_at_w1_zero_integrates_to_one(layers: int) -> None:
    from flowlib.widgets import PlanarFlow2D

    widget = PlanarFlow2D(resolution=120, n_samples=100, max_layers=6)
    with widget.hold_updates():  # from the defaults (w = (2, 0)), move w_1 to 0
        widget.controls["layers"].value = layers
        widget.controls["w1"].value = 0.0
    assert widget.invertible
    assert widget.integral == pytest.approx(1.0, abs=1e-2)
    assert "= 1.00" in widget.status


# -- item 6: domains at the door ------------------------------------------------------------------
def test_logit_preprocess_rejects_values_outside_its_domain() -> None:
    with pytest.raises(FlowInputError, match=r"LogitPreprocess.forward.*domain.*\[-0.2, 1.5\]"):
        LogitPreprocess(0.05)(torch.tensor([[1.5, -0.2]]))
    with pytest.raises(FlowInputError, match=r"LogitPreprocess.forward.*1 NaN"):
        LogitPreprocess(0.05)(torch.tensor([[0.5, math.nan]]))


def test_logit_preprocess_is_finite_at_the_ends_its_inverse_reaches() -> None:
    f = LogitPreprocess(0.05)
    z = torch.tensor([[-200.0, -30.0, 30.0, 200.0]])  # sigmoid rounds to 0 or 1 in float32
    x, _ = f.inverse(z)
    y, logdet = f(x)
    assert torch.isfinite(y).all() and torch.isfinite(logdet).all()
    # Inside [0, 1] nothing changed: the logit of 0.5 is 0.
    assert float(f(torch.full((1, 1), 0.5))[0]) == 0.0


def test_image_model_own_samples_at_high_temperature_have_finite_log_densities() -> None:
    torch.manual_seed(0)
    model = _glow()
    model.initialize(_digits())
    model.eval()
    with torch.no_grad():
        for temperature in (2.0, 5.0):
            y = model.sample(32, temperature=temperature)
            lp = model.log_prob_continuous(y)
            assert torch.isfinite(lp).all(), (temperature, int(lp.isnan().sum()))
    with pytest.raises(FlowInputError, match=r"ImageFlowModel.log_prob_continuous.*domain"):
        model.log_prob_continuous(torch.full((2, *SHAPE), 1.5))


# -- item 7: ActNorm on a degenerate first batch --------------------------------------------------
def test_actnorm_constant_channel_falls_back_to_unit_scale_with_a_warning() -> None:
    f = ActNorm(3).train()
    x = torch.randn(16, 3)
    x[:, 1] = 4.0
    with pytest.warns(RuntimeWarning, match=r"ActNorm.initialize: channel 1 .*constant"):
        f(x)
    log_scale, bias = f.log_scale.detach(), f.bias.detach()
    assert float(log_scale[1]) == 0.0 and float(bias[1]) == -4.0
    assert float(log_scale[0]) != 0.0  # the other channels are standardised as before


def test_vector_model_first_trained_on_a_constant_batch_is_not_absurd() -> None:
    torch.manual_seed(0)
    model = realnvp_vector(2, couplings=2, hidden=8)
    with pytest.warns(RuntimeWarning, match="constant"):
        model.log_prob(torch.ones(8, 2))  # training mode: initialises every ActNorm
    model.eval()
    with torch.no_grad():
        lp = model.log_prob(torch.randn(64, 2))
    assert torch.isfinite(lp).all() and float(lp.min()) > -100, float(lp.min())


def test_glow_first_initialised_on_blank_images_raises_naming_the_channel() -> None:
    model = _glow()
    with pytest.raises(FlowInputError, match=r"ImageFlowModel.initialize.*channel 0.*grey level 0"):
        model.initialize(torch.zeros(16, *SHAPE))
    with pytest.raises(FlowInputError, match=r"ImageFlowModel.log_prob.*channel 0"):
        model.log_prob(torch.zeros(16, *SHAPE))  # a first training batch of blank images
    model.initialize(_digits())  # a representative batch still works, and later blank ones too
    model.log_prob(torch.zeros(4, *SHAPE))


# -- item 10: empty batches -----------------------------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_every_layer_maps_an_empty_batch_to_an_empty_result(case: LayerCase) -> None:
    f, x = case.make(torch.Generator().manual_seed(0))
    empty = x[:0]
    z, logdet = f(empty)
    assert z.shape[0] == 0 and logdet.shape == (0,)
    x_back, logdet_inv = f.inverse(z)
    assert x_back.shape == empty.shape and logdet_inv.shape == (0,)


@pytest.mark.parametrize("make", [lambda: realnvp_vector(3, couplings=2, hidden=8),
                                  lambda: planar_flow(3, layers=2)], ids=["realnvp_vector", "planar"])
def test_vector_models_handle_empty_batches(make) -> None:
    model = make()  # fresh, in training mode: ActNorm must not try to initialise on nothing
    assert model.sample(0).shape == (0, 3)
    assert model.log_prob(torch.zeros(0, 3)).shape == (0,)
    x, lp = model.sample_and_log_prob(0)
    assert x.shape == (0, 3) and lp.shape == (0,)


@pytest.mark.parametrize("build", [nice_image, realnvp_image, glow_image])
@pytest.mark.parametrize("dequantization", ["uniform", "variational"])
def test_image_models_handle_empty_batches(build, dequantization: str) -> None:
    kw = {} if build is nice_image else {"scales": 2, "depth": 2}
    model = build(SHAPE, hidden=8, blocks=1, grey_levels=17, dequantization=dequantization, **kw)
    model.initialize(_digits())
    assert model.sample(0).shape == (0, *SHAPE)
    assert model.sample_levels(0).shape == (0, *SHAPE)
    assert model.log_prob(torch.zeros(0, *SHAPE)).shape == (0,)
    assert model.bits_per_dim(torch.zeros(0, *SHAPE, dtype=torch.uint8), samples=2).shape == (0,)
    assert model.log_prob_continuous(torch.zeros(0, *SHAPE)).shape == (0,)
    with pytest.raises(FlowInputError, match="mean_bits_per_dim.*no images"):
        mean_bits_per_dim(model, torch.zeros(0, *SHAPE))


def test_dequantizers_handle_empty_batches() -> None:
    y, corr = UniformDequantization(17)(torch.zeros(0, *SHAPE))
    assert y.shape == (0, *SHAPE) and corr.shape == (0,)
    y, corr = VariationalDequantization(17, SHAPE, couplings=2, hidden=4)(torch.zeros(0, *SHAPE))
    assert y.shape == (0, *SHAPE) and corr.shape == (0,)


# -- item 10: dtypes, temperatures, NumPy integers ------------------------------------------------
def test_float64_data_into_a_float32_model_names_both_dtypes() -> None:
    model = realnvp_vector(2, couplings=2, hidden=8)
    with pytest.raises(FlowInputError, match=r"FlowModel.log_prob.*torch.float64.*torch.float32"):
        model.log_prob(torch.zeros(3, 2, dtype=torch.float64))
    image = _glow()
    with pytest.raises(FlowInputError, match=r"ImageFlowModel.log_prob_continuous.*float64.*float32"):
        image.log_prob_continuous(torch.full((2, *SHAPE), 0.5, dtype=torch.float64))
    # The discrete door takes levels in any dtype (documented), float64 included.
    image.initialize(_digits())
    assert image.log_prob(_digits(2).double()).dtype == torch.float32
    # A float64 model takes float64 data as before.
    assert model.double().log_prob(torch.randn(3, 2, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize("temperature", [3.5e38, 1e39, 1e38])
def test_temperature_that_overflows_the_models_dtype_is_refused(temperature: float) -> None:
    model = realnvp_vector(2, couplings=2, hidden=8).eval()
    with pytest.raises(FlowInputError, match=r"sample.*temperature.*float32"):
        model.sample(3, temperature=temperature)
    for base in (StandardNormal(2), DiagonalGaussian(2)):
        with pytest.raises(FlowInputError, match=r"sample.*temperature.*float32"):
            base.sample(3, temperature=temperature)
    image = _glow().eval()
    with pytest.raises(FlowInputError, match=r"sample_levels.*temperature.*float32"):
        image.sample_levels(2, temperature=temperature)
    # float64 holds such temperatures: the samples are finite.
    assert torch.isfinite(model.double().base.sample(3, temperature=temperature)).all()


def test_sample_levels_keeps_its_documented_clamp_or_says_why() -> None:
    image = _glow().eval()
    with torch.no_grad():
        image.flow.flows[1].flows[0].flows[0].log_scale.fill_(math.nan)  # a broken model
    with pytest.raises(FlowInputError, match=r"sample_levels.*NaN"):
        image.sample_levels(2)


def test_sample_accepts_numpy_integers() -> None:
    model = realnvp_vector(2, couplings=2, hidden=8)
    assert model.sample(np.int64(3)).shape == (3, 2)
    assert model.sample((np.int64(2), 2)).shape == (2, 2, 2)
    x, lp = model.sample_and_log_prob(np.int32(4))
    assert x.shape == (4, 2) and lp.shape == (4,)
    assert _glow().sample_levels(np.int64(2)).shape == (2, *SHAPE)
    for bad in (-1, 2.5, True, "3"):
        with pytest.raises(FlowInputError, match="sample"):
            model.sample(bad)


# -- item 10: the interpolation widget and the toys -----------------------------------------------
def test_latent_interpolation_rejects_an_image_with_a_nan_pixel() -> None:
    from flowlib.widgets import LatentInterpolation

    model = _glow()
    model.initialize(_digits())
    good = torch.full(SHAPE, 0.5)
    bad = good.clone()
    bad[0, 3, 4] = math.nan
    with pytest.raises(FlowInputError, match=r"LatentInterpolation: x_b.*1 NaN"):
        LatentInterpolation(model, good, bad, frames=3)


@pytest.mark.parametrize("name", TOYS)
def test_toys_reject_nan_points(name: str) -> None:
    toy = get_toy(name)
    with pytest.raises(FlowInputError, match=rf"{type(toy).__name__}.log_prob.*NaN"):
        toy.log_prob(torch.tensor([[math.nan, 0.0], [0.0, 0.0]]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isfinite(toy.log_prob(torch.tensor([[0.5, 0.5]]))).all() or name == "checkerboard"
