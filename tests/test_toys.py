"""The 2D toys: normalised log-densities, samples that match them, clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from flowlib import FlowInputError
from flowlib.data import TOYS, get_toy
from flowlib.data.toys import Checkerboard, EnergyToy, Rings, TwoMoons

EXACT = ["eight_gaussians", "two_moons", "rings"]
ENERGIES = ["U1", "U2", "U3", "U4"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def grid_integral(toy, resolution: int, half_width: float | None = None) -> float:
    """Midpoint rule over the square [-L, L]^2 in float64 (independent of flowlib.metrics)."""
    L = toy.bounds[1] if half_width is None else half_width
    h = 2 * L / resolution
    c = -L + h * (torch.arange(resolution, dtype=torch.float64) + 0.5)
    y, x = torch.meshgrid(c, c, indexing="ij")
    log_p = toy.log_prob(torch.stack([x.flatten(), y.flatten()], dim=1))
    return float(log_p.exp().sum() * h * h)


def test_names_and_lookup():
    assert TOYS == ["eight_gaussians", "two_moons", "checkerboard", "rings", "U1", "U2", "U3", "U4"]
    for name in TOYS:
        toy = get_toy(name)
        assert toy.name == name
        lo, hi = toy.bounds
        assert lo == -hi > -10
    assert get_toy("u3").name == "U3"


def test_unknown_name_lists_the_choices():
    with pytest.raises(FlowInputError, match="eight_gaussians.*checkerboard.*U4"):
        get_toy("spirals")


@pytest.mark.parametrize("name", TOYS)
def test_sample_shape_dtype_and_determinism(name):
    toy = get_toy(name)
    x = toy.sample(500, generator=gen(3))
    assert x.shape == (500, 2) and x.dtype == torch.float32
    assert torch.equal(x, toy.sample(500, generator=gen(3)))
    assert not torch.equal(x, toy.sample(500, generator=gen(4)))
    log_p = toy.log_prob(x)
    assert log_p.shape == (500,) and log_p.dtype == torch.float32
    assert torch.isfinite(log_p).all()
    assert toy.log_prob(x.double()).dtype == torch.float64


@pytest.mark.parametrize("name", TOYS)
def test_bad_arguments_raise(name):
    toy = get_toy(name)
    for n in (0, -3, 2.5, True):
        with pytest.raises(FlowInputError, match="n must be an integer >= 1"):
            toy.sample(n)
    for bad in (torch.zeros(5), torch.zeros(5, 3), torch.zeros(2, 5, 2)):
        with pytest.raises(FlowInputError, match=r"\(n, 2\)"):
            toy.log_prob(bad)
    with pytest.raises(FlowInputError, match="floating"):
        toy.log_prob(torch.zeros(4, 2, dtype=torch.long))


@pytest.mark.parametrize("name", EXACT)
def test_exact_densities_integrate_to_one(name):
    # Cells of h = 2L/300 <= 0.03 are several times narrower than the narrowest bump (std 0.15),
    # where the midpoint rule on a Gaussian is accurate to far better than 1e-3.
    toy = get_toy(name)
    assert grid_integral(toy, 300) == pytest.approx(1.0, abs=1e-3)


@pytest.mark.parametrize("name", ENERGIES)
def test_energy_targets_integrate_to_one_on_another_grid(name):
    # The normaliser comes from a 1024 x 1024 grid; a 700 x 700 grid must agree to 1e-3.
    toy = get_toy(name)
    assert grid_integral(toy, 700) == pytest.approx(1.0, abs=1e-3)


def test_checkerboard_integrates_to_one_exactly():
    toy = get_toy("checkerboard")
    # Any grid whose cells tile the 2x2 squares counts 8 * 4 units of area at density 1/32.
    for resolution in (8, 64, 400):
        assert grid_integral(toy, resolution) == pytest.approx(1.0, abs=1e-12)
    # A larger box whose cells still tile the squares (h = 1/8) adds only zeros.
    assert grid_integral(toy, 96, half_width=6.0) == pytest.approx(1.0, abs=1e-12)
    assert toy.log_prob(torch.tensor([[1.0, 1.0]])).item() == pytest.approx(-math.log(32))


def test_checkerboard_support_and_balance():
    toy = Checkerboard()
    x = toy.sample(40_000, generator=gen(1))
    assert (x.abs() < 4).all()
    cells = torch.floor(x / 2).long()
    assert ((cells[:, 0] + cells[:, 1]) % 2 == 0).all()
    counts = torch.bincount((cells[:, 0] + 2) * 4 + (cells[:, 1] + 2), minlength=16)
    filled = counts[counts > 0]
    assert len(filled) == 8
    assert (filled.float() / len(x) - 1 / 8).abs().max() < 0.01
    outside = torch.tensor([[1.0, -1.0], [-3.0, 3.5], [5.0, 0.0], [0.5, 4.5]])
    assert torch.isneginf(toy.log_prob(outside)).all()


def test_eight_gaussians_centres_and_spread():
    toy = get_toy("eight_gaussians")
    x = toy.sample(40_000, generator=gen(2)).double()
    angle = torch.arange(8, dtype=torch.float64) * math.pi / 4
    centres = 4 * torch.stack([angle.cos(), angle.sin()], dim=1)
    nearest = torch.cdist(x, centres).argmin(dim=1)
    for k in range(8):
        xk = x[nearest == k]
        assert len(xk) / len(x) == pytest.approx(1 / 8, abs=0.01)
        assert (xk.mean(0) - centres[k]).abs().max() < 0.03
        assert xk.std(0).numpy() == pytest.approx([0.5, 0.5], abs=0.02)


def test_two_moons_matches_scikit_learn_and_is_centred():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    arcs, _ = sklearn_datasets.make_moons(n_samples=200, shuffle=False, noise=None)
    expected = 2.0 * (torch.as_tensor(arcs) - torch.tensor([0.5, 0.25], dtype=torch.float64))
    toy = TwoMoons()
    assert torch.allclose(toy.centres, expected, atol=1e-12)
    assert torch.allclose(toy.centres.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12)
    x = toy.sample(40_000, generator=gen(5)).double()
    stderr = x.std(0) / math.sqrt(len(x))
    assert (x.mean(0).abs() < 4 * stderr).all()


def test_rings_density_is_the_angle_average_of_gaussians():
    toy = Rings()
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.3, 1.9], [2.2, -2.1], [4.1, 0.2], [0.0, 1.5]],
                     dtype=torch.float64)
    angle = torch.arange(20_000, dtype=torch.float64) * (2 * math.pi / 20_000)
    circle = torch.stack([angle.cos(), angle.sin()], dim=1)
    s2 = toy.std**2
    density = torch.zeros(len(x), dtype=torch.float64)
    for radius in toy.radii:
        sq = ((x[:, None, :] - radius * circle[None]) ** 2).sum(-1)
        density += torch.exp(-sq / (2 * s2)).mean(1) / (2 * math.pi * s2) / len(toy.radii)
    assert torch.allclose(toy.log_prob(x).exp(), density, rtol=1e-9, atol=1e-300)


def test_rings_radii_of_samples():
    toy = get_toy("rings")
    r = toy.sample(40_000, generator=gen(6)).double().norm(dim=1)
    ring = (r.round().clamp(1, 4) - 1).long()
    counts = torch.bincount(ring, minlength=4).double() / len(r)
    assert counts.numpy() == pytest.approx([0.25] * 4, abs=0.01)
    for k in range(4):
        assert r[ring == k].mean().item() == pytest.approx(k + 1, abs=0.02)


@pytest.mark.parametrize("name", ENERGIES)
def test_energy_log_prob_is_minus_energy_minus_log_normalizer(name):
    toy = get_toy(name)
    assert isinstance(toy, EnergyToy)
    z = torch.rand(100, 2, generator=gen(7), dtype=torch.float64) * 8 - 4
    assert torch.allclose(toy.log_prob(z), -toy.energy(z) - toy.log_normalizer, atol=1e-12)
    outside = torch.tensor([[4.5, 0.0], [0.0, -4.2], [10.0, 10.0]])
    assert torch.isneginf(toy.log_prob(outside)).all()
    with pytest.raises(FlowInputError, match=r"\(n, 2\)"):
        toy.energy(torch.zeros(3))


def test_energy_u1_matches_the_paper():
    # U1 at a point on the ring of radius 2 through a mode (2, 0): 0 - log(1 + e^{-(4/0.6)^2/2}).
    toy = get_toy("U1")
    z = torch.tensor([[2.0, 0.0], [0.0, 0.0]], dtype=torch.float64)
    expected = [-math.log(1 + math.exp(-0.5 * (4 / 0.6) ** 2)),
                0.5 * (2 / 0.4) ** 2 - math.log(2 * math.exp(-0.5 * (2 / 0.6) ** 2))]
    assert toy.energy(z).tolist() == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("name", ENERGIES)
def test_energy_samples_follow_the_density(name):
    # E_samples[log p] must match the grid's integral of p log p (minus the entropy), and the
    # sample mean the grid's mean: checks the inverse-CDF sampler against log_prob.
    toy = get_toy(name)
    x = toy.sample(50_000, generator=gen(8)).double()
    log_p = toy.log_prob(x)
    L, res = 4.0, 500
    h = 2 * L / res
    c = -L + h * (torch.arange(res, dtype=torch.float64) + 0.5)
    y, xg = torch.meshgrid(c, c, indexing="ij")
    pts = torch.stack([xg.flatten(), y.flatten()], dim=1)
    lp = toy.log_prob(pts)
    w = lp.exp() * h * h
    neg_entropy = float((w * lp).sum())
    mean = (w[:, None] * pts).sum(0)
    assert float(log_p.mean()) == pytest.approx(neg_entropy, abs=4 * float(log_p.std()) / math.sqrt(len(x)))
    assert (x.mean(0) - mean).abs().max() < 4 * float(x.std(0).max()) / math.sqrt(len(x))
