"""Posteriors of a parameter on a grid, the Gaussian likelihood of a summary, and coverage tests.

A likelihood p(x | theta), from a flow conditioned on theta or from a closed form, turns into a
posterior by Bayes' rule, p(theta | x) ∝ p(x | theta) p(theta). For one parameter the simplest
honest way is a grid: evaluate log p(x | theta_g) at G values theta_g, add the log-prior, and
normalise over the grid (:func:`grid_posterior`). Intervals come from the posterior's cumulative
distribution (:func:`credible_interval`), and a **coverage test** (:func:`coverage`) checks the
whole machine: when the truths are drawn from the prior and the likelihood is right, the central
68% interval contains the truth in 68% of the cases, whatever the interval's width (Cook,
Gelman & Rubin, 2006; Talts et al., 2018). A posterior that is too narrow covers less often.

The classical alternative to a field-level likelihood compresses each map to a summary t (a
binned power spectrum) and assumes t | theta Gaussian, with a mean mu(theta) and a covariance
C(theta) estimated from simulations (:func:`gaussian_log_likelihood`). The inverse of a
covariance estimated from N simulations of a d-dimensional summary is biased high; Hartlap,
Simon & Schneider (2007) rescale it by (N - d - 2) / (N - 1).

>>> grid = torch.linspace(-3, 3, 601)
>>> posterior = grid_posterior(-0.5 * grid**2)  # a standard normal "likelihood", flat prior
>>> low, high = credible_interval(grid, posterior, 0.68)
>>> round(float(low), 2), round(float(high), 2)
(-0.99, 0.99)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from flowlib._checks import FlowInputError, integer, number

__all__ = ["grid_posterior", "credible_interval", "posterior_moments", "coverage", "gaussian_log_likelihood",
           "conditional_log_likelihood"]


def _rows(values: Tensor, who: str, name: str) -> Tensor:
    if not isinstance(values, Tensor) or values.dim() not in (1, 2) or values.shape[-1] < 2:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise FlowInputError(f"{who}: expected {name} of shape (G,) or (n, G) with G >= 2 grid values, "
                             f"got {got}")
    return values.to(torch.float64)


def _grid(grid: Tensor, size: int, who: str) -> Tensor:
    grid = torch.as_tensor(grid, dtype=torch.float64)
    if grid.dim() != 1 or grid.numel() != size or bool((grid[1:] <= grid[:-1]).any()):
        raise FlowInputError(f"{who}: the grid must be {size} increasing values (one per column of the "
                             f"posterior), got shape {tuple(grid.shape)}")
    return grid


def grid_posterior(log_likelihood: Tensor, log_prior: Tensor | None = None) -> Tensor:
    """p(theta_g | x) = exp(l_g + log pi_g) / sum_h exp(l_h + log pi_h): probabilities over the last axis.

    ``log_likelihood``: (G,) or (n, G), log p(x | theta_g) for each grid value (and observation);
    ``log_prior``: (G,) log-prior masses (default: flat over the grid). A log-likelihood of -inf
    (outside the support) gets probability 0; a row with no finite value is refused.

    >>> grid_posterior(torch.tensor([0.0, 0.0, -1e9])).tolist()
    [0.5, 0.5, 0.0]
    """
    who = "grid_posterior"
    log_post = _rows(log_likelihood, who, "log_likelihood")
    if log_prior is not None:
        log_prior = torch.as_tensor(log_prior, dtype=torch.float64)
        if log_prior.shape != log_post.shape[-1:]:
            raise FlowInputError(f"{who}: log_prior must have one value per grid point, shape "
                                 f"({log_post.shape[-1]},), got {tuple(log_prior.shape)}")
        log_post = log_post + log_prior
    if bool(torch.isnan(log_post).any()) or not bool(torch.isfinite(log_post).any(-1).all()):
        raise FlowInputError(f"{who}: every row needs a finite log-likelihood somewhere and no NaN")
    return torch.softmax(log_post, dim=-1)


def credible_interval(grid: Tensor, posterior: Tensor, level: float = 0.68) -> tuple[Tensor, Tensor]:
    """The central interval holding ``level`` of the posterior mass: (low, high), each () or (n,).

    Each grid value's mass is spread evenly over its cell (from the midpoint with the value
    before to the midpoint with the value after; the outer cells are as wide as their neighbours),
    so the cumulative distribution F is piecewise linear, and low and high solve
    F = (1 - level) / 2 and F = (1 + level) / 2 exactly. On a grid fine enough for the posterior
    (many points across its width) this is the continuous posterior's central interval.

    >>> [float(v) for v in credible_interval(torch.arange(5.0), torch.full((5,), 0.2), 0.6)]
    [0.5, 3.5]
    """
    who = "credible_interval"
    posterior = _rows(posterior, who, "posterior")
    grid = _grid(grid, posterior.shape[-1], who)
    level = number(level, "level", who, minimum=0.0, strict=True)
    if level >= 1:
        raise FlowInputError(f"{who}: level must be below 1 (a fraction such as 0.68), got {level}")
    mass = posterior / posterior.sum(-1, keepdim=True)
    cdf = torch.cat([torch.zeros_like(mass[..., :1]), mass.cumsum(-1)], dim=-1)  # F at the cell edges
    middle = (grid[1:] + grid[:-1]) / 2
    edges = torch.cat([grid[:1] - (middle[0] - grid[0]), middle, grid[-1:] + (grid[-1] - middle[-1])])

    def solve(target: float) -> Tensor:
        # The first edge where F reaches the target, then a straight line from the edge before.
        j = torch.searchsorted(cdf.contiguous(), torch.full((*cdf.shape[:-1], 1), target, dtype=cdf.dtype))
        j = j.clamp(1, edges.numel() - 1)
        f_i, f_j = cdf.gather(-1, j - 1), cdf.gather(-1, j)
        t = torch.where(f_j > f_i, (target - f_i) / (f_j - f_i), torch.zeros_like(f_i)).clamp(0, 1)
        return (edges[j - 1] + t * (edges[j] - edges[j - 1]))[..., 0]

    return solve((1 - level) / 2), solve((1 + level) / 2)


def posterior_moments(grid: Tensor, posterior: Tensor) -> tuple[Tensor, Tensor]:
    """The posterior mean and standard deviation on the grid: (mean, std), each () or (n,).

    >>> mean, std = posterior_moments(torch.tensor([0.0, 1.0]), torch.tensor([0.5, 0.5]))
    >>> float(mean), float(std)
    (0.5, 0.5)
    """
    posterior = _rows(posterior, "posterior_moments", "posterior")
    grid = _grid(grid, posterior.shape[-1], "posterior_moments")
    mean = (posterior * grid).sum(-1)
    return mean, ((posterior * (grid - mean[..., None]) ** 2).sum(-1)).sqrt()


Interval = Callable[[Tensor, Tensor, float], tuple[Tensor, Tensor]]


def coverage(grid: Tensor, posterior: Tensor, truth: Tensor, levels: Sequence[float] = (0.68, 0.95),
             interval: Interval | None = None) -> dict[float, float]:
    """The share of rows whose central ``level`` interval contains its true value, for each level.

    ``posterior``: (n, G), one posterior per observation; ``truth``: (n,), the parameter each
    observation was simulated with (drawn from the prior, for the test to mean anything). For
    a right posterior the share is ``level`` up to the binomial error sqrt(level (1 - level) / n).
    ``interval``: the function giving the intervals, ``interval(grid, posterior, level) -> (low,
    high)`` (default :func:`credible_interval`; a lecture passes a student's own).

    >>> grid = torch.linspace(-4, 4, 401)
    >>> truth = torch.randn(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    >>> x = truth + torch.randn(2000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    >>> post = grid_posterior(-0.5 * (x[:, None] - grid) ** 2 - 0.5 * grid**2)  # N(0, 1) prior
    >>> c = coverage(grid, post, truth)  # binomial errors 0.010 and 0.005
    >>> abs(c[0.68] - 0.68) < 0.03, abs(c[0.95] - 0.95) < 0.015
    (True, True)
    """
    who = "coverage"
    posterior = _rows(posterior, who, "posterior")
    truth = torch.as_tensor(truth, dtype=torch.float64)
    if posterior.dim() != 2 or truth.shape != posterior.shape[:1]:
        raise FlowInputError(f"{who}: expected posteriors (n, G) and n true values, got "
                             f"{tuple(posterior.shape)} "
                             f"and {tuple(truth.shape)}")
    interval = credible_interval if interval is None else interval
    out = {}
    for level in levels:
        low, high = interval(grid, posterior, level)
        out[level] = float(((truth >= low) & (truth <= high)).double().mean())
    return out


def gaussian_log_likelihood(summaries: Tensor, mean: Tensor, covariance: Tensor,
                            simulations: int | None = None) -> Tensor:
    """log N(t_i; mu_g, C_g) for every summary t_i (n, d) and grid value g: shape (n, G).

    ``mean``: (G, d), mu(theta_g); ``covariance``: (G, d, d) or one (d, d) for all. With
    ``simulations`` = N, the number of simulations each covariance was estimated from, the
    inverse covariance is multiplied by Hartlap's factor (N - d - 2) / (N - 1) (Hartlap et al.,
    2007), which makes it unbiased for Gaussian summaries.

    >>> t = torch.zeros(1, 2)
    >>> ll = gaussian_log_likelihood(t, torch.zeros(1, 2), torch.eye(2))
    >>> round(float(ll), 4)  # -log(2 pi)
    -1.8379
    """
    who = "gaussian_log_likelihood"
    t = torch.as_tensor(summaries, dtype=torch.float64)
    mu = torch.as_tensor(mean, dtype=torch.float64)
    cov = torch.as_tensor(covariance, dtype=torch.float64)
    if t.dim() != 2 or mu.dim() != 2 or mu.shape[1] != t.shape[1]:
        raise FlowInputError(f"{who}: expected summaries (n, d) and means (G, d), got {tuple(t.shape)} and "
                             f"{tuple(mu.shape)}")
    d = t.shape[1]
    cov = cov.expand(mu.shape[0], d, d) if cov.dim() == 2 else cov
    if cov.shape != (mu.shape[0], d, d):
        raise FlowInputError(f"{who}: expected covariances ({mu.shape[0]}, {d}, {d}) or ({d}, {d}), got "
                             f"{tuple(cov.shape)}")
    factor = 1.0
    if simulations is not None:
        n_sims = integer(simulations, "simulations", who, minimum=d + 3)
        factor = (n_sims - d - 2) / (n_sims - 1)
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        raise FlowInputError(f"{who}: a covariance is not positive definite (grid values "
                             f"{(info != 0).nonzero().flatten().tolist()[:5]})")
    diff = (t[:, None, :] - mu[None]).transpose(0, 1)  # (G, n, d)
    white = torch.linalg.solve_triangular(chol, diff.transpose(1, 2), upper=False)  # (G, d, n)
    quad = factor * (white**2).sum(1)  # (G, n)
    log_det = 2 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1) - d * math.log(factor)
    return (-0.5 * (quad + log_det[:, None] + d * math.log(2 * math.pi))).T


def conditional_log_likelihood(model: torch.nn.Module, x: Tensor, contexts: Tensor,
                               batch: int = 1024) -> Tensor:
    """log p(x_i | c_g) of a conditional model for every observation x_i and context c_g: shape (n, G).

    ``model``: anything with ``log_prob(x, context=c)`` (a conditional
    :class:`~flowlib.core.FlowModel`), in evaluation mode; ``x``: (n, ...) observations;
    ``contexts``: (G, k), the grid of contexts (the model's own rescaling, e.g.
    :func:`flowlib.field_models.theta_context`). Every pair is scored once, ``batch`` pairs at a
    time, without gradients; the result is float64 for the posterior's sums.

    >>> class Shift(torch.nn.Module):  # p(x | c) = N(x; c, 1) in one dimension
    ...     def log_prob(self, x, context):
    ...         return -0.5 * (x[:, 0] - context[:, 0]) ** 2 - 0.5 * math.log(2 * math.pi)
    >>> grid = torch.tensor([[0.0], [1.0], [2.0]])
    >>> conditional_log_likelihood(Shift().eval(), torch.tensor([[0.0], [1.0]]), grid).argmax(1).tolist()
    [0, 1]
    """
    who = "conditional_log_likelihood"
    if not callable(getattr(model, "log_prob", None)):
        raise FlowInputError(f"{who}: expected a model with log_prob(x, context=...), got "
                             f"{type(model).__name__}")
    if getattr(model, "training", False):
        raise FlowInputError(f"{who}: the model is in training mode (ActNorm or dropout would change it); "
                             f"call model.eval() first")
    if not isinstance(x, Tensor) or not isinstance(contexts, Tensor) or contexts.dim() != 2 or x.dim() < 2:
        raise FlowInputError(f"{who}: expected observations (n, ...) and contexts (G, k) as tensors")
    batch = integer(batch, "batch", who)
    n, g = x.shape[0], contexts.shape[0]
    pairs = torch.arange(n * g)
    out = torch.empty(n * g, dtype=torch.float64)
    with torch.no_grad():
        for part in pairs.split(batch):
            i, j = part // g, part % g
            out[part] = model.log_prob(x[i], context=contexts[j]).to(torch.float64)
    return out.reshape(n, g)
