"""How good is a density model? Bits per dimension, exact KL on toys, the integral of a 2D density.

* :func:`bits_per_dim` turns a log-likelihood in nats into bits per dimension, the unit image
  papers report (with the log2(K) correction for K-level data scaled to [0, 1]).
* :func:`kl_divergence` estimates KL(p_data || p_model) by Monte Carlo with the data's exact
  log-density (the 2D toys of :mod:`flowlib.data.toys`): measured, not guessed.
* :func:`density_on_grid` and :func:`integrate_density_2d` evaluate a 2D density on a grid of
  cell centres (for heat maps) and integrate it by the midpoint rule: a correct flow's density
  integrates to 1 over a box that holds its mass, a buggy log-determinant usually does not.

This module sits above the layers and models and imports only :mod:`flowlib.core`; anything
with a ``log_prob`` method (a :class:`~flowlib.core.FlowModel`, a toy, a torch distribution)
or a plain callable ``x -> log p(x)`` can be measured.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from flowlib._checks import choice, integer, number, renamed
from flowlib._modules import evaluating, placement
from flowlib.core import FlowInputError

__all__ = [
    "Bounds",
    "LogProbLike",
    "bits_per_dim",
    "bits_per_dim_each",
    "energy_distance",
    "modes_covered",
    "mean_bits_per_dim",
    "box_bounds",
    "KLEstimate",
    "kl_divergence",
    "kl_divergence_estimate",
    "density_on_grid",
    "integrate_density_2d",
]

_LN2 = math.log(2.0)


@runtime_checkable
class _HasLogProb(Protocol):
    def log_prob(self, x: Tensor) -> Tensor: ...


@runtime_checkable
class _Sampler(Protocol):
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor: ...

    def log_prob(self, x: Tensor) -> Tensor: ...


LogProbLike = Callable[[Tensor], Tensor] | _HasLogProb


# -- bits per dimension ------------------------------------------------------------------------
def bits_per_dim(log_prob_nats: Tensor | float, num_dims: int, grey_levels: int | None = None,
                 reduction: str = "none", **deprecated: object) -> Tensor:
    """Bits per dimension of a log-density in nats: bpd = -log p(x) / (D ln 2) [+ log2 K].

    Args:
        log_prob_nats: log p(x) in nats, per sample (any shape, e.g. ``(batch,)``) or a number.
        num_dims: D, the number of scalar dimensions of one sample (e.g. 1 * 28 * 28 for MNIST).
        grey_levels: K, the number of discrete values per dimension of the original data (256
            for 8-bit images), or ``None`` when the density is on the data's own scale (old
            keyword: ``levels=``, deprecated).
        reduction: ``"none"`` (one value per sample, the input's shape) or ``"mean"``.

    The convention for discrete data. Images hold integers 0..K-1. Dequantisation adds noise
    u in [0, 1)^D and divides by K, so the model sees y = (x + u) / K in [0, 1]^D and returns
    a density p_Y on that unit cube. The same density on the integer scale, where each value
    owns a cell of width 1, is p(x + u) = p_Y(y) / K^D (change of variables, y = (x + u)/K),
    and by Jensen its log-likelihood lower-bounds the discrete model's log P(x) (Theis et al.,
    2016). So the bits per dimension of the discrete data are

        bpd = -log2 p_Y(y) / D + log2 K,

    i.e. pass ``grey_levels=K`` and add log2(K) per dimension (8 bits for K = 256). If your pipeline
    maps [0, 1] further (to [-1/2, 1/2], or through a logit), those maps are part of the model
    and their log-determinants belong in ``log_prob_nats``: this function only handles the
    final 1/K scaling. Without ``grey_levels``, bpd is simply -log2 p(x) / D. Every bits/dim
    figure of flowlib is computed here.

    >>> bits_per_dim(torch.tensor([0.0]), 784, grey_levels=256)
    tensor([8.])
    """
    grey_levels = renamed(deprecated, {"levels": "grey_levels"}, "bits_per_dim").get("grey_levels",
                                                                                      grey_levels)
    num_dims = integer(num_dims, "num_dims", "bits_per_dim")
    if grey_levels is not None:
        grey_levels = integer(grey_levels, "grey_levels (K, or None)", "bits_per_dim", minimum=2)
    choice(reduction, "reduction", ("none", "mean"), "bits_per_dim")
    lp = log_prob_nats if isinstance(log_prob_nats, Tensor) else torch.tensor(float(log_prob_nats))
    bpd = -lp / (num_dims * _LN2)
    if grey_levels is not None:
        bpd = bpd + math.log2(grey_levels)
    return bpd.mean() if reduction == "mean" else bpd


# -- KL(data || model) -------------------------------------------------------------------------
@dataclass(frozen=True)
class KLEstimate:
    """A Monte Carlo estimate of KL(p_data || p_model) in nats, with its standard error."""

    value: float
    stderr: float
    n: int

    def __float__(self) -> float:
        return self.value


def _need_images(x: object, who: str, verb: str) -> None:
    if not isinstance(x, Tensor) or x.dim() < 1 or x.shape[0] == 0:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise FlowInputError(f"{who}: no images to {verb} (got {got}); pass a batch of at least one image")


def bits_per_dim_each(model: nn.Module, x: Tensor, samples: int = 1, batch: int = 256,
                      context: Tensor | None = None) -> Tensor:
    """``model.bits_per_dim`` of every image of ``x``, shape (n,), float64: in batches of
    ``batch`` images, in evaluation mode, without gradients.

    ``samples`` > 1 importance-weights over that many dequantization draws per image (see
    :meth:`ImageFlowModel.bits_per_dim`); ``context`` (one row per image) for a conditional
    model. Every module's train/eval flag is restored afterwards.
    """
    batch = integer(batch, "batch", "bits_per_dim_each")
    _need_images(x, "bits_per_dim_each", "score")
    if context is not None and (not isinstance(context, Tensor) or context.shape[:1] != x.shape[:1]):
        got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
        raise FlowInputError(f"bits_per_dim_each: expected one context row per image ({x.shape[0]}), "
                             f"got {got}")

    def rows(i: int) -> dict:
        return {} if context is None else {"context": context[i:i + batch]}

    with torch.no_grad(), evaluating(model):
        return torch.cat([model.bits_per_dim(x[i:i + batch], samples=samples, **rows(i)).double()
                          for i in range(0, x.shape[0], batch)])


def mean_bits_per_dim(model: nn.Module, x: Tensor, samples: int = 1, batch: int = 256,
                      context: Tensor | None = None) -> float:
    """Mean of ``model.bits_per_dim`` over the images ``x`` (:func:`bits_per_dim_each`)."""
    _need_images(x, "mean_bits_per_dim", "average")  # checked here too, so the error names this call
    return float(bits_per_dim_each(model, x, samples=samples, batch=batch, context=context).mean())


def _log_prob_fn(model_or_fn: object, who: str) -> Callable[[Tensor], Tensor]:
    if isinstance(model_or_fn, _HasLogProb):
        return model_or_fn.log_prob
    if callable(model_or_fn):
        return model_or_fn
    raise FlowInputError(
        f"{who}: expected a model with a log_prob method or a callable x -> log p(x), "
        f"got {type(model_or_fn).__name__}"
    )


def kl_divergence_estimate(toy: _Sampler, model: LogProbLike, n: int = 100_000, batch: int = 10_000,
                           generator: torch.Generator | None = None) -> KLEstimate:
    """KL(p_data || p_model) = E_{x ~ p_data}[log p_data(x) - log p_model(x)], with its error.

    ``toy`` needs ``sample(n, generator)`` and an exact ``log_prob`` (every toy of
    :mod:`flowlib.data.toys`); ``model`` anything with ``log_prob`` or a callable. The ``n``
    samples are drawn in batches of ``batch``, moved to the model's device and dtype, and
    scored in eval mode under ``torch.no_grad`` (the model's modes are restored afterwards);
    the sums are kept in float64. The standard error is std(log-ratio) / sqrt(n).
    """
    who = "kl_divergence"
    n, batch = integer(n, "n", who), integer(batch, "batch", who)
    if not isinstance(toy, _Sampler):
        raise FlowInputError(f"{who}: the data must have sample(n, generator) and log_prob, "
                             f"got {type(toy).__name__}")
    log_q = _log_prob_fn(model, who)
    device, dtype = placement(model)
    total = total_sq = 0.0
    done = 0
    with evaluating(model):
        while done < n:
            m = min(batch, n - done)
            x = toy.sample(m, generator=generator)
            log_p = toy.log_prob(x.to(torch.float64)).to(device="cpu")
            lq = log_q(x.to(device=device, dtype=dtype))
            ratio = log_p - lq.to(device="cpu", dtype=torch.float64)
            total += float(ratio.sum())
            total_sq += float((ratio * ratio).sum())
            done += m
    mean = total / n
    if not math.isfinite(mean):  # the model gave some data zero density (or NaN)
        return KLEstimate(value=mean, stderr=math.inf if mean == math.inf else math.nan, n=n)
    var = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return KLEstimate(value=mean, stderr=math.sqrt(var / n), n=n)


def kl_divergence(toy: _Sampler, model: LogProbLike, n: int = 100_000, batch: int = 10_000,
                  generator: torch.Generator | None = None) -> float:
    """KL(p_data || p_model) in nats, a Monte Carlo mean over n samples of the toy.

    See :func:`kl_divergence_estimate` (which also returns the standard error). Zero only when
    the model equals the data density; ``inf`` when the model gives some data zero density.
    """
    return kl_divergence_estimate(toy, model, n=n, batch=batch, generator=generator).value


# -- densities on a grid -----------------------------------------------------------------------
Bounds = float | tuple[float, float] | tuple[tuple[float, float], tuple[float, float]]


def box_bounds(bounds: Bounds, who: str = "box_bounds") -> tuple[tuple[float, float], tuple[float, float]]:
    """((x_lo, x_hi), (y_lo, y_hi)) from L (the square [-L, L]^2), (lo, hi) or the pair of intervals.

    >>> box_bounds(2)
    ((-2.0, 2.0), (-2.0, 2.0))
    """
    try:
        if isinstance(bounds, (int, float)):
            box = ((-float(bounds), float(bounds)),) * 2
        elif isinstance(bounds[0], (int, float)):
            box = ((float(bounds[0]), float(bounds[1])),) * 2
        else:
            box = tuple((float(lo), float(hi)) for lo, hi in bounds)
    except (TypeError, IndexError, ValueError):
        box = ()
    if len(box) != 2 or any(not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) for lo, hi in box):
        raise FlowInputError(
            f"{who}: bounds must be L > 0, (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi)) with lo < hi, "
            f"got {bounds!r}"
        )
    return box  # type: ignore[return-value]


def density_on_grid(log_prob_fn: LogProbLike, bounds: Bounds, resolution: int = 200,
                    batch: int = 65_536, log: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The density p(x) at the centres of a ``resolution x resolution`` grid of cells.

    Returns ``(xs, ys, density)`` on the CPU: ``xs`` and ``ys`` (float64, shape
    ``(resolution,)``) are the cell centres, and ``density[i, j] = p(xs[j], ys[i])`` (rows are
    y, as ``plt.imshow(density, origin="lower", extent=(*x_bounds, *y_bounds))`` and
    ``pcolormesh(xs, ys, density)`` expect). ``log=True`` returns log p instead. ``bounds`` is
    L (the square [-L, L]^2), (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi)). Points are scored in
    batches, in eval mode under ``torch.no_grad``, on the model's device and dtype.
    """
    who = "density_on_grid"
    resolution = integer(resolution, "resolution", who, minimum=2)
    (x_lo, x_hi), (y_lo, y_hi) = box_bounds(bounds, who)
    fn = _log_prob_fn(log_prob_fn, who)
    device, dtype = placement(log_prob_fn)
    cells = torch.arange(resolution, dtype=torch.float64) + 0.5
    xs = x_lo + (x_hi - x_lo) / resolution * cells
    ys = y_lo + (y_hi - y_lo) / resolution * cells
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([grid_x.flatten(), grid_y.flatten()], dim=1)
    with evaluating(log_prob_fn):
        values = [fn(chunk.to(device=device, dtype=dtype)).to(device="cpu", dtype=torch.float64)
                  for chunk in points.split(batch)]
    log_p = torch.cat(values).reshape(resolution, resolution)
    return xs, ys, (log_p if log else log_p.exp())


def integrate_density_2d(model_or_log_prob_fn: LogProbLike, bounds: Bounds | None = None,
                         resolution: int = 400, batch: int = 65_536) -> float:
    """The integral of p over a box by the midpoint rule: sum of p(cell centre) * cell area.

    A normalised density gives 1 when the box holds its mass and the grid resolves its
    features (cells several times smaller than its narrowest bump). ``bounds=None`` takes the
    ``bounds`` attribute of the argument (every toy has one); a model has none, so pass e.g.
    ``bounds=6.0`` for the square [-6, 6]^2.
    """
    who = "integrate_density_2d"
    if bounds is None:
        bounds = getattr(model_or_log_prob_fn, "bounds", None)
        if bounds is None:
            raise FlowInputError(f"{who}: pass bounds=L or (lo, hi) for a box that holds the density's mass")
    (x_lo, x_hi), (y_lo, y_hi) = box_bounds(bounds, who)
    _, _, density = density_on_grid(model_or_log_prob_fn, bounds, resolution=resolution, batch=batch)
    cell_area = (x_hi - x_lo) * (y_hi - y_lo) / resolution**2
    return float(density.sum() * cell_area)


def energy_distance(x: Tensor, y: Tensor, max_points: int = 2000,
                    generator: torch.Generator | None = None) -> float:
    """The energy distance between the samples ``x`` (n, d) and ``y`` (m, d) (Szekely & Rizzo, 2013):

        D^2 = 2 E|X - Y| - E|X - X'| - E|Y - Y'|,

    zero exactly when the two distributions are equal, and needing only samples, so it scores
    every generative family alike (a GAN has no density). The within-set terms leave out the
    pairs of a point with itself (unbiased U-statistics); each set is subsampled to at most
    ``max_points`` rows (drawn with ``generator``) to bound the n x m distance matrix.

    >>> a = torch.zeros(5, 1); b = torch.ones(5, 1)
    >>> energy_distance(a, b), energy_distance(a, a)
    (2.0, 0.0)
    """
    who = "energy_distance"
    for name, s in (("x", x), ("y", y)):
        if not isinstance(s, Tensor) or s.dim() != 2 or s.shape[0] < 2:
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise FlowInputError(f"{who}: expected {name} of shape (n, d) with n >= 2, got {got}")
    if x.shape[1] != y.shape[1]:
        raise FlowInputError(f"{who}: x and y must have the same dimension, got {x.shape[1]} and "
                             f"{y.shape[1]}")
    max_points = integer(max_points, "max_points", who, minimum=2)
    x, y = (s[torch.randperm(s.shape[0], generator=generator)[:max_points]] if s.shape[0] > max_points else s
            for s in (x.double(), y.double()))

    def distance_sum(a: Tensor, b: Tensor) -> float:
        # In blocks of 1024 rows: the whole n x m matrix of 5000 x 5000 points would be 200 MB.
        return sum(float(torch.cdist(block, b).sum()) for block in a.split(1024))

    n, m = x.shape[0], y.shape[0]
    return (2 * distance_sum(x, y) / (n * m) - distance_sum(x, x) / (n * (n - 1))
            - distance_sum(y, y) / (m * (m - 1)))


def modes_covered(samples: Tensor, centres: Tensor, share: float = 0.05, radius: float | None = None) -> int:
    """How many of the modes ``centres`` (k, d) hold at least ``share`` of the samples (n, d), each
    sample counted for its nearest centre: the mode-coverage measure of the eight Gaussians (a
    model that drops modes, as GANs do, covers fewer than k). ``radius``: a sample farther than
    this from every centre counts for none (still in the total), e.g. 3 standard deviations of a
    mode, as Srivastava et al. (2017) count high-quality samples."""
    who = "modes_covered"
    if not isinstance(samples, Tensor) or samples.dim() != 2 or samples.shape[0] == 0:
        raise FlowInputError(f"{who}: expected samples of shape (n, d), got "
                             f"{getattr(samples, 'shape', samples)}")
    if not isinstance(centres, Tensor) or centres.dim() != 2 or centres.shape[1] != samples.shape[1]:
        raise FlowInputError(f"{who}: expected centres of shape (k, {samples.shape[1]}), got "
                             f"{getattr(centres, 'shape', centres)}")
    share = number(share, "share", who, minimum=0.0, maximum=1.0)
    distance, nearest = torch.cdist(samples.double(), centres.double().to(samples.device)).min(1)
    if radius is not None:
        nearest = nearest[distance <= number(radius, "radius", who, minimum=0.0, strict=True)]
    counts = torch.bincount(nearest, minlength=centres.shape[0]).double()
    return int((counts / samples.shape[0] >= share).sum())
