"""The spline widget of lecture 6 (flowlib.widgets.SplineKnots), driven without a browser.

It must build, redraw on every control, show a strictly increasing map whatever the sliders,
a density that integrates to 1 in both views, bin masses that are the base's masses between the
knots (a monotone map moves mass, never creates it), facts read from RationalQuadraticSpline
itself (knots, slopes, log-derivative against autograd), refuse bad arguments by name, and fit
the notebook column like every other widget.
"""

from __future__ import annotations

import itertools
import math

import ipywidgets as W
import numpy as np
import pytest
import torch

from flowlib.core import FlowInputError
from flowlib.splines import RationalQuadraticSpline
from flowlib.widgets import SplineKnots
from flowlib.widgets.spline import MAX_BINS, SPLINE_SLIDERS, SPLINE_VIEWS


@pytest.fixture(scope="module")
def spline() -> SplineKnots:
    return SplineKnots(grid_points=4001)


def _reset(widget: SplineKnots, **values: object) -> None:
    settings: dict[str, object] = {"bins": 4, "view": "push"}
    settings.update({key: spec[4] for key, spec in SPLINE_SLIDERS.items()})
    settings.update(values)
    with widget.hold_updates():
        for key, value in settings.items():
            widget.controls[key].value = value


def _phi(x: np.ndarray) -> np.ndarray:
    return np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in x])


def test_builds_and_starts_at_the_identity(spline: SplineKnots) -> None:
    _reset(spline)
    assert spline.image_bytes().startswith(b"\x89PNG")
    assert isinstance(spline.widget, W.Widget)
    assert set(spline.controls) == {"bins", "view", *SPLINE_SLIDERS}
    x = torch.linspace(-6, 6, 101, dtype=torch.float64)
    y, log_d = spline.transform(x)
    assert torch.allclose(y, x, atol=1e-12) and float(log_d.abs().max()) < 1e-12
    assert abs(spline.integral - 1.0) < 1e-6 and spline.monotone
    np.testing.assert_allclose(spline.knots[0], [-3.0, -1.5, 0.0, 1.5, 3.0], atol=1e-12)
    assert "integral of the density shown: 1.0000" in spline.status


def _picture(widget: SplineKnots) -> tuple[bytes, np.ndarray, np.ndarray]:
    return widget.image_bytes(), widget._line_map.get_ydata().copy(), widget.density_values()


@pytest.mark.parametrize("key", ["bins", "view", *SPLINE_SLIDERS])
def test_every_control_redraws(spline: SplineKnots, key: str) -> None:
    """Each control changes the picture; each slider of the current bins changes the map or the
    density it shows (a hidden slider is shown first by choosing the most bins; the start is not
    the identity, which every number of bins can draw)."""
    _reset(spline, bins=MAX_BINS, h1=0.7, d1=2.0)
    png, y, p = _picture(spline)
    control = spline.controls[key]
    if key == "view":
        control.value = "flow"
    elif key == "bins":
        control.value = 3
    else:
        control.value = control.value + 0.5 if control.value + 0.5 <= control.max else control.value - 0.5
    png_after, y_after, p_after = _picture(spline)
    assert png_after != png, key
    changed_map = y.shape != y_after.shape or not np.allclose(y, y_after)
    changed_density = p.shape != p_after.shape or not np.allclose(p, p_after)
    assert changed_map or changed_density, key


def test_sliders_past_the_bins_are_hidden(spline: SplineKnots) -> None:
    _reset(spline, bins=2)
    c = spline.controls
    assert c["h2"].layout.display is None and c["h3"].layout.display == "none"
    assert c["d1"].layout.display is None and c["d2"].layout.display == "none"
    c["bins"].value = MAX_BINS
    assert all(c[key].layout.display is None for key in SPLINE_SLIDERS)


def _settings(seed: int, bins: int) -> dict[str, float]:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    for key, (_, lo, hi, step, _) in SPLINE_SLIDERS.items():
        value = lo + (hi - lo) * float(torch.rand((), generator=g))
        out[key] = round(round(value / step) * step, 2)
    return out


@pytest.mark.parametrize("view", list(SPLINE_VIEWS))
@pytest.mark.parametrize("bins", range(2, MAX_BINS + 1))
def test_monotone_and_normalised(spline: SplineKnots, view: str, bins: int) -> None:
    """Random settings and every slider at both ends: increasing, integral 1, masses sum to 1."""
    cases = [_settings(seed, bins) for seed in range(3)]
    for key in [f"h{k}" for k in range(1, bins + 1)] + [f"d{k}" for k in range(1, bins)]:
        lo, hi = SPLINE_SLIDERS[key][1:3]
        cases += [{key: lo}, {key: hi}]
    for values in cases:
        _reset(spline, bins=bins, view=view, **values)
        assert spline.monotone, values
        assert spline.min_slope > 0
        x = torch.linspace(-7, 7, 3001, dtype=torch.float64)
        y, _ = spline.transform(x)
        assert bool((y[1:] > y[:-1]).all()), values
        assert abs(spline.integral - 1.0) < 1e-3, (values, spline.integral)
        assert abs(float(spline.bin_masses.sum()) + _outside(spline) - 1.0) < 1e-3, values


def _outside(widget: SplineKnots) -> float:
    """The base's mass outside [-B, B] (the tails are the identity, so the same in both views)."""
    return 2 * (1 - float(_phi(np.array([widget.bound]))[0]))


