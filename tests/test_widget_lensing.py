"""The convergence-map widget of lecture 9 (flowlib.widgets.ConvergenceMap), driven without a browser.

It must show the simulator's own map for the sliders' parameters (one fixed latent), redraw on
every control, move its measurements as the log-normal transform says, and refuse bad
arguments by name. (It fits the notebook column: tests/test_widgets.py.)
"""

from __future__ import annotations

import math

import pytest
import torch

from flowlib.core import FlowInputError
from flowlib.data.lensing import LOGNORMAL_SHIFT, convergence_maps, convergence_std
from flowlib.widgets import ConvergenceMap


@pytest.fixture(scope="module")
def widget() -> ConvergenceMap:
    return ConvergenceMap(size=32, seed=3)


def test_the_map_is_the_simulators_for_the_sliders(widget: ConvergenceMap) -> None:
    widget.controls["sigma_8"].value, widget.controls["omega_m"].value = 0.9, 0.25
    expected = convergence_maps(1, 32, 0.9, 0.25, generator=torch.Generator().manual_seed(3))
    gaussian = convergence_maps(1, 32, 0.9, 0.25, lognormal=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(widget.maps, torch.cat([expected, gaussian]))
    assert widget.sigma_kappa == pytest.approx(convergence_std(0.9, 0.25))
    assert widget.minimum == pytest.approx(float(expected.min())) and widget.maximum == pytest.approx(
        float(expected.max()))
    assert "sigma_8 = 0.90, Omega_m = 0.25" in widget.status


def test_a_larger_amplitude_pulls_voids_to_the_bound_and_stretches_peaks(widget: ConvergenceMap) -> None:
    """With the latent fixed, kappa = lambda (exp(s u - s^2/2) - 1): as s grows the lowest pixel falls
    towards -lambda, the highest rises faster than sigma_kappa, and the skewness grows."""
    widget.controls["omega_m"].value = 0.3
    seen = []
    for s8 in (0.6, 0.8, 1.0):
        before = widget.image_bytes()
        widget.controls["sigma_8"].value = s8
        assert widget.image_bytes() != before or s8 == 0.6
        seen.append((widget.minimum, widget.maximum / widget.sigma_kappa, widget.skewness))
    minima, peaks, skews = zip(*seen, strict=True)
    assert -LOGNORMAL_SHIFT < minima[2] < minima[1] < minima[0] < 0
    assert peaks[0] < peaks[1] < peaks[2] and skews[0] < skews[1] < skews[2]
    assert all(math.isfinite(v) for v in (*minima, *peaks, *skews))


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(FlowInputError, match="ConvergenceMap: sigma_8"):
        ConvergenceMap(size=32, sigma_8=1.5)
    with pytest.raises(FlowInputError, match="ConvergenceMap: size"):
        ConvergenceMap(size=8)
