"""The lecture widgets, driven without a browser: set controls, read what the figure shows.

A widget must update its data when a control moves, keep its density normalised (the integral
it displays reads 1), survive the extreme end of every slider, and say so, never crash, when a
planar layer is not invertible.
"""

from __future__ import annotations

import itertools

import ipywidgets as W
import numpy as np
import pytest

from flowlib.widgets import (
    BASES_1D,
    MAPS_1D,
    AttributeSlider,
    ChangeOfVariables1D,
    ConvergenceMap,
    DequantizationBound,
    MasksAndSqueeze,
    PlanarFlow2D,
    ShearAndScale2D,
    SplineKnots,
)


def _sliders(widget) -> dict[str, W.ValueWidget]:
    return {k: c for k, c in widget.controls.items() if isinstance(c, (W.FloatSlider, W.IntSlider))}


def _ends(control: W.ValueWidget) -> list[float]:
    return [control.min, control.max]


# -- 1D ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cov() -> ChangeOfVariables1D:
    # Fewer integration points than the default keep the module quick; 1e-3 still holds.
    return ChangeOfVariables1D(grid_points=8001, n_samples=500)


def test_1d_builds_and_integrates_to_one(cov: ChangeOfVariables1D) -> None:
    assert abs(cov.integral - 1.0) < 1e-3
    assert "∫ p_X(x) dx = 1.000" in cov.status
    assert cov.image_bytes().startswith(b"\x89PNG")
    assert isinstance(cov.widget, W.Widget)
    for name in ("base", "transform", "drop_jacobian"):
        assert name in cov.controls


@pytest.mark.parametrize("transform", list(MAPS_1D))
def test_1d_every_slider_moves_the_density(cov: ChangeOfVariables1D, transform: str) -> None:
    cov.controls["base"].value = "standard normal"
    cov.controls["transform"].value = transform
    for key, (_, default, lo, hi, _) in MAPS_1D[transform].params.items():
        before = cov.density_values()
        png = cov.image_bytes()
        cov.controls[key].value = default + 0.3 * (hi - default if hi - default > 0.3 else lo - default)
        assert not np.allclose(before, cov.density_values()), key
        assert cov.image_bytes() != png, key
        assert abs(cov.integral - 1.0) < 1e-3, (key, cov.integral)
        cov.controls[key].value = default


def _defaults_1d(transform: str) -> dict[str, float]:
    return {key: spec[1] for key, spec in MAPS_1D[transform].params.items()}


@pytest.mark.parametrize("base", list(BASES_1D))
@pytest.mark.parametrize("transform", list(MAPS_1D))
def test_1d_extreme_sliders(cov: ChangeOfVariables1D, base: str, transform: str) -> None:
    """Every slider at its min and max (the others at their defaults); all of them at once at
    every corner for the logistic base, whose heavier tails make the integral hardest."""
    with cov.hold_updates():
        cov.controls["base"].value = base
        cov.controls["transform"].value = transform
    keys = list(MAPS_1D[transform].params)
    for key in keys:
        for value in _ends(cov.controls[key]):
            with cov.hold_updates():
                for other, default in _defaults_1d(transform).items():
                    cov.controls[other].value = default
                cov.controls[key].value = value
            assert np.isfinite(cov.density_values()).all()
            assert abs(cov.integral - 1.0) < 1e-3, (key, value, cov.integral)
    if base != "logistic":
        return
    for corner in itertools.product(*[(0, 1)] * len(keys)):
        with cov.hold_updates():
            for key, end in zip(keys, corner, strict=True):
                cov.controls[key].value = _ends(cov.controls[key])[end]
        assert abs(cov.integral - 1.0) < 1e-3, (corner, cov.integral)
    with cov.hold_updates():
        for key, default in _defaults_1d(transform).items():
            cov.controls[key].value = default


def test_1d_samples_follow_the_density(cov: ChangeOfVariables1D) -> None:
    """The histogram of x = f^-1(z) matches p_X: the same change of variables both ways."""
    cov.controls["base"].value = "standard normal"
    cov.controls["transform"].value = "sinh-arcsinh"
    data = cov._hist.get_data()
    heights, edges = data.values, data.edges
    centres = 0.5 * (edges[1:] + edges[:-1])
    p = np.interp(centres, cov.x_values(), cov.density_values())
    # 500 samples in 60 bins are noisy: compare the total variation, not bin by bin.
    tv = 0.5 * np.sum(np.abs(heights - p) * np.diff(edges))
    assert tv < 0.15


