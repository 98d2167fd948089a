"""Matplotlib pictures used across the lectures: densities, samples, flows layer by layer, images.

Every helper draws into ``ax`` when given one (or makes a new figure) and returns what it drew
on: an ``Axes`` for a single panel, a ``Figure`` for several. Nothing here calls ``plt.show()``;
the notebook displays the figure. Plots only read models: a "model" is anything with a
``log_prob`` method (a :class:`~flowlib.core.FlowModel`, a toy of :mod:`flowlib.data.toys`, a
``torch.distributions`` object) or a plain callable ``x -> log p(x)``.

* :func:`plot_density_2d`, :func:`plot_samples_2d`, :func:`compare_densities`: heat maps of
  p(x) on a grid (via :func:`flowlib.metrics.density_on_grid`) and scatter plots.
* :func:`plot_density_1d`: a 1D density, optionally over a histogram of samples.
* :func:`plot_flow_steps`: samples after each layer of a :class:`~flowlib.core.Compose`.
* :func:`tile_images`: a batch of images ``(N, C, H, W)`` tiled into one array (the one tiler of
  flowlib: :func:`image_grid` and the image widgets of :mod:`flowlib.widgets` show its output).
* :func:`image_grid`: the same tiles drawn on an ``Axes``.
* :func:`plot_training_curve`: the loss per step and the validation points of a training run
  (a :class:`~flowlib.train.FitResult`, a dict or a list), the one training-curve plot.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from flowlib._checks import FlowInputError, choice, integer
from flowlib._modules import evaluating, placement
from flowlib.core import Compose, Flow
from flowlib.metrics import Bounds, LogProbLike, box_bounds, density_on_grid

__all__ = [
    "plot_density_2d",
    "plot_samples_2d",
    "plot_density_1d",
    "compare_densities",
    "plot_flow_steps",
    "tile_images",
    "image_grid",
    "plot_training_curve",
]


def _axes(ax: Axes | None, figsize: tuple[float, float] = (4.0, 4.0)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    return ax


def _numpy(x: Tensor | np.ndarray | Sequence) -> np.ndarray:
    if isinstance(x, Tensor):
        return x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=float)


def _default_bounds(model: LogProbLike, bounds: Bounds | None) -> Bounds:
    if bounds is not None:
        return bounds
    # Toys carry their own plotting box; anything else gets the square [-4, 4]^2.
    return getattr(model, "bounds", None) or 4.0


# -- 2D ------------------------------------------------------------------------------------------
def plot_density_2d(model: LogProbLike, bounds: Bounds | None = None, resolution: int = 200,
                    ax: Axes | None = None, cmap: str = "viridis", log: bool = False,
                    title: str | None = None, vmax: float | None = None, colorbar: bool = False) -> Axes:
    """A heat map of p(x) (or log p(x) with ``log=True``) on a grid of ``resolution`` x ``resolution`` points.

    ``model`` has ``log_prob`` or is a callable; ``bounds`` is L (the square [-L, L]^2),
    (lo, hi) or ((x_lo, x_hi), (y_lo, y_hi)), by default the model's own ``bounds`` or 4.
    """
    bounds = _default_bounds(model, bounds)
    (x_lo, x_hi), (y_lo, y_hi) = box_bounds(bounds, "plot_density_2d")
    _, _, values = density_on_grid(model, bounds, resolution=resolution, log=log)
    values = values.numpy()
    if log:
        # -inf (zero density) would make the colour scale useless: floor it 30 nats below the top.
        top = np.nanmax(values[np.isfinite(values)]) if np.isfinite(values).any() else 0.0
        values = np.maximum(values, top - 30.0)
    ax = _axes(ax)
    image = ax.imshow(values, extent=(x_lo, x_hi, y_lo, y_hi), origin="lower", cmap=cmap,
                      interpolation="bilinear", aspect="equal", vmax=vmax)
    ax.set(xlim=(x_lo, x_hi), ylim=(y_lo, y_hi))
    if title is not None:
        ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(image, ax=ax, shrink=0.8, label="log p(x)" if log else "p(x)")
    return ax


def plot_samples_2d(samples: Tensor | np.ndarray, ax: Axes | None = None, bounds: Bounds | None = None,
                    s: float = 2.0, alpha: float = 0.5, color: Any = None, c: Any = None,
                    title: str | None = None, **scatter_kwargs: Any) -> Axes:
    """A scatter plot of 2D points (n, 2); ``c`` colours each point (e.g. to track it across plots)."""
    points = _numpy(samples)
    if points.ndim != 2 or points.shape[1] < 2:
        raise FlowInputError(f"plot_samples_2d: expected points of shape (n, 2), got {points.shape}")
    ax = _axes(ax)
    ax.scatter(points[:, 0], points[:, 1], s=s, alpha=alpha, color=color, c=c, linewidths=0, **scatter_kwargs)
    if bounds is not None:
        (x_lo, x_hi), (y_lo, y_hi) = box_bounds(bounds, "plot_samples_2d")
        ax.set(xlim=(x_lo, x_hi), ylim=(y_lo, y_hi))
    ax.set_aspect("equal", adjustable="box")
    if title is not None:
        ax.set_title(title)
    return ax


def compare_densities(models: Mapping[str, LogProbLike], bounds: Bounds | None = None, resolution: int = 200,
                      samples: Mapping[str, Tensor] | None = None, shared_scale: bool = True,
                      log: bool = False, panel_size: float = 3.2) -> Figure:
    """Side-by-side heat maps, one panel per named density (e.g. ``{"data": toy, "flow": model}``).

    With ``shared_scale`` all panels use the colour scale of the FIRST density (the
    reference, usually the data): brighter means more probable across panels, not just
    within one, and a model that piles up more mass than the reference saturates rather than
    darkening every other panel. ``samples`` (name -> points) overlays points on the panel
    of that name (or fills an extra panel for a name not in ``models``).
    """
    if not models:
        raise FlowInputError("compare_densities: expected at least one density, got none")
    samples = dict(samples or {})
    names = list(models) + [k for k in samples if k not in models]
    first = next(iter(models.values()))
    bounds = _default_bounds(first, bounds)
    fig, axes = plt.subplots(1, len(names), figsize=(panel_size * len(names), panel_size), squeeze=False)
    axes = axes[0]
    vmax = None
    if shared_scale and not log:
        vmax = float(density_on_grid(first, bounds, resolution=resolution)[2].max())
    for ax, name in zip(axes, names, strict=True):
        if name in models:
            plot_density_2d(models[name], bounds, resolution, ax=ax, log=log, vmax=vmax)
        if name in samples:
            plot_samples_2d(samples[name], ax=ax, bounds=bounds, color="w" if name in models else "C0")
        ax.set_title(name)
    fig.tight_layout()
    return fig


# -- 1D ------------------------------------------------------------------------------------------
def _log_prob_fn(model: LogProbLike) -> Callable[[Tensor], Tensor]:
    fn = getattr(model, "log_prob", model)
    if not callable(fn):
        raise FlowInputError(
            f"plot_density_1d: expected a model with log_prob or a callable x -> log p(x), "
            f"got {type(model).__name__}")
    return fn


def plot_density_1d(model: LogProbLike, bounds: tuple[float, float] = (-4.0, 4.0), resolution: int = 500,
                    ax: Axes | None = None, samples: Tensor | np.ndarray | None = None, bins: int = 50,
                    label: str | None = None, **line_kwargs: Any) -> Axes:
    """p(x) on [lo, hi] as a line, over a density-normalised histogram of ``samples`` if given.

    ``model.log_prob`` (or the callable) receives points of shape (resolution, 1), the flowlib
    shape of 1D data; an output of shape (resolution, 1) is flattened too.
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    if not lo < hi:
        raise FlowInputError(f"plot_density_1d: expected bounds (lo, hi) with lo < hi, got {bounds!r}")
    fn = _log_prob_fn(model)
    device, dtype = placement(model)
    x = torch.linspace(lo, hi, resolution, dtype=dtype, device=device)[:, None]
    with evaluating(model):  # a plot must not initialise ActNorm or draw dropout noise
        density = fn(x).reshape(-1).exp()
    ax = _axes(ax, figsize=(5.0, 3.0))
    if samples is not None:
        ax.hist(_numpy(samples).reshape(-1), bins=bins, range=(lo, hi), density=True, alpha=0.35,
                color="C1", label="samples")
    ax.plot(_numpy(x[:, 0]), _numpy(density), label=label, **line_kwargs)
    ax.set_xlim(lo, hi)
    ax.set_ylim(bottom=0)
    if label is not None or samples is not None:
        ax.legend()
    return ax


