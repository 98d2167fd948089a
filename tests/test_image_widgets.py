"""The image widgets of lecture 5, driven without a browser on a small Glow for 1x8x8 images.

The model is untrained but not trivial: ActNorm is initialised on digits and every
zero-initialised convolution (the couplings' last layers, the split priors) is perturbed, so
the decoded images depend on the latent in a non-trivial way.
"""

from __future__ import annotations

import copy
import importlib
import sys

import ipywidgets as W
import numpy as np
import pytest
import torch

from flowlib._modules import evaluating
from flowlib.core import FlowInputError
from flowlib.data import load_digits
from flowlib.image_models import glow_image
from flowlib.viz import tile_images
from flowlib.widgets import PAPER_TEMPERATURES, LatentInterpolation, TemperatureGrid


def _glow(scales: int, depth: int, hidden: int, grey_levels: int):
    """A small Glow for 1x8x8 digits."""
    return glow_image((1, 8, 8), scales=scales, depth=depth, hidden=hidden, blocks=1, grey_levels=grey_levels)


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    return load_digits("train")[0][:64]


@pytest.fixture(scope="module")
def glow(digits: torch.Tensor):
    torch.manual_seed(0)
    model = _glow(scales=2, depth=2, hidden=16, grey_levels=17)
    model.initialize(digits.float())
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "conditioner" in name or "priors" in name:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    model.train()  # left in training mode on purpose: the widgets must not change that
    return model


@pytest.fixture()
def grid(glow) -> TemperatureGrid:
    return TemperatureGrid(glow, n=100, temperature=0.7)


# -- temperature ---------------------------------------------------------------------------------
def test_grid_builds_a_10x10_grid(grid: TemperatureGrid) -> None:
    assert grid.images.shape == (100, 1, 8, 8)
    assert grid.grid.shape == (10 * 9 + 1, 10 * 9 + 1)  # 8x8 tiles, 1 pixel of padding
    assert grid.png().startswith(b"\x89PNG")
    assert isinstance(grid.widget, W.Widget)
    assert set(grid.controls) == {"temperature"}
    assert grid.temperatures == PAPER_TEMPERATURES
    assert [b.description for b in grid.buttons] == [f"T = {t:g}" for t in PAPER_TEMPERATURES]


def test_moving_the_slider_changes_the_image(grid: TemperatureGrid) -> None:
    before, png = grid.grid.copy(), grid.png()
    grid.controls["temperature"].value = 1.0
    assert not np.array_equal(before, grid.grid)
    assert grid.png() != png
    assert np.array_equal(grid._artist.get_array(), grid.grid)  # the artist shows the data


def test_fixed_noise_same_temperature_same_image(grid: TemperatureGrid) -> None:
    grid.controls["temperature"].value = 0.6
    first = grid.images.clone()
    grid.controls["temperature"].value = 0.9
    grid.controls["temperature"].value = 0.6
    assert torch.equal(first, grid.images)
    # Not just the cache: recomputing from the stored noise gives the same images.
    assert torch.allclose(grid.samples(0.6), first, atol=1e-6)
    # And a second widget with the same seed draws the same noise.
    assert torch.equal(TemperatureGrid(grid.model, n=100, temperature=0.6).images, first)


def test_temperature_only_scales_the_noise(grid: TemperatureGrid) -> None:
    assert torch.equal(grid.latent(0.5), 0.5 * grid.eps)
    assert torch.equal(grid.latent(0.5), grid.model.base.latent(grid.eps, 0.5))  # the base's own rule
    with torch.no_grad():
        expected = grid.model.decode(0.8 * grid.eps).clamp(0, 1)
    assert torch.allclose(grid.samples(0.8), expected, atol=1e-5)


def test_zero_temperature_gives_the_mode_everywhere(grid: TemperatureGrid) -> None:
    grid.controls["temperature"].value = 0.0
    images = grid.images
    assert torch.allclose(images, images[:1].expand_as(images), atol=1e-6)
    grid.controls["temperature"].value = 0.25
    assert not torch.allclose(grid.images, grid.images[:1].expand_as(grid.images), atol=1e-3)


def test_slider_ends_and_paper_buttons_do_not_raise(grid: TemperatureGrid) -> None:
    slider = grid.controls["temperature"]
    for value in (slider.min, slider.max, slider.min):
        slider.value = value
        assert torch.isfinite(grid.images).all()
        assert 0 <= float(grid.images.min()) and float(grid.images.max()) <= 1
    for button, t in zip(grid.buttons, PAPER_TEMPERATURES, strict=True):
        button.click()
        assert grid.temperature == pytest.approx(t)


def test_new_noise_changes_the_samples_and_empties_the_cache(grid: TemperatureGrid) -> None:
    grid.controls["temperature"].value = 1.0
    before = grid.images.clone()
    grid.new_noise.click()
    assert grid.seed == 1
    assert not torch.allclose(before, grid.images)