def test_1d_dropping_the_jacobian_breaks_normalisation(cov: ChangeOfVariables1D) -> None:
    cov.controls["transform"].value = "affine"
    cov.controls["affine_log_scale"].value = 1.0
    cov.controls["drop_jacobian"].value = True
    try:
        assert abs(cov.integral - 1.0) < 1e-3
        # Without |f'(x)| = e^1 the "density" integrates to 1/e.
        assert abs(cov.integral_without_jacobian - np.exp(-1.0)) < 1e-3
        assert "not a density" in cov.status
    finally:
        cov.controls["drop_jacobian"].value = False
        cov.controls["affine_log_scale"].value = MAPS_1D["affine"].params["affine_log_scale"][1]


def test_1d_rejects_unknown_choices() -> None:
    from flowlib.core import FlowInputError

    with pytest.raises(FlowInputError, match="base"):
        ChangeOfVariables1D(base="cauchy")
    with pytest.raises(FlowInputError, match="transform"):
        ChangeOfVariables1D(transform="spline")


# -- 2D ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def flow2d() -> PlanarFlow2D:
    return PlanarFlow2D(resolution=120, n_samples=300, max_layers=4)


def _reset(widget: PlanarFlow2D, **values) -> None:
    defaults = {"kind": "planar", "enforce_invertibility": True, "layers": 1, "turn": 60.0,
                "w1": 2.0, "w2": 0.0, "u1": 1.5, "u2": 0.5, "b": 0.0,
                "z0_1": 0.5, "z0_2": 0.0, "alpha": 0.5, "beta": 2.0}
    defaults.update(values)
    with widget.hold_updates():
        for key, value in defaults.items():
            widget.controls[key].value = value


def _normalised_or_said(widget: PlanarFlow2D) -> bool:
    """The integral reads 1, or the status says why the grid cannot show it (never silently off)."""
    said = "under-resolves" in widget.status or "did not converge" in widget.status
    return abs(widget.integral - 1.0) < 1e-2 or said


def test_2d_builds_and_integrates_to_one(flow2d: PlanarFlow2D) -> None:
    _reset(flow2d)
    assert flow2d.invertible
    assert abs(flow2d.integral - 1.0) < 1e-2
    assert flow2d.density_values().shape == (120, 120)
    assert flow2d.image_bytes().startswith(b"\xff\xd8")  # JPEG by default (a heat map)
    assert isinstance(flow2d.widget, W.Widget)


@pytest.mark.parametrize("kind, keys", [("planar", ["w1", "w2", "u1", "u2", "b", "turn"]),
                                        ("radial", ["z0_1", "z0_2", "alpha", "beta", "turn"])])
def test_2d_controls_move_the_density(flow2d: PlanarFlow2D, kind: str, keys: list[str]) -> None:
    _reset(flow2d, kind=kind, layers=2)
    for key in keys:
        before, png = flow2d.density_values(), flow2d.image_bytes()
        old = flow2d.controls[key].value
        flow2d.controls[key].value = old + 0.5 if old + 0.5 <= flow2d.controls[key].max else old - 0.5
        assert not np.allclose(before, flow2d.density_values(), equal_nan=True), key
        assert flow2d.image_bytes() != png, key
        assert abs(flow2d.integral - 1.0) < 1e-2, (key, flow2d.integral, flow2d.status)
        flow2d.controls[key].value = old


@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_2d_layer_count_moves_the_density(flow2d: PlanarFlow2D, kind: str) -> None:
    _reset(flow2d, kind=kind)
    seen = []
    for k in range(1, flow2d.max_layers + 1):
        flow2d.controls["layers"].value = k
        seen.append(flow2d.density_values())
        assert abs(flow2d.integral - 1.0) < 1e-2, (k, flow2d.integral, flow2d.status)
    assert all(a.shape != b.shape or not np.allclose(a, b) for a, b in itertools.pairwise(seen))


@pytest.mark.parametrize("enforce", [True, False])
@pytest.mark.parametrize("kind", ["planar", "radial"])
def test_2d_extreme_sliders(flow2d: PlanarFlow2D, kind: str, enforce: bool) -> None:
    """Each slider at its min and max, for the fewest and the most layers: no exception, and
    the status explains whatever cannot be shown."""
    _reset(flow2d, kind=kind, enforce_invertibility=enforce)
    sliders = [k for k in _sliders(flow2d) if k != "layers"]
    start = {key: flow2d.controls[key].value for key in sliders}
    for layers in (1, flow2d.max_layers):
        for key in sliders:
            for value in _ends(flow2d.controls[key]):
                with flow2d.hold_updates():
                    for other, old in start.items():
                        flow2d.controls[other].value = old
                    flow2d.controls["layers"].value = layers
                    flow2d.controls[key].value = value
                assert flow2d.status
                if flow2d.invertible:
                    assert np.isfinite(flow2d.integral) and _normalised_or_said(flow2d), flow2d.status
                else:
                    assert "NOT invertible" in flow2d.status and np.isnan(flow2d.density_values()).all()


