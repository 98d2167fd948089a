"""The dequantization widget of lecture 4: its density, its three figures, and when a bound is a bound.

Every figure the widget shows is recomputed here another way (Monte Carlo draws of the noise,
a fine Riemann sum over each cell, the closed forms of the box model), and the facts it states
are checked: the density integrates to 1, the figure tested with u ~ U(0, 1) is always a bound
(Jensen), the one tested with the training width w is a bound at w = 1 and not below it.
"""

from __future__ import annotations

import math

import ipywidgets as W
import numpy as np
import pytest
import torch

from flowlib._checks import FlowInputError
from flowlib.widgets import DequantizationBound
from flowlib.widgets.dequantization import DEFAULT_PROBS

P = torch.tensor(DEFAULT_PROBS, dtype=torch.float64)
ENTROPY_BITS = float(-(P * P.log2()).sum())


@pytest.fixture(scope="module")
def widget() -> DequantizationBound:
    return DequantizationBound(quadrature=400, curve_points=24)


def _set(w: DequantizationBound, width: float, blur: float) -> None:
    with w.hold_updates():
        w.controls["width"].value, w.controls["blur"].value = width, blur


def test_builds(widget: DequantizationBound) -> None:
    assert widget.image_bytes().startswith(b"\x89PNG")
    assert isinstance(widget.widget, W.Widget)
    assert set(widget.controls) == {"width", "blur"}
    assert abs(widget.entropy_bits - ENTROPY_BITS) < 1e-12


@pytest.mark.parametrize("key, value", [("width", 0.6), ("blur", 0.12)])
def test_every_control_moves_the_picture(widget: DequantizationBound, key: str, value: float) -> None:
    _set(widget, 0.25, 0.03)
    before, figures = widget.image_bytes(), (widget.reported_bits, widget.actual_bits)
    widget.controls[key].value = value
    assert widget.image_bytes() != before
    assert (widget.reported_bits, widget.actual_bits) != figures


@pytest.mark.parametrize("width", [0.05, 0.3, 1.0, 1.7])
@pytest.mark.parametrize("blur", [0.0, 0.04, 0.2])
def test_the_density_integrates_to_one(widget: DequantizationBound, width: float, blur: float) -> None:
    v = torch.linspace(-3, len(DEFAULT_PROBS) + 4, 400_001, dtype=torch.float64)
    p = widget.density(v, width, blur)
    # (the box model's jumps cost the trapezoid rule up to half a grid step times the jump, each)
    assert abs(float(torch.trapezoid(p, v)) - 1.0) < (1e-3 if blur == 0.0 else 1e-5)
    assert float(p.min()) >= 0.0


@pytest.mark.parametrize("width", [0.1, 0.5, 1.0, 1.5])
@pytest.mark.parametrize("blur", [0.0, 0.05])
def test_cell_masses_are_the_integrals_of_the_density(widget: DequantizationBound, width: float,
                                                      blur: float) -> None:
    n = 20_000
    for k in range(len(DEFAULT_PROBS)):
        v = k + (torch.arange(n, dtype=torch.float64) + 0.5) / n  # a midpoint sum over [k, k + 1)
        riemann = float(widget.density(v, width, blur).mean())
        assert abs(float(widget.cell_masses(width, blur)[k]) - riemann) < 2e-3, (k, width, blur)


def test_the_figures_against_monte_carlo(widget: DequantizationBound) -> None:
    """Draw x ~ P and u ~ U(0, w), average -log2 p(x + u): the reported figure, within the MC error."""
    _set(widget, 0.4, 0.06)
    g = torch.Generator().manual_seed(0)
    n = 400_000
    x = torch.multinomial(P, n, replacement=True, generator=g).to(torch.float64)
    for span, figure in ((0.4, widget.reported_bits), (1.0, widget.honest_bits)):
        u = span * torch.rand(n, generator=g, dtype=torch.float64)
        nll = -torch.log2(widget.density(x + u))
        mean, err = float(nll.mean()), float(nll.std()) / math.sqrt(n)
        assert abs(mean - figure) < 4 * err + 1e-3, (span, mean, figure)
    masses = widget.cell_masses()
    assert abs(float(-torch.log2(masses[x.long()]).mean()) - widget.actual_bits) < 0.01


@pytest.mark.parametrize("width", [0.05, 0.25, 0.5, 0.8])
def test_box_model_reports_entropy_plus_log_w(widget: DequantizationBound, width: float) -> None:
    """Blur 0, w <= 1: p = P(k) / w on [k, k + w), so the report is H(P) + log2 w, the actual figure H(P)."""
    _set(widget, width, 0.0)
    assert abs(widget.reported_bits - (ENTROPY_BITS + math.log2(width))) < 1e-9
    assert abs(widget.actual_bits - ENTROPY_BITS) < 1e-9
    assert not widget.is_bound and "NOT a bound" in widget.status
    assert math.isinf(widget.honest_bits)  # scored with U(0, 1), p = 0 on part of every cell


@pytest.mark.parametrize("blur", [0.0, 0.01, 0.05, 0.15, 0.3])
def test_width_one_is_a_bound_and_tight_when_flat(widget: DequantizationBound, blur: float) -> None:
    _set(widget, 1.0, blur)
    assert widget.is_bound and "a valid bound" in widget.status and "Jensen" in widget.status
    assert widget.reported_bits == pytest.approx(widget.honest_bits)
    assert widget.actual_bits >= ENTROPY_BITS - 1e-9  # no discrete model beats the entropy
    if blur == 0.0:  # flat in every cell: the bound is tight
        assert widget.reported_bits == pytest.approx(ENTROPY_BITS, abs=1e-9)


@pytest.mark.parametrize("blur", [0.0, 0.02, 0.1, 0.3])
def test_the_honest_score_is_always_a_bound_and_narrow_noise_never_is(widget: DequantizationBound,
                                                                    blur: float) -> None:
    _set(widget, 0.5, blur)
    c = widget.curves()
    assert np.all(c["honest"] >= c["actual"] - 1e-9)  # Jensen, for every model
    narrow = c["width"] < 0.9
    assert np.all(c["reported"][narrow] < c["actual"][narrow])  # w < 1: reports better than it is
    assert np.all(c["actual"] >= ENTROPY_BITS - 1e-9)


@pytest.mark.parametrize("kwargs, said", [
    ({"probs": (0.5, 0.6)}, "sum to 1"), ({"probs": (1.0,)}, "2 to 32"),
    ({"probs": (0.5, 0.0, 0.5)}, "probs"), ({"probs": (0.5, -0.1, 0.6)}, "probs"),
    ({"probs": 3}, "sequence"), ({"width": 0.0}, "width"),
    ({"width": 5.0}, "width"), ({"blur": -0.1}, "blur"), ({"blur": float("nan")}, "blur"),
    ({"quadrature": 2}, "quadrature")])
def test_bad_arguments_are_refused_clearly(kwargs: dict, said: str) -> None:
    with pytest.raises(FlowInputError, match=f"DequantizationBound: .*{said}"):
        DequantizationBound(**kwargs)


def test_the_first_slider_is_the_noise_width(widget: DequantizationBound) -> None:
    """The slider a browser test moves first (the width's fit in the column: tests/test_widgets.py)."""
    rows = widget.widget.children[1:-1]
    first = next(c for r in rows for c in r.children if isinstance(c, W.FloatSlider))
    assert first is widget.controls["width"]
