"""flowlib.metrics.energy_distance and modes_covered: exact values on point masses, zero for equal
distributions, a known value for two Gaussians, and mode dropping on the eight Gaussians."""

from __future__ import annotations

import math

import pytest
import torch

from flowlib import FlowInputError
from flowlib.data import EightGaussians
from flowlib.metrics import energy_distance, modes_covered


def test_energy_distance_of_point_masses_and_of_equal_samples():
    a, b = torch.zeros(50, 2), torch.full((40, 2), 3.0)
    # Point masses at 0 and (3, 3): 2 |a - b| - 0 - 0 = 2 * 3 sqrt(2).
    assert energy_distance(a, b) == pytest.approx(6 * math.sqrt(2))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3000, 2, generator=g), torch.randn(3000, 2, generator=g)
    assert abs(energy_distance(x, y)) < 0.01  # the same distribution: zero up to sampling noise


def test_energy_distance_of_two_gaussians_in_one_dimension():
    """For N(0, 1) and N(mu, 1) in 1D, E|X - Y| = 2 phi(mu / sqrt 2) sqrt 2 + mu (2 Phi(mu / sqrt 2) - 1)
    and E|X - X'| = 2 / sqrt(pi): the estimate lands within its noise of the closed form."""
    mu = 1.0
    s = mu / math.sqrt(2)
    phi, Phi = math.exp(-s * s / 2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(s / math.sqrt(2)))
    exact = 2 * (math.sqrt(2) * 2 * phi + mu * (2 * Phi - 1)) - 2 * (2 / math.sqrt(math.pi))
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4000, 1, generator=g), mu + torch.randn(4000, 1, generator=g)
    assert energy_distance(x, y, max_points=4000) == pytest.approx(exact, abs=0.03)
    with pytest.raises(FlowInputError, match="same dimension"):
        energy_distance(x, torch.zeros(5, 2))


def test_modes_covered_counts_the_modes_that_hold_enough_samples():
    toy = EightGaussians()
    samples = toy.sample(4000, generator=torch.Generator().manual_seed(0))
    assert modes_covered(samples, toy.centres) == 8
    nearest = torch.cdist(samples.double(), toy.centres.double()).argmin(1)
    dropped = samples[nearest >= 3]  # a "GAN" that lost three modes
    assert modes_covered(dropped, toy.centres) == 5
    assert modes_covered(dropped, toy.centres, share=0.5) == 0
    # Samples between the modes: nearest-centre counting credits them, a radius does not.
    between = torch.cat([samples[:2000], 0.5 * (toy.centres[1:3] + toy.centres[2:4]).float().repeat(1000, 1)])
    assert modes_covered(between, toy.centres) == 8
    assert modes_covered(between, toy.centres, radius=3 * toy.std) == 8  # half the samples still near modes
    assert modes_covered(between, toy.centres, share=0.1, radius=3 * toy.std) == 0  # 2000 / 8 / 4000 < 10%
    with pytest.raises(FlowInputError, match="centres"):
        modes_covered(samples, torch.zeros(8, 3))