def test_cache_is_bounded(glow) -> None:
    widget = TemperatureGrid(glow, n=4, cache_size=3)
    for t in (0.1, 0.2, 0.3, 0.4, 0.5):
        widget.set_temperature(t)
    assert len(widget._cache) == 3


def test_precompute_fills_the_cache_with_the_paper_temperatures(glow) -> None:
    widget = TemperatureGrid(glow, n=4, precompute=True)
    assert set(PAPER_TEMPERATURES) <= set(widget._cache)
    widget.set_temperature(0.25)
    assert torch.allclose(widget.images, widget.samples(0.25), atol=1e-6)


def test_slider_updates_on_release_for_slow_models(glow, monkeypatch) -> None:
    assert TemperatureGrid(glow, n=4).controls["temperature"].continuous_update
    monkeypatch.setattr(TemperatureGrid, "SLOW_DECODE_MS", -1.0)
    widget = TemperatureGrid(glow, n=4)
    assert not widget.controls["temperature"].continuous_update
    assert widget.last_decode_ms > 0
    assert not TemperatureGrid(glow, n=4, precompute=True).controls["temperature"].continuous_update


def _snapshot(model: torch.nn.Module) -> tuple[dict, list, object, list]:
    """Everything a widget could change in a model: weights and buffers (values and memory
    layout), every module's training flag, the validate flag."""
    state = {k: v.clone() for k, v in model.state_dict().items()}
    layouts = [p.stride() for p in model.parameters()]
    return state, [m.training for m in model.modules()], getattr(model, "validate", None), layouts


def _assert_unchanged(model: torch.nn.Module, before: tuple[dict, list, object, list]) -> None:
    state, flags, validate, layouts = before
    after = model.state_dict()
    assert after.keys() == state.keys()
    for k, v in after.items():
        assert torch.equal(v, state[k]), k
    assert [m.training for m in model.modules()] == flags
    assert getattr(model, "validate", None) == validate
    assert [p.stride() for p in model.parameters()] == layouts


@pytest.mark.parametrize("validate", [True, False])
def test_widgets_leave_the_model_as_they_found_it(glow, digits, validate: bool) -> None:
    """Drive every control of both image widgets: the model's weights, buffers, memory layout,
    training flags and validate flag are exactly as before."""
    glow.validate = validate
    try:
        before = _snapshot(glow)
        widget = TemperatureGrid(glow, n=9, precompute=True)
        for t in (0.0, 0.33, 1.0):
            widget.set_temperature(t)
        for button in widget.buttons:
            button.click()
        widget.new_noise.click()
        walk = LatentInterpolation(glow, digits[0], digits[1], frames=3)
        for path in LatentInterpolation.PATHS:
            walk.controls["path"].value = path
            for alpha in (0.0, 0.3, 1.0):
                walk.controls["alpha"].value = alpha
        walk.decode([0.5], "spherical")
        _assert_unchanged(glow, before)
    finally:
        glow.validate = True


def test_evaluating_leaves_actnorm_uninitialised() -> None:
    model = _glow(scales=1, depth=1, hidden=8, grey_levels=17)
    with evaluating(model):
        model.encode(torch.rand(4, 1, 8, 8))
    assert model.training
    assert not any(getattr(m, "is_initialized", False) for m in model.modules())


def test_old_module_path_still_works_with_a_warning(glow) -> None:
    sys.modules.pop("flowlib.image_widgets", None)
    with pytest.warns(DeprecationWarning, match="flowlib.widgets"):
        old = importlib.import_module("flowlib.image_widgets")
    assert old.TemperatureGrid is TemperatureGrid and old.tile_images is tile_images
    with pytest.warns(DeprecationWarning, match="evaluating"), old.read_only(glow):
        assert not glow.training and not torch.is_grad_enabled()
    assert glow.training


def test_grid_rejects_bad_arguments(glow) -> None:
    with pytest.raises(FlowInputError, match="TemperatureGrid.*n"):
        TemperatureGrid(glow, n=0)
    with pytest.raises(FlowInputError, match="temperature"):
        TemperatureGrid(glow, temperature=1.5)
    with pytest.raises(FlowInputError, match="temperatures"):
        TemperatureGrid(glow, temperatures=())
    with pytest.raises(FlowInputError, match="flow model"):
        TemperatureGrid(torch.nn.Linear(2, 2))


# -- interpolation -----------------------------------------------------------------------------
@pytest.fixture()
def interp(glow, digits) -> LatentInterpolation:
    return LatentInterpolation(glow, digits[0], digits[7], frames=7)


def test_interpolation_builds(interp: LatentInterpolation) -> None:
    assert interp.image.shape == (1, 8, 8)
    assert interp.strip.shape == (7, 1, 8, 8)
    assert set(interp.controls) == {"alpha", "path"}
    assert interp.png().startswith(b"\x89PNG")
    assert isinstance(interp.widget, W.Widget)


