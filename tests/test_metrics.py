"""Metrics: bits per dimension, Monte Carlo KL against the toys' exact densities, grid integrals."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import flowlib.metrics as metrics
from flowlib import FlowInputError, StandardNormal
from flowlib.data import get_toy
from flowlib.metrics import (
    KLEstimate,
    bits_per_dim,
    density_on_grid,
    integrate_density_2d,
    kl_divergence,
    kl_divergence_estimate,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class ToyAsModel(nn.Module):
    """A toy's exact density dressed as a model (a module with one parameter and log_prob)."""

    def __init__(self, toy, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.toy = toy
        self.anchor = nn.Parameter(torch.zeros((), dtype=dtype))
        self.seen: list[torch.dtype] = []

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.dtype)
        return self.toy.log_prob(x) + 0 * self.anchor


# -- bits per dimension ------------------------------------------------------------------------
def test_bits_per_dim_hand_computed():
    # D = 4 dimensions, log p = -8 ln 2 nats = -8 bits -> 2 bits per dimension.
    lp = torch.tensor([-8 * math.log(2), -4 * math.log(2)])
    assert bits_per_dim(lp, 4).tolist() == pytest.approx([2.0, 1.0])
    assert bits_per_dim(lp, 4, reduction="mean").item() == pytest.approx(1.5)
    # 8-bit data scaled to [0, 1]: add log2(256) = 8 bits per dimension.
    assert bits_per_dim(lp, 4, grey_levels=256).tolist() == pytest.approx([10.0, 9.0])
    assert bits_per_dim(-8 * math.log(2), 4).item() == pytest.approx(2.0)


def test_bits_per_dim_of_a_uniform_discrete_model_is_log2_levels():
    # The uniform density on [0, 1]^D has log p = 0; as a model of K-level data it spends
    # exactly log2 K bits on each dimension, like a uniform distribution over the K levels.
    assert bits_per_dim(torch.zeros(3), 784, grey_levels=256).tolist() == pytest.approx([8.0] * 3)
    assert bits_per_dim(torch.zeros(1), 10, grey_levels=2).item() == pytest.approx(1.0)


def test_bits_per_dim_bad_arguments():
    for dims in (0, -1, 2.0, True):
        with pytest.raises(FlowInputError, match="num_dims"):
            bits_per_dim(torch.zeros(2), dims)
    for grey_levels in (1, 0, 255.5):
        with pytest.raises(FlowInputError, match="grey_levels"):
            bits_per_dim(torch.zeros(2), 3, grey_levels=grey_levels)
    with pytest.raises(FlowInputError, match="reduction"):
        bits_per_dim(torch.zeros(2), 3, reduction="sum")


# -- KL(data || model) -------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["eight_gaussians", "checkerboard", "rings", "U2"])
def test_kl_of_a_toy_against_itself_is_zero(name):
    toy = get_toy(name)
    model = ToyAsModel(toy)
    est = kl_divergence_estimate(toy, model, n=20_000, batch=7_000, generator=gen(1))
    assert isinstance(est, KLEstimate) and est.n == 20_000
    # Only float32 vs float64 rounding separates the two log-densities.
    assert abs(est.value) < 1e-5
    assert kl_divergence(toy, toy, n=5_000, generator=gen(1)) == pytest.approx(0.0, abs=1e-5)


def test_kl_of_a_standard_normal_against_eight_gaussians():
    toy = get_toy("eight_gaussians")
    normal = StandardNormal(2)
    est = kl_divergence_estimate(toy, normal, n=40_000, generator=gen(2))
    # E[-log N(x)] = log(2 pi) + E|x|^2 / 2 = log(2 pi) + (16 + 2 * 0.25) / 2; the mixture's
    # components barely overlap, so its entropy is log 8 + log(2 pi e 0.5^2) to ~1e-4.
    cross_entropy = math.log(2 * math.pi) + (16 + 0.5) / 2
    entropy = math.log(8) + math.log(2 * math.pi * math.e * 0.25)
    assert est.value > 5
    assert est.value == pytest.approx(cross_entropy - entropy, abs=5 * est.stderr + 1e-3)
    assert 0 < est.stderr < 0.05
    assert float(est) == est.value


