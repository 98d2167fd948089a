"""The rational-quadratic spline transformer (Durkan et al., 2019) at its corners, and in both structures.

tests/test_layers_autograd.py checks it inside a MAF layer (round trip, both logdets against
autograd, batch independence, tails). Here: the transformer on its own, where a spline breaks
first: inputs exactly on a knot and on +-bound, far in the tails, float32 with sharp bins,
gradients there, and the spline in a coupling (NSF's coupling) against autograd.
"""

from __future__ import annotations

import math

import pytest
import torch

from flowlib import grading
from flowlib.coupling import Coupling, checkerboard_mask, half_mask
from flowlib.nets import MLP
from flowlib.splines import RationalQuadraticSpline

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="no CUDA device on this machine"))]


def params(spline: RationalQuadraticSpline, n: int, d: int, scale: float, seed: int = 0,
           dtype: torch.dtype = torch.float64, device: str = "cpu") -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(n, spline.params * d, generator=g, dtype=dtype)).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_parameters_are_the_identity_everywhere(device: str) -> None:
    spline = RationalQuadraticSpline(bins=7, bound=2.5)
    x = torch.linspace(-10, 10, 201, device=device).reshape(-1, 1)
    y, ld = spline(x, torch.zeros(201, spline.params, device=device))
    torch.testing.assert_close(y, x, atol=1e-5, rtol=0)
    assert float(ld.abs().max()) < 1e-5


@pytest.mark.parametrize("device", DEVICES)
def test_derivative_matches_autograd_and_the_map_increases(device: str) -> None:
    spline = RationalQuadraticSpline(bins=6, bound=3.0)
    x = torch.linspace(-5, 5, 2001, dtype=torch.float64, device=device).reshape(-1, 1).requires_grad_()
    h = params(spline, 1, 1, 1.5, device=device).expand(2001, -1)
    y, ld = spline(x, h)
    (grad,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(ld, torch.log(grad), atol=1e-10, rtol=0)
    assert bool((y[1:] > y[:-1]).all()), "the spline must be strictly increasing"


def test_knots_and_bounds_map_to_knots_both_ways() -> None:
    """On a knot the bin search may pick either neighbour: both must give the knot itself."""
    spline = RationalQuadraticSpline(bins=5, bound=2.0)
    h = params(spline, 1, 1, 1.0, seed=3)
    edges_x, edges_y, derivs = spline.knots(torch.zeros(1, 1, dtype=torch.float64), h)
    x = edges_x.reshape(-1, 1)  # all 6 knots, -2 and +2 included
    hh = h.expand(x.shape[0], -1)
    y, ld = spline(x, hh)
    torch.testing.assert_close(y, edges_y.reshape(-1, 1), atol=1e-12, rtol=0)
    torch.testing.assert_close(ld, torch.log(derivs.reshape(-1, 1)), atol=1e-9, rtol=0)
    back, ld_back = spline.inverse(edges_y.reshape(-1, 1), hh)
    torch.testing.assert_close(back, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(ld_back, -ld, atol=1e-9, rtol=0)
    assert float(derivs[..., 0]) == 1.0 and float(derivs[..., -1]) == 1.0  # continuous with the tails


@pytest.mark.parametrize("device", DEVICES)
def test_tails_are_the_identity_with_finite_gradients(device: str) -> None:
    spline = RationalQuadraticSpline(bins=4, bound=3.0)
    x = torch.tensor([[-1e30], [-1e6], [-3.0000001], [3.0000001], [1e6], [1e30]], device=device)
    h = params(spline, 6, 1, 3.0, dtype=torch.float32, device=device).requires_grad_()
    x = x.requires_grad_()
    y, ld = spline(x, h)
    assert torch.equal(y.detach(), x.detach()) and torch.equal(ld.detach(), torch.zeros_like(ld))
    back, ld_back = spline.inverse(y, h)
    assert torch.equal(back.detach(), x.detach())
    (y.sum() + ld.sum() + back.sum() + ld_back.sum()).backward()
    assert torch.isfinite(x.grad).all() and torch.isfinite(h.grad).all()


@pytest.mark.parametrize("device", DEVICES)
def test_float32_round_trip_is_as_good_as_the_map_is_conditioned(device: str) -> None:
    """Sharp random bins in float32: the inverse reproduces y to float32 precision, and x within
    that precision divided by the local slope (a nearly flat bin cannot do better)."""
    spline = RationalQuadraticSpline(bins=8, bound=3.0)
    g = torch.Generator().manual_seed(1)
    x = (3.5 * torch.randn(4000, 3, generator=g)).to(device)
    h = params(spline, 4000, 3, 1.0, dtype=torch.float32, device=device)
    y, ld = spline(x, h)
    back, ld_back = spline.inverse(y, h)
    again, _ = spline(back, h)
    assert float((again - y).abs().max()) < 1e-5
    slope = torch.exp(ld)
    assert bool(((back - x).abs() <= 1e-5 / slope.clamp(max=1.0) + 1e-5).all())
    assert float((ld + ld_back).abs().max()) < 1e-3
    assert torch.isfinite(back).all() and torch.isfinite(ld_back).all()


def test_bad_settings_are_refused() -> None:
    with pytest.raises(grading.FlowInputError, match="bins"):
        RationalQuadraticSpline(bins=0)
    with pytest.raises(grading.FlowInputError, match="bound"):
        RationalQuadraticSpline(bound=-1.0)
    with pytest.raises(grading.FlowInputError, match="min_width"):
        RationalQuadraticSpline(bins=8, min_width=0.2)  # 8 bins of at least 0.2 of the interval
    spline = RationalQuadraticSpline(bins=3)
    with pytest.raises(grading.FlowInputError, match=r"expected parameters h of shape \(2, 16\)"):
        spline(torch.zeros(2, 2), torch.zeros(2, 5))


@pytest.mark.parametrize("mask", [half_mask(4, 1, kind="alternate"), checkerboard_mask(1, 2, 2, 0)],
                         ids=["vector-sliced", "image-masked"])
def test_spline_coupling_against_autograd(mask: torch.Tensor) -> None:
    """NSF's coupling: the same Coupling structure, a spline transformer."""
    torch.manual_seed(0)
    spline = RationalQuadraticSpline(bins=4, bound=2.0)
    n_in, n_out = Coupling.conditioner_sizes(mask, spline)
    if mask.dim() == 1:
        net = MLP(n_in, n_out, hidden=16, layers=1)
    else:
        net = torch.nn.Conv2d(n_in, n_out, 1)
    layer = Coupling(mask, net, spline).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.normal_(0, 0.7)
    x = 1.5 * torch.randn(4, *mask.shape, dtype=torch.float64)
    z, ld = layer(x)
    back, ld_back = layer.inverse(z)
    torch.testing.assert_close(back, x, atol=1e-10, rtol=0)
    torch.testing.assert_close(ld, grading.autograd_logabsdet(lambda v: layer(v)[0], x), atol=1e-9, rtol=0)
    torch.testing.assert_close(ld_back, grading.autograd_logabsdet(lambda v: layer.inverse(v)[0], z),
                               atol=1e-9, rtol=0)
    assert math.isclose(float((ld + ld_back).detach().abs().max()), 0.0, abs_tol=1e-9)