@pytest.mark.parametrize("enforce", [True, False])
def test_2d_all_planar_corners(flow2d: PlanarFlow2D, enforce: bool) -> None:
    """All 2^5 corners of (w, u, b) with the most layers, in both modes."""
    _reset(flow2d, enforce_invertibility=enforce, layers=flow2d.max_layers)
    for corner in itertools.product(*[(0, 1)] * 5):
        with flow2d.hold_updates():
            for key, end in zip(["w1", "w2", "u1", "u2", "b"], corner, strict=True):
                flow2d.controls[key].value = _ends(flow2d.controls[key])[end]
        assert flow2d.invertible or (not enforce and "NOT invertible" in flow2d.status)
        assert not flow2d.invertible or _normalised_or_said(flow2d), (corner, flow2d.status)


def test_2d_non_invertible_planar_is_reported(flow2d: PlanarFlow2D) -> None:
    # w = (1, 0), u = (-1.2, 0): w.u = -1.2 < -1.
    _reset(flow2d, enforce_invertibility=False, w1=1.0, u1=-1.2, u2=0.0)
    assert not flow2d.invertible
    assert "NOT invertible" in flow2d.status and "w.u = -1.2 < -1" in flow2d.status
    assert np.isnan(flow2d.integral)
    assert np.isnan(flow2d.density_values()).all()
    assert flow2d._text_warning.get_visible() and "NOT INVERTIBLE" in flow2d._text_warning.get_text()
    # The same parameters with the reparameterisation: invertible again, a normalised density.
    flow2d.controls["enforce_invertibility"].value = True
    assert flow2d.invertible and abs(flow2d.integral - 1.0) < 1e-2
    assert "invertible: w.u_hat" in flow2d.status
    flow2d.controls["enforce_invertibility"].value = False
    flow2d.controls["u1"].value = -0.5  # w.u = -0.5 >= -1: invertible without help
    assert flow2d.invertible and abs(flow2d.integral - 1.0) < 1e-2


def test_2d_radial_beta_below_minus_alpha_is_clamped_and_said(flow2d: PlanarFlow2D) -> None:
    _reset(flow2d, kind="radial", alpha=1.0, beta=-3.0)
    assert flow2d.invertible
    assert "beta clamped" in flow2d.status


# -- layout and the one canvas ----------------------------------------------------------------
def _attribute_slider() -> AttributeSlider:
    """Eight images of the largest size a lecture slides (MNIST's 28 x 28), on an untrained Glow."""
    import torch

    from flowlib.image_models import glow_image

    model = glow_image((1, 28, 28), scales=2, depth=1, hidden=8, blocks=1, grey_levels=256)
    x = torch.randint(0, 256, (8, 1, 28, 28), generator=torch.Generator().manual_seed(0))
    return AttributeSlider(model, x, {"a": torch.ones(1, 28, 28), "b": -torch.ones(1, 28, 28)})


@pytest.mark.parametrize("make", [lambda: ChangeOfVariables1D(grid_points=2001, n_samples=100),
                                  lambda: PlanarFlow2D(resolution=40, n_samples=50, max_layers=2),
                                  lambda: ShearAndScale2D(n_points=20, boundary_points=100),
                                  lambda: MasksAndSqueeze(size=8),
                                  lambda: DequantizationBound(quadrature=400, curve_points=24),
                                  lambda: SplineKnots(grid_points=401),
                                  lambda: _attribute_slider(),
                                  lambda: ConvergenceMap(size=32)],
                         ids=["ChangeOfVariables1D", "PlanarFlow2D", "ShearAndScale2D", "MasksAndSqueeze",
                              "DequantizationBound", "SplineKnots", "AttributeSlider", "ConvergenceMap"])
def test_widgets_fit_the_notebook_column(make) -> None:
    """The figure is at most MAX_WIDTH_PX wide (a 1280 px JupyterLab window with the file browser
    open leaves about 850 px), and the controls sit below it in rows that wrap."""
    from flowlib.widgets.canvas import MAX_WIDTH_PX, Canvas

    widget = make()
    assert isinstance(widget, Canvas)
    width, _ = widget.figure.canvas.get_width_height()
    assert width <= MAX_WIDTH_PX
    box = widget.widget
    assert box.children[0] is widget._image and widget._image.layout.max_width == "100%"
    rows = box.children[1:-1]
    assert rows and all(r.layout.flex_flow == "row wrap" for r in rows)
    shown = {id(c) for r in rows for c in r.children}
    assert all(id(c) in shown for c in widget.controls.values())  # every control is in a row

