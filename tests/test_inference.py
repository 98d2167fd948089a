"""Posteriors on a grid, intervals, coverage and the Gaussian likelihood of a summary
(flowlib.inference), each against a case with a closed form."""

from __future__ import annotations

import math

import pytest
import torch

from flowlib import FlowInputError
from flowlib.inference import (
    coverage,
    credible_interval,
    gaussian_log_likelihood,
    grid_posterior,
    posterior_moments,
)

GRID = torch.linspace(-6.0, 6.0, 1201, dtype=torch.float64)


def test_a_gaussian_posterior_has_its_closed_form_interval_and_moments():
    mu, sigma = 0.7, 0.9
    post = grid_posterior(-0.5 * ((GRID - mu) / sigma) ** 2)
    assert torch.allclose(post.sum(), torch.tensor(1.0, dtype=torch.float64))
    mean, std = posterior_moments(GRID, post)
    assert abs(float(mean) - mu) < 1e-6 and abs(float(std) - sigma) < 1e-4
    for level in (0.68, 0.95):
        z = math.sqrt(2) * torch.erfinv(torch.tensor(level, dtype=torch.float64))
        low, high = credible_interval(GRID, post, level)
        assert abs(float(low) - (mu - sigma * z)) < 2e-3 and abs(float(high) - (mu + sigma * z)) < 2e-3


def test_the_prior_enters_and_rows_are_independent():
    log_like = torch.stack([-0.5 * (GRID - 1) ** 2, -0.5 * (GRID + 2) ** 2])
    post = grid_posterior(log_like, log_prior=-0.5 * GRID**2)
    # Normal likelihood N(x; theta, 1) times a N(0, 1) prior: the posterior is N(x / 2, 1 / 2).
    mean, std = posterior_moments(GRID, post)
    assert torch.allclose(mean, torch.tensor([0.5, -1.0], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(std, torch.full((2,), math.sqrt(0.5), dtype=torch.float64), atol=1e-4)
    low, high = credible_interval(GRID, post, 0.68)
    one_low, one_high = credible_interval(GRID, post[1], 0.68)
    assert float(low[1]) == float(one_low) and float(high[1]) == float(one_high)


def test_minus_infinity_has_no_mass_and_bad_input_is_refused_by_name():
    post = grid_posterior(torch.tensor([0.0, -math.inf, 0.0]))
    assert post.tolist() == [0.5, 0.0, 0.5]
    with pytest.raises(FlowInputError, match="grid_posterior: every row needs a finite"):
        grid_posterior(torch.full((2, 3), -math.inf))
    with pytest.raises(FlowInputError, match="grid_posterior: log_prior must have one value per grid point"):
        grid_posterior(torch.zeros(3), log_prior=torch.zeros(4))
    with pytest.raises(FlowInputError, match="credible_interval: the grid must be 3 increasing values"):
        credible_interval(torch.tensor([0.0, 2.0, 1.0]), torch.ones(3) / 3)
    with pytest.raises(FlowInputError, match="credible_interval: level must be below 1"):
        credible_interval(torch.arange(3.0), torch.ones(3) / 3, 1.5)
    with pytest.raises(FlowInputError, match="coverage: expected posteriors"):
        coverage(torch.arange(3.0), torch.ones(4, 3) / 3, torch.zeros(5))


def test_coverage_is_nominal_for_the_right_posterior_and_low_for_an_overconfident_one():
    g = torch.Generator().manual_seed(0)
    truth = torch.randn(4000, generator=g, dtype=torch.float64)
    x = truth + torch.randn(4000, generator=g, dtype=torch.float64)
    right = grid_posterior(-0.5 * (x[:, None] - GRID) ** 2 - 0.5 * GRID**2)
    narrow = grid_posterior(-2.0 * (x[:, None] - GRID) ** 2 - 0.5 * GRID**2)  # likelihood variance 1/4
    good, bad = coverage(GRID, right, truth), coverage(GRID, narrow, truth)
    for level in (0.68, 0.95):
        spread = math.sqrt(level * (1 - level) / 4000)
        assert abs(good[level] - level) < 3 * spread
        assert bad[level] < level - 5 * spread


def test_the_gaussian_likelihood_matches_torch_and_hartlap_scales_the_precision():
    g = torch.Generator().manual_seed(1)
    d = 3
    a = torch.randn(2, d, d, generator=g, dtype=torch.float64)
    cov = a @ a.transpose(1, 2) + torch.eye(d, dtype=torch.float64)
    mean = torch.randn(2, d, generator=g, dtype=torch.float64)
    t = torch.randn(5, d, generator=g, dtype=torch.float64)
    got = gaussian_log_likelihood(t, mean, cov)
    want = torch.stack([torch.distributions.MultivariateNormal(mean[j], cov[j]).log_prob(t)
                        for j in range(2)], 1)
    assert got.shape == (5, 2) and torch.allclose(got, want, atol=1e-10)
    n_sims = 20
    factor = (n_sims - d - 2) / (n_sims - 1)
    hartlap = gaussian_log_likelihood(t, mean, cov, simulations=n_sims)
    want = torch.stack([torch.distributions.MultivariateNormal(mean[j], cov[j] / factor).log_prob(t)
                        for j in range(2)], 1)
    assert torch.allclose(hartlap, want, atol=1e-10)
    shared = gaussian_log_likelihood(t, mean, cov[0])
    assert torch.allclose(shared[:, 0], got[:, 0])
    with pytest.raises(FlowInputError, match="gaussian_log_likelihood: a covariance is not positive"):
        gaussian_log_likelihood(t, mean, -cov)
    with pytest.raises(FlowInputError, match="simulations"):
        gaussian_log_likelihood(t, mean, cov, simulations=d + 2)


def test_conditional_log_likelihood_scores_every_pair_once_and_refuses_a_training_model():
    from flowlib.inference import conditional_log_likelihood
    from flowlib.models import realnvp

    torch.manual_seed(0)
    model = realnvp(2, couplings=2, hidden=8, context_shape=(1,)).eval()
    x, contexts = torch.randn(5, 2), torch.linspace(-1, 1, 3)[:, None]
    got = conditional_log_likelihood(model, x, contexts, batch=4)  # pairs split across batches
    with torch.no_grad():
        want = torch.stack([model.log_prob(x, context=c.expand(5, 1)) for c in contexts], 1)
    assert got.shape == (5, 3) and got.dtype == torch.float64
    assert torch.allclose(got, want.double(), atol=1e-6)
    with pytest.raises(FlowInputError, match="conditional_log_likelihood: the model is in training mode"):
        conditional_log_likelihood(model.train(), x, contexts)


def test_coverage_takes_the_interval_function_it_is_given():
    truth = torch.zeros(4, dtype=torch.float64)
    post = grid_posterior(-0.5 * (GRID[None] - torch.tensor([[0.0], [3.0], [0.5], [-4.0]])) ** 2)
    assert coverage(GRID, post, truth, (0.68,)) == {0.68: 0.5}  # the truth inside for rows 0 and 2

    def everything(grid, posterior, level):
        return torch.full(posterior.shape[:1], -10.0), torch.full(posterior.shape[:1], 10.0)

    assert coverage(GRID, post, truth, (0.68,), interval=everything) == {0.68: 1.0}