# -- flows layer by layer ------------------------------------------------------------------------
def plot_flow_steps(flow: Flow | Any, x: Tensor, direction: str = "forward", bounds: Bounds | None = None,
                    names: Sequence[str] | None = None, s: float = 2.0, panel_size: float = 2.6,
                    max_cols: int = 6) -> Figure:
    """Samples after each layer of a flow: panel 0 is the input, panel k the output of layer k.

    ``flow`` is a :class:`~flowlib.core.Compose`, a model with a ``flow`` attribute (a
    FlowModel) or a single layer. ``direction="forward"`` pushes data x towards the latent
    (``forward_steps``: the normalizing direction); ``"inverse"`` pushes latent z towards the
    data (``inverse_steps``: the generative direction). Points are coloured by the angle of
    their starting position, so each one can be followed from panel to panel. The first two
    coordinates are shown.
    """
    flow = getattr(flow, "flow", flow) if not isinstance(flow, Flow) else flow
    if not isinstance(flow, Flow):
        raise FlowInputError(
            f"plot_flow_steps: expected a Flow, a Compose or a FlowModel, got {type(flow).__name__}")
    choice(direction, "direction", ("forward", "inverse"), "plot_flow_steps")
    compose = flow if isinstance(flow, Compose) else Compose(flow)
    with torch.no_grad():
        steps = compose.forward_steps(x) if direction == "forward" else compose.inverse_steps(x)
    layers = list(compose.flows) if direction == "forward" else list(reversed(compose.flows))
    if names is None:
        start, end = ("x (data)", "z (latent)") if direction == "forward" else ("z (latent)", "x (data)")
        names = [start] + [f"{k}: {type(f).__name__}" for k, f in enumerate(layers, 1)]
        names[-1] += f"\n= {end}"
    if len(names) != len(steps):
        raise FlowInputError(f"plot_flow_steps: expected {len(steps)} names, got {len(names)}")
    start_points = _numpy(steps[0])
    colour = np.arctan2(start_points[:, 1], start_points[:, 0])
    cols = min(len(steps), max_cols)
    rows = math.ceil(len(steps) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(panel_size * cols, panel_size * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= len(steps):
            ax.axis("off")
            continue
        plot_samples_2d(steps[i], ax=ax, bounds=bounds, s=s, alpha=0.7, c=colour, cmap="hsv")
        ax.set_title(names[i], fontsize=9)
    fig.tight_layout()
    return fig


# -- images --------------------------------------------------------------------------------------
def tile_images(images: Tensor | np.ndarray, nrow: int = 8, padding: int = 1, pad_value: float = 1.0,
                value_range: tuple[float, float] | None = (0.0, 1.0)) -> np.ndarray:
    """Tile images (N, C, H, W), C = 1 or 3, or (N, H, W), ``nrow`` per row, into one array.

    Returns (rows, cols) for grey images, (rows, cols, 3) for colour ones, float32 in [0, 1]:
    values are mapped from ``value_range`` to [0, 1] and clipped (``None``: [0, 1] when the
    data lie in it, else their min and max); ``padding`` pixels of ``pad_value`` separate the
    tiles, tile k sitting at row k // nrow, column k % nrow.

    >>> tile_images(torch.ones(3, 1, 2, 2), nrow=2, pad_value=0.0).shape  # 2 rows of 2 tiles
    (7, 7)
    """
    return _tile(images, nrow, padding, pad_value, value_range, "tile_images")


def _tile(images: Tensor | np.ndarray, nrow: int, padding: int, pad_value: float,
          value_range: tuple[float, float] | None, who: str) -> np.ndarray:
    arr = images.detach().to("cpu", torch.float32).numpy() if isinstance(images, Tensor) \
        else np.asarray(images, dtype=np.float32)
    if arr.ndim == 3:  # (N, H, W): grey images without a channel axis
        arr = arr[:, None]
    if arr.ndim != 4 or arr.shape[1] not in (1, 3) or arr.shape[0] == 0:
        raise FlowInputError(f"{who}: expected images of shape (N, 1 or 3, H, W), got {arr.shape}")
    cols = min(integer(nrow, "nrow", who), arr.shape[0])
    padding = integer(padding, "padding", who, minimum=0)
    if value_range is None:
        inside = arr.min() >= 0.0 and arr.max() <= 1.0
        value_range = (0.0, 1.0) if inside else (float(arr.min()), float(arr.max()))
    lo, hi = value_range
    arr = np.clip((arr - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    n, c, h, w = arr.shape
    rows = math.ceil(n / cols)
    grid = np.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value,
                   dtype=np.float32)
    for k in range(n):
        r, q = divmod(k, cols)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top:top + h, left:left + w] = arr[k]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def image_grid(images: Tensor | np.ndarray, nrow: int = 8, ax: Axes | None = None, padding: int = 1,
               value_range: tuple[float, float] | None = None, pad_value: float = 1.0,
               cmap: str = "gray", title: str | None = None) -> Axes:
    """Draw a batch of images (N, C, H, W), C = 1 (grey) or 3 (colour), ``nrow`` per row.

    The tiles are those of :func:`tile_images` (``value_range`` by default: [0, 1] when the
    data lie in it, else their min and max).
    """
    grid = _tile(images, nrow, padding, pad_value, value_range, "image_grid")
    cols = min(int(nrow), len(images))  # checked by _tile
    rows = math.ceil(len(images) / cols)
    ax = _axes(ax, figsize=(max(2.0, 0.6 * cols), max(2.0, 0.6 * rows)))
    ax.imshow(grid, cmap=cmap if grid.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.axis("off")
    if title is not None:
        ax.set_title(title)
    return ax


# -- training ------------------------------------------------------------------------------------
def _moving_average(values: np.ndarray, window: int) -> np.ndarray:
    window = max(1, min(int(window), len(values)))
    kernel = np.ones(window) / window
    # 'valid' then left-pad with the running mean, so the curve starts at step 1.
    head = np.cumsum(values[: window - 1]) / np.arange(1, window)
    return np.concatenate([head, np.convolve(values, kernel, mode="valid")])


def plot_training_curve(history: Any, ax: Axes | None = None, smooth: int | None = None,
                        logy: bool = False, ylabel: str | None = None) -> Axes:
    """The training loss per step and, if recorded, the validation figures at their steps.

    ``history`` may be a result of :func:`flowlib.train.fit` (attributes ``losses``,
    ``val_steps``, ``val``, and ``metric`` or ``unit`` for the y label), a dict with those
    keys, a dict of name -> sequence (one curve each, against its index) or a plain sequence
    of losses. ``smooth=k`` adds a
    moving average over k steps above the raw (faint) curve.
    """
    def get(key: str) -> Any:
        return history.get(key) if isinstance(history, Mapping) else getattr(history, key, None)

    curves: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    losses = get("losses") if not isinstance(history, (list, tuple, np.ndarray, Tensor)) else history
    if losses is not None and len(losses):
        y = _numpy(losses).reshape(-1)
        curves["train"] = (np.arange(1, len(y) + 1), y)
        val = get("val") if not isinstance(history, (list, tuple, np.ndarray, Tensor)) else None
        if val is not None and len(val):
            steps = get("val_steps")
            v = _numpy(val).reshape(-1)
            curves["validation"] = (_numpy(steps) if steps is not None and len(steps) == len(v)
                                    else np.arange(1, len(v) + 1), v)
    elif isinstance(history, Mapping):
        for name, values in history.items():
            y = _numpy(values).reshape(-1)
            if y.size:
                curves[str(name)] = (np.arange(1, len(y) + 1), y)
    if not curves:
        raise FlowInputError("plot_training_curve: found no losses to plot (expected a fit() result, "
                             "a dict of sequences or a sequence of numbers)")
    ax = _axes(ax, figsize=(6.0, 3.5))
    for i, (name, (x, y)) in enumerate(curves.items()):
        if name == "validation":
            ax.plot(x, y, "o-", ms=3, color=f"C{i}", label=name)
        elif smooth and len(y) > 1:
            ax.plot(x, y, lw=0.6, alpha=0.3, color=f"C{i}")
            ax.plot(x, _moving_average(y, smooth), lw=1.5, color=f"C{i}", label=f"{name} (mean of {smooth})")
        else:
            ax.plot(x, y, lw=1.0, color=f"C{i}", label=name)
    # The unit the run reports: FitResult.metric (or .unit, the model's loss_unit), e.g. "bits/dim".
    plain = isinstance(history, (list, tuple, np.ndarray, Tensor))
    metric = ylabel or (None if plain else get("metric") or get("unit"))
    ax.set(xlabel="step", ylabel=metric or "loss")
    if logy:
        ax.set_yscale("log")
    ax.legend()
    return ax