def test_interpolation_ends_are_the_real_images(interp: LatentInterpolation, digits) -> None:
    unit = (digits[[0, 7]].float() + 0.5) / 17
    for path in LatentInterpolation.PATHS:
        interp.controls["path"].value = path
        for alpha, k in ((0.0, 0), (1.0, 1)):
            interp.controls["alpha"].value = alpha
            assert torch.allclose(interp.image, unit[k], atol=1e-4), (path, alpha)
        assert torch.allclose(interp.strip[0], unit[0], atol=1e-4)
        assert torch.allclose(interp.strip[-1], unit[1], atol=1e-4)


def test_alpha_and_path_change_the_image(interp: LatentInterpolation) -> None:
    interp.controls["alpha"].value = 0.2
    first, png = interp.image.clone(), interp.png()
    interp.controls["alpha"].value = 0.6
    assert not torch.allclose(first, interp.image)
    assert interp.png() != png
    linear = interp.image.clone()
    interp.controls["path"].value = "spherical"
    assert not torch.allclose(linear, interp.image)


def test_linear_path_is_the_formula(interp: LatentInterpolation, glow) -> None:
    interp.controls["path"].value = "linear"
    interp.controls["alpha"].value = 0.35
    with torch.no_grad():
        expected = glow.decode(0.65 * interp.z_a + 0.35 * interp.z_b).clamp(0, 1)[0]
    assert torch.allclose(interp.image, expected, atol=1e-5)


def test_spherical_path_keeps_the_norm_better(interp: LatentInterpolation) -> None:
    mid_lin = interp.latents([0.5], "linear").norm()
    mid_sph = interp.latents([0.5], "spherical").norm()
    assert mid_sph > mid_lin


def test_interpolation_accepts_levels_and_unit_floats(glow, digits) -> None:
    unit_a = (digits[0].float() + 0.5) / 17
    a = LatentInterpolation(glow, digits[0], digits[1], frames=3)
    b = LatentInterpolation(glow, unit_a.unsqueeze(0), digits[1].float(), frames=3)
    assert torch.allclose(a.z_a, b.z_a, atol=1e-5)
    with pytest.raises(FlowInputError, match="shape"):
        LatentInterpolation(glow, digits[:2], digits[1])
    with pytest.raises(FlowInputError, match="frames"):
        LatentInterpolation(glow, digits[0], digits[1], frames=1)
    with pytest.raises(FlowInputError, match="grey levels|floats"):
        LatentInterpolation(glow, -unit_a, digits[1])


def test_tile_images_layout() -> None:
    images = torch.arange(6.0).reshape(6, 1, 1, 1) / 5
    grid = tile_images(images, nrow=3, padding=1)
    assert grid.shape == (5, 7)
    assert grid[1, 1] == 0 and grid[3, 5] == 1
    with pytest.raises(FlowInputError):
        tile_images(torch.zeros(2, 2, 3, 3), nrow=2)


def test_interpolation_old_steps_keyword_warns_and_works(glow, digits) -> None:
    with pytest.warns(DeprecationWarning, match="frames="):
        walk = LatentInterpolation(glow, digits[0], digits[1], steps=5)
    assert walk.frames == 5 and walk.strip.shape == (5, 1, 8, 8)


def test_noise_follows_a_channels_last_model_and_changes_no_image(glow) -> None:
    """A model the user converted to channels_last gets channels_last noise; the widget itself
    never converts the model (the old channels_last=True did, in place: now deprecated)."""
    model = copy.deepcopy(glow).to(memory_format=torch.channels_last)
    plain = TemperatureGrid(glow, n=16, temperature=0.8)
    fast = TemperatureGrid(model, n=16, temperature=0.8)
    assert fast.eps.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(fast.images, plain.images, atol=1e-4)
    before = _snapshot(glow)
    with pytest.warns(DeprecationWarning, match="never changes the model"):
        old = TemperatureGrid(glow, n=16, temperature=0.8, channels_last=True)
    _assert_unchanged(glow, before)  # the model's convolutions stay as they were
    assert old.eps.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(old.images, plain.images, atol=1e-4)
    with pytest.raises(FlowInputError, match="channels_last must be True or False"):
        TemperatureGrid(glow, n=4, channels_last="yes")


def test_bfloat16_decoding_is_close_to_float32_or_refused_where_the_cpu_has_no_bf16(glow) -> None:
    """On a CPU with bfloat16 units the bfloat16 grid is the float32 one within a few grey levels;
    on one without, asking for it is refused (it would be slower, not faster)."""
    if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        with pytest.raises(FlowInputError, match="bfloat16=True needs a CPU with bfloat16 units"):
            TemperatureGrid(glow, n=16, bfloat16=True)
        return
    exact = TemperatureGrid(glow, n=16, temperature=0.7)
    fast = TemperatureGrid(glow, n=16, temperature=0.7, bfloat16=True)
    assert torch.equal(fast.eps, exact.eps) and fast.images.dtype == torch.float32
    diff = (fast.images - exact.images).abs()
    worst, mean = float(diff.max()), float(diff.mean())
    assert worst < 8 / 255 and mean < 1 / 255, (worst, mean)
    assert not torch.equal(fast.images, exact.images)  # it did decode in bfloat16