def test_kl_is_deterministic_with_a_generator_and_uses_the_model_dtype():
    toy = get_toy("two_moons")
    model = ToyAsModel(toy, dtype=torch.float64)
    a = kl_divergence(toy, StandardNormal(2), n=3_000, generator=gen(5))
    b = kl_divergence(toy, StandardNormal(2), n=3_000, generator=gen(5))
    assert a == b
    kl_divergence(toy, model, n=1_000, generator=gen(5))
    assert set(model.seen) == {torch.float64}


def test_kl_is_infinite_where_the_model_has_no_mass():
    # The checkerboard has zero density on half the data of the eight Gaussians.
    kl = kl_divergence(get_toy("eight_gaussians"), get_toy("checkerboard"), n=2_000, generator=gen(0))
    assert kl == math.inf


def test_kl_accepts_a_callable_and_rejects_nonsense():
    toy = get_toy("eight_gaussians")
    kl = kl_divergence(toy, toy.log_prob, n=2_000, generator=gen(0))
    assert kl == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(FlowInputError, match="log_prob"):
        kl_divergence(toy, 3.0, n=10)
    with pytest.raises(FlowInputError, match="n must be"):
        kl_divergence(toy, toy, n=0)
    with pytest.raises(FlowInputError, match="batch must be"):
        kl_divergence(toy, toy, n=10, batch=-1)
    with pytest.raises(FlowInputError, match="sample"):
        kl_divergence(toy.log_prob, toy, n=10)


def test_metrics_leave_the_model_mode_alone():
    model = ToyAsModel(get_toy("rings"))
    model.train()
    kl_divergence(model.toy, model, n=100, generator=gen(0))
    density_on_grid(model, 5.0, resolution=8)
    assert model.training
    model.eval()
    integrate_density_2d(model.log_prob, bounds=5.0, resolution=8)
    assert not model.training


# -- densities on a grid -----------------------------------------------------------------------
def test_integral_of_a_standard_normal_is_one():
    normal = StandardNormal(2)
    assert integrate_density_2d(normal, bounds=6.0, resolution=200) == pytest.approx(1.0, abs=1e-3)
    # A box that cuts off mass says so: P(|z1| < 1, |z2| < 1) = erf(1/sqrt 2)^2.
    inner = integrate_density_2d(normal.log_prob, bounds=(-1.0, 1.0), resolution=200)
    assert inner == pytest.approx(math.erf(1 / math.sqrt(2)) ** 2, abs=1e-4)


def test_integral_uses_a_toys_own_bounds():
    assert integrate_density_2d(get_toy("rings"), resolution=300) == pytest.approx(1.0, abs=1e-3)
    with pytest.raises(FlowInputError, match="bounds"):
        integrate_density_2d(StandardNormal(2))


def test_density_on_grid_layout():
    # An asymmetric density: rows must be y and columns x, on cell centres.
    def log_prob(x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] + 10 * x[:, 1]

    xs, ys, density = density_on_grid(log_prob, ((0.0, 1.0), (-2.0, 2.0)), resolution=4)
    assert xs.tolist() == pytest.approx([0.125, 0.375, 0.625, 0.875])
    assert ys.tolist() == pytest.approx([-1.5, -0.5, 0.5, 1.5])
    assert density.shape == (4, 4) and density.dtype == torch.float64
    assert density[2, 1].item() == pytest.approx(math.exp(xs[1].item() + 10 * ys[2].item()), rel=1e-6)
    _, _, log_density = density_on_grid(log_prob, 1.0, resolution=3, log=True)
    assert log_density[0, 2].item() == pytest.approx(2 / 3 + 10 * (-2 / 3), rel=1e-6)


def test_density_on_grid_bad_arguments():
    normal = StandardNormal(2)
    for bounds in ((1.0, -1.0), -3.0, "wide", ((0.0, 1.0),)):
        with pytest.raises(FlowInputError, match="bounds"):
            density_on_grid(normal, bounds)
    with pytest.raises(FlowInputError, match="resolution"):
        density_on_grid(normal, 3.0, resolution=1)


def test_metrics_import_only_the_core():
    # The data path runs one way: metrics may import flowlib.core and the shared helpers below
    # every module (_checks, _modules), never a higher layer.
    tree = ast.parse(Path(metrics.__file__).read_text())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
    flowlib_modules = {m for m in imported if m and m.startswith("flowlib")}
    assert flowlib_modules <= {"flowlib.core", "flowlib._checks", "flowlib._modules"}