@pytest.mark.parametrize("view", list(SPLINE_VIEWS))
def test_bin_masses_are_the_base_mass_between_the_knots(spline: SplineKnots, view: str) -> None:
    """A monotone map sends [x_k, x_{k+1}] onto [y_k, y_{k+1}]: the mass of each bin is the
    base's mass of its preimage, whatever the slopes."""
    for seed in range(4):
        _reset(spline, bins=4, view=view, **_settings(10 + seed, 4))
        x_knots, y_knots, _ = spline.knots
        ends = x_knots if view == "push" else y_knots
        expected = np.diff(_phi(ends))
        np.testing.assert_allclose(spline.bin_masses, expected, atol=2e-4)
    # Moving a slope leaves every bin's mass where it was.
    _reset(spline, bins=4, view="push")
    before = spline.bin_masses.copy()
    spline.controls["d2"].value = 3.0
    np.testing.assert_allclose(spline.bin_masses, before, atol=1e-4)


def test_facts_read_from_the_spline(spline: SplineKnots) -> None:
    _reset(spline, bins=3, h1=0.8, h2=-0.6, h3=0.2, d1=2.5, d2=0.4)
    flowlib_spline = RationalQuadraticSpline(bins=3, bound=spline.bound).double()
    h = spline.parameters()
    assert h.shape == (1, flowlib_spline.params)
    knots = flowlib_spline.knots(torch.zeros(1, 1, dtype=torch.float64), h)
    for mine, theirs in zip(spline.knots, knots, strict=True):
        np.testing.assert_allclose(mine, theirs.reshape(-1).numpy(), atol=1e-12)
    np.testing.assert_allclose(spline.knots[2], [1.0, 2.5, 0.4, 1.0], atol=1e-9)  # the sliders' slopes
    x = torch.linspace(-5, 5, 301, dtype=torch.float64)
    y, log_d = spline.transform(x)
    y_ref, log_d_ref = flowlib_spline(x.reshape(-1, 1), h.expand(301, -1))
    torch.testing.assert_close(y, y_ref[:, 0])
    x_grad = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(spline.transform(x_grad)[0].sum(), x_grad)
    torch.testing.assert_close(log_d.exp(), grad, atol=1e-10, rtol=0)
    assert spline.autograd_error < 1e-9
    # At the knots: p_Y(y_k) = p_X(x_k) / d_k (push) and p_X(x_k) = p_Z(y_k) d_k (flow).
    x_knots, y_knots, slopes = spline.knots
    normal = np.exp(-0.5 * x_knots**2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(spline.knot_density(), normal / slopes, rtol=1e-10)
    spline.controls["view"].value = "flow"
    normal_y = np.exp(-0.5 * y_knots**2) / math.sqrt(2 * math.pi)
    np.testing.assert_allclose(spline.knot_density(), normal_y * slopes, rtol=1e-10)


def test_density_matches_the_change_of_variables(spline: SplineKnots) -> None:
    """The 'push' density against a histogram of tau(x) for 200000 normal x (total variation)."""
    _reset(spline, bins=4, h1=1.0, h3=-1.0, d2=2.0)
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y, _ = spline.transform(x)
    edges = np.linspace(-4, 4, 81)
    counts, _ = np.histogram(y.numpy(), bins=edges)
    # The density's mass in each histogram bin: its cumulative integral (trapezoid rule) at the edges.
    along, p = spline.grid_values(), spline.density_values()
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (p[1:] + p[:-1]) * np.diff(along))])
    masses = np.diff(np.interp(edges, along, cdf))
    assert 0.5 * np.sum(np.abs(counts / len(x) - masses)) < 0.01


@pytest.mark.parametrize("kwargs, match", [
    ({"bins": 1}, "bins must be an integer >= 2"),
    ({"bins": MAX_BINS + 1}, f"bins must be an integer from 2 to {MAX_BINS}"),
    ({"bins": 4.0}, "bins must be an integer"),
    ({"bound": 0.0}, "bound must be a number"),
    ({"view": "cdf"}, "view must be one of"),
    ({"h1": 5.0}, "h1 must be a number"),
    ({"d2": 0.0}, "d2 must be a number"),
    ({"d1": float("nan")}, "d1 must be a finite number"),
    ({"grid_points": 10}, "grid_points"),
    ({"slope": 1.0}, "unknown keyword"),
    ({"image_format": "gif"}, "image_format"),
])
def test_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(FlowInputError, match=match):
        SplineKnots(**kwargs)


def test_transform_refuses_bad_input(spline: SplineKnots) -> None:
    with pytest.raises(FlowInputError, match=r"shape \(n,\)"):
        spline.transform(torch.zeros(3, 2))


def test_all_slope_corners_stay_monotone(spline: SplineKnots) -> None:
    """Every corner of the three slopes of 4 bins, with the heights at their ends too."""
    for corner in itertools.product(*[(0, 1)] * 3):
        values = {f"d{k}": SPLINE_SLIDERS[f"d{k}"][1 + end] for k, end in enumerate(corner, start=1)}
        _reset(spline, bins=4, h1=-1.5, h2=1.5, h3=-1.5, h4=1.5, **values)
        assert spline.monotone and abs(spline.integral - 1.0) < 1e-3, (corner, spline.status)
