"""Interactive widgets for image flows: sampling temperature and latent interpolation (lecture 5).

Both widgets follow :mod:`flowlib.widgets`: one matplotlib figure drawn once, whose data
artists are updated in place (``set_data``) and re-rendered to a PNG inside an
``ipywidgets.Image``, so they need no interactive backend. They only READ a trained model:
its flow is run in eval mode without gradients and every module's training flag is put back
afterwards; nothing is trained or initialised.

* :class:`TemperatureGrid`: a grid of samples x = f^{-1}(z), z = T * eps, with the noise eps
  drawn ONCE, so that moving the temperature slider changes T and nothing else (Kingma &
  Dhariwal, 2018, section 5 and figure 8: T = 0, 0.25, 0.6, 0.7, 0.8, 0.9, 1). In a
  multi-scale flow eps holds every level's latent, so the split priors are cooled as well.
  Grids already seen are cached: going back to a temperature costs only the redraw.
* :class:`LatentInterpolation`: two real images x_a and x_b, their latents z_a = f(x_a) and
  z_b = f(x_b), and the decoded path x(alpha) = f^{-1}((1 - alpha) z_a + alpha z_b), as a
  strip of images and as one image under a slider (optionally along the great circle,
  "spherical", which keeps the latent's norm).

For tests and scripts each widget exposes ``.controls`` (name -> ipywidget), ``update()``,
the data on display (``.images`` / ``.grid`` or ``.image`` / ``.strip``), ``png()`` and
``.widget`` (also shown by ``_ipython_display_``).
"""

from __future__ import annotations

import html
import io
import math
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import ipywidgets as W
import numpy as np
import PIL.Image
import torch
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import Tensor, nn

from flowlib.core import FlowInputError
from flowlib.distributions import DiagonalGaussian, StandardNormal
from flowlib.widgets import ControlledUpdates

__all__ = ["TemperatureGrid", "LatentInterpolation", "PAPER_TEMPERATURES", "tile_images", "read_only"]

#: The temperatures of Glow's figure 8 (Kingma & Dhariwal, 2018).
PAPER_TEMPERATURES: tuple[float, ...] = (0.0, 0.25, 0.6, 0.7, 0.8, 0.9, 1.0)


# ----------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------
@contextmanager
def read_only(model: nn.Module) -> Iterator[None]:
    """Run ``model`` in eval mode without gradients, then restore every module's own flag.

    Eval mode matters twice: ActNorm never initialises itself on what it is shown, and the
    1x1 convolutions reuse their cached W^{-1}. The flags are restored one module at a time
    (not with ``model.train(...)``), so a model that was, say, half frozen stays so.
    """
    flags = [(m, m.training) for m in model.modules()]
    if any(flag for _, flag in flags):
        model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, flag in flags:
            m.training = flag


def tile_images(images: Tensor, nrow: int, padding: int = 1, pad_value: float = 1.0,
                value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """Tile images (N, C, H, W), C = 1 or 3, into one array: (rows, cols) grey or (rows, cols, 3).

    Values are mapped from ``value_range`` to [0, 1] and clipped; ``padding`` pixels of
    ``pad_value`` separate the tiles. Used for the arrays that the widgets put on screen.
    """
    if not isinstance(images, Tensor) or images.dim() != 4 or images.shape[1] not in (1, 3):
        got = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise FlowInputError(f"tile_images: expected a tensor (N, 1 or 3, H, W), got {got}")
    lo, hi = value_range
    arr = ((images.detach().to("cpu", torch.float32) - lo) / max(hi - lo, 1e-12)).clamp(0, 1).numpy()
    n, c, h, w = arr.shape
    cols = max(1, min(int(nrow), n))
    rows = math.ceil(n / cols)
    grid = np.full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value,
                   dtype=np.float32)
    for k in range(n):
        r, q = divmod(k, cols)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[:, top:top + h, left:left + w] = arr[k]
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def _image_model(model: object, who: str) -> tuple[int, int, int]:
    """Check that ``model`` is a flow model on images and return its event shape (C, H, W)."""
    flow = getattr(model, "flow", None)
    if not isinstance(model, nn.Module) or flow is None or not callable(getattr(flow, "inverse", None)):
        raise FlowInputError(f"{who}: expected a flow model (a flowlib FlowModel with .flow and .base), "
                             f"got {type(model).__name__}")
    shape = tuple(int(s) for s in getattr(model, "event_shape", ()))
    if len(shape) != 3 or shape[0] not in (1, 3):
        raise FlowInputError(f"{who}: expected a model of images (1 or 3 channels, height, width), "
                             f"got event shape {shape}")
    return shape  # type: ignore[return-value]


def _dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype, t.device
    return torch.get_default_dtype(), torch.device("cpu")


def _figure_size(pixels_h: int, pixels_w: int, inches: float) -> tuple[float, float]:
    """A figure whose longer side is ``inches``, in the grid's aspect ratio (plus a title strip)."""
    scale = inches / max(pixels_h, pixels_w)
    return max(1.5, pixels_w * scale), max(1.5, pixels_h * scale) + 0.35


def _check_fraction(value: float, who: str, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise FlowInputError(f"{who}: {what} must be a number in [0, 1], got {value!r}")
    return float(value)


# ----------------------------------------------------------------------------------------
# One figure, drawn once, its data artists re-rendered into an ipywidgets.Image
# ----------------------------------------------------------------------------------------
def _slider(value: float, lo: float, hi: float, step: float, description: str) -> W.FloatSlider:
    return W.FloatSlider(value=value, min=lo, max=hi, step=step, description=description,
                         continuous_update=True, readout_format=".2f",
                         style={"description_width": "initial"}, layout=W.Layout(width="320px"))


class _ImageFigure(ControlledUpdates):
    """The machinery shared by the image widgets (the same approach as :mod:`flowlib.widgets`).

    The figure's static parts (frames, fixed images, titles) are drawn once into a cached
    background; an update computes the new data, hands it to the artists marked ``animated``
    with ``set_data``, restores the background, draws only those artists and encodes the
    pixels as PNG. Nothing here changes axis limits, so the background never goes stale.
    Torch runs on ``threads`` threads during an update (1 by default: on a busy 2-core
    machine, threads competing for the cores cost more than they bring).
    """

    def __init__(self, figsize: tuple[float, float], dpi: int = 80, threads: int = 1) -> None:
        # A bare Figure, not pyplot: no global state, and the inline backend does not show a
        # second, static copy of it when the cell ends.
        self.figure = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.controls: dict[str, W.ValueWidget] = {}
        self.status = ""
        self.threads = int(threads)
        self._image = W.Image(format="png")
        self._status_html = W.HTML()
        self._dynamic: list[Artist] = []
        self._background = None
        self._busy = self._held = False
        self._box: W.Widget | None = None

    def _animate(self, *artists: Artist) -> None:
        """Mark artists as data: redrawn on every update, above the cached background."""
        for a in artists:
            a.set_animated(True)
            self._dynamic.append(a)

    def update(self) -> None:
        """Recompute the data from the controls, update the artists and re-render."""
        self._busy = True
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(self.threads)
            self._compute()
        finally:
            torch.set_num_threads(threads)
            self._busy = False
        self._status_html.value = html.escape(self.status)
        self._render()

    def _compute(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _render(self) -> None:
        canvas = self.figure.canvas
        if self._background is None:
            canvas.draw()  # animated artists are skipped: this is the background
            self._background = canvas.copy_from_bbox(self.figure.bbox)
        else:
            canvas.restore_region(self._background)
        for a in self._dynamic:
            a.axes.draw_artist(a)
        width, height = canvas.get_width_height()
        pixels = PIL.Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        buffer = io.BytesIO()
        pixels.save(buffer, format="png", compress_level=1)  # fast: it only crosses a local socket
        self._image.value = buffer.getvalue()

    def png(self) -> bytes:
        """The image currently shown, as PNG bytes."""
        return bytes(self._image.value)

    image_bytes = png  # the name flowlib.widgets uses

    def _rows(self) -> list[W.Widget]:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def widget(self) -> W.Widget:
        """The assembled widget: the figure, the controls below it, the status line (built once)."""
        if self._box is None:
            self._box = W.VBox([self._image, *self._rows(), self._status_html])
        return self._box

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)


# ----------------------------------------------------------------------------------------
# Temperature
# ----------------------------------------------------------------------------------------
class TemperatureGrid(_ImageFigure):
    """Samples of an image flow at temperature T, from noise drawn once.

        eps ~ N(0, I) (drawn once, ``n`` images),   z = mu + T * sigma * eps,   x = f^{-1}(z)

    (mu = 0, sigma = 1 for a standard-normal base). T = 0 decodes the mode of the base,
    the same image ``n`` times; T = 1 samples the model itself; in between, Glow's "reduced
    temperature" trades diversity for cleaner samples (Kingma & Dhariwal, 2018). Because eps
    is fixed, sliding T morphs each sample continuously: only T changes.

    Controls: ``temperature`` (a slider on [0, 1] in steps of 0.01); buttons jump to the
    paper's ``temperatures``; "new noise" draws another eps. On display: ``images``
    (n, C, H, W), ``grid`` (the tiled array of the image artist), ``temperature``.
    ``threads``: torch threads used by an update (1 suits a shared 2-core machine);
    ``precompute=True`` decodes the paper's temperatures at construction (for large models, so
    that their buttons answer at once). When the first grid takes longer than
    ``SLOW_DECODE_MS`` to decode, the slider redraws on release rather than during a drag.
    ``channels_last=True`` stores the model's convolution weights and the latents as
    (N, H, W, C) in memory (the values are unchanged; the model is converted in place), which
    the CPU's convolutions prefer (see ``benchmarks/temperature_latency.py``).
    """

    #: Above this decode time (ms) the slider updates on release only.
    SLOW_DECODE_MS = 300.0

    def __init__(self, model: nn.Module, n: int = 100, temperatures: Sequence[float] = PAPER_TEMPERATURES,
                 temperature: float = 0.7, nrow: int | None = None, seed: int = 0, cache_size: int = 64,
                 value_range: tuple[float, float] = (0.0, 1.0), size: float = 4.5, dpi: int = 80,
                 threads: int = 1, precompute: bool = False, channels_last: bool = False) -> None:
        who = "TemperatureGrid"
        self.event_shape = _image_model(model, who)
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise FlowInputError(f"{who}: n (the number of samples) must be an integer >= 1, got {n!r}")
        temps = tuple(float(t) for t in temperatures)
        if not temps or any(not (0 <= t <= 1) for t in temps):
            raise FlowInputError(f"{who}: temperatures must be a non-empty list of numbers in [0, 1], "
                                 f"got {temperatures!r}")
        temperature = _check_fraction(temperature, who, "temperature")
        base = getattr(model, "base", None)
        if not isinstance(base, (StandardNormal, DiagonalGaussian)):
            raise FlowInputError(f"{who}: the model's base must be a StandardNormal or a DiagonalGaussian "
                                 f"(to scale it by T), got {type(base).__name__}")
        if not isinstance(channels_last, bool):
            raise FlowInputError(f"{who}: channels_last must be True or False, got {channels_last!r}")
        self.memory_format = torch.channels_last if channels_last else None
        if self.memory_format is not None:
            model.to(memory_format=self.memory_format)
        self.model = model
        self.n = n
        self.nrow = int(nrow) if nrow else math.ceil(math.sqrt(n))
        self.temperatures = temps
        self.value_range = value_range
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[float, Tensor] = OrderedDict()
        self.seed = int(seed)
        self.eps = self._draw_noise(self.seed)

        c, h, w = self.event_shape
        first = tile_images(torch.zeros(n, c, h, w), self.nrow)
        super().__init__(_figure_size(*first.shape[:2], size), dpi=dpi, threads=threads)
        ax = self.figure.add_axes((0.02, 0.02, 0.96, 0.96 * (1 - 0.35 / self.figure.get_figheight())))
        ax.set_axis_off()
        self._artist = ax.imshow(first, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        self._title = ax.text(0.5, 1.01, "", transform=ax.transAxes, ha="center", va="bottom", fontsize=11)
        self._animate(self._artist, self._title)

        self.controls: dict[str, W.ValueWidget] = {
            "temperature": _slider(temperature, 0.0, 1.0, 0.01, "temperature T"),
        }
        self.buttons = [W.Button(description=f"T = {t:g}", layout=W.Layout(width="auto")) for t in temps]
        for button, t in zip(self.buttons, temps, strict=True):
            button.on_click(lambda _b, t=t: self.set_temperature(t))
        self.new_noise = W.Button(description="new noise", icon="refresh", layout=W.Layout(width="auto"))
        self.new_noise.on_click(lambda _b: self.resample())
        self.images: Tensor = torch.zeros(n, c, h, w)
        self.grid: np.ndarray = first
        self._watch_controls()
        #: Milliseconds the last decode of the grid took (0 when it came from the cache).
        self.last_decode_ms = 0.0
        slowest = self._fill_cache(temps) if precompute else 0.0  # so that the paper's buttons answer at once
        self.update()
        if max(slowest, self.last_decode_ms) > self.SLOW_DECODE_MS:
            # A large model: decode when the slider is released, not for every position of a drag.
            self.controls["temperature"].continuous_update = False

    # -- the computation -------------------------------------------------------------------
    def _fill_cache(self, temperatures: Sequence[float]) -> float:
        """Decode the grids of ``temperatures`` into the cache; return the slowest decode in ms."""
        threads = torch.get_num_threads()
        slowest = 0.0
        try:
            torch.set_num_threads(self.threads)
            for t in temperatures:
                start = time.perf_counter()
                self._cache[round(float(t), 6)] = self.samples(t)
                slowest = max(slowest, 1000 * (time.perf_counter() - start))
        finally:
            torch.set_num_threads(threads)
        return slowest

    def _draw_noise(self, seed: int) -> Tensor:
        dtype, device = _dtype_device(self.model)
        g = torch.Generator().manual_seed(seed)
        # Drawn on the CPU with its own generator (the same eps on every machine), then moved.
        eps = torch.randn((self.n, *self.event_shape), generator=g).to(device=device, dtype=dtype)
        return eps if self.memory_format is None else eps.contiguous(memory_format=self.memory_format)

    def latent(self, temperature: float) -> Tensor:
        """z = mu + T * sigma * eps for the fixed eps (mu = 0, sigma = 1 for a standard normal)."""
        base = self.model.base
        if isinstance(base, DiagonalGaussian):
            return base.loc + temperature * torch.exp(base.log_scale) * self.eps
        return temperature * self.eps

    def samples(self, temperature: float) -> Tensor:
        """The n images x = f^{-1}(z) at ``temperature`` (CPU, clamped to ``value_range``)."""
        temperature = _check_fraction(temperature, "TemperatureGrid.samples", "temperature")
        with read_only(self.model):
            x, _ = self.model.flow.inverse(self.latent(temperature))
        return x.detach().to("cpu", torch.float32).clamp(*self.value_range)

    @property
    def temperature(self) -> float:
        return float(self.controls["temperature"].value)

    def set_temperature(self, temperature: float) -> None:
        """Move the slider to ``temperature`` (updates the grid through the slider's observer)."""
        self.controls["temperature"].value = _check_fraction(temperature, "TemperatureGrid", "temperature")

    def resample(self, seed: int | None = None) -> None:
        """Draw a new eps (seed + 1 by default) and redraw; the cache is emptied."""
        self.seed = self.seed + 1 if seed is None else int(seed)
        self.eps = self._draw_noise(self.seed)
        self._cache.clear()
        self.update()

    def _compute(self) -> None:
        t = round(self.temperature, 6)
        images = self._cache.get(t)
        self.last_decode_ms = 0.0
        if images is None:
            start = time.perf_counter()
            images = self.samples(t)
            self.last_decode_ms = 1000 * (time.perf_counter() - start)
            self._cache[t] = images
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(t)
        self.images = images
        self.grid = tile_images(images, self.nrow, value_range=self.value_range)
        self._artist.set_data(self.grid)
        self._title.set_text(f"T = {t:.2f}")
        self.status = (f"{self.n} samples x = f⁻¹(T·ε), the same ε for every T (seed {self.seed}); "
                       f"T = 0 is the mode, T = 1 the model itself")

    def _rows(self) -> list[W.Widget]:
        return [W.HBox([self.controls["temperature"], self.new_noise]),
                W.HBox([W.Label("the paper's T:"), *self.buttons])]


# ----------------------------------------------------------------------------------------
# Interpolation
# ----------------------------------------------------------------------------------------
class LatentInterpolation(_ImageFigure):
    """Decode the path between the latents of two real images.

        z_a = f(x_a),  z_b = f(x_b),   x(alpha) = f^{-1}((1 - alpha) z_a + alpha z_b)

    ("linear"; Kingma & Dhariwal, 2018, figure 5), or along the great circle between z_a
    and z_b ("spherical", slerp), which keeps |z| near that of the ends instead of shrinking
    it towards the mode halfway. A flow is invertible, so x(0) = x_a and x(1) = x_b exactly
    (up to float error): the ends are the real images, not reconstructions.

    ``x_a`` and ``x_b`` are single images (C, H, W) or (1, C, H, W): grey levels as the data
    sets return them (integers 0..K-1, shown at the centre of their bin, (k + 1/2) / K), or
    floats in [0, 1]. Controls: ``alpha`` in [0, 1] and ``path``. On display: ``image``
    (C, H, W) at the current alpha, ``strip`` (steps, C, H, W) at equally spaced alphas.
    """

    PATHS = ("linear", "spherical")

    def __init__(self, model: nn.Module, x_a: Tensor, x_b: Tensor, steps: int = 9, alpha: float = 0.5,
                 path: str = "linear", value_range: tuple[float, float] = (0.0, 1.0), size: float = 7.0,
                 dpi: int = 80, threads: int = 1) -> None:
        who = "LatentInterpolation"
        self.event_shape = _image_model(model, who)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise FlowInputError(f"{who}: steps must be an integer >= 2, got {steps!r}")
        if path not in self.PATHS:
            raise FlowInputError(f"{who}: path must be one of {self.PATHS}, got {path!r}")
        alpha = _check_fraction(alpha, who, "alpha")
        self.model = model
        self.steps = steps
        self.value_range = value_range
        self.x_a = self._to_unit(x_a, "x_a")
        self.x_b = self._to_unit(x_b, "x_b")
        with read_only(model):
            self.z_a = model.flow(self.x_a)[0]
            self.z_b = model.flow(self.x_b)[0]
        self.alphas = torch.linspace(0, 1, steps).tolist()
        self._strips: dict[str, Tensor] = {}

        c, h, w = self.event_shape
        strip0 = tile_images(torch.zeros(steps, c, h, w), steps)
        width = size
        height = width / strip0.shape[1] * strip0.shape[0] + width / 3 + 0.6
        super().__init__((width, height), dpi=dpi, threads=threads)
        top = self.figure.add_gridspec(1, 3, left=0.1, right=0.9, top=0.9, bottom=0.32, wspace=0.15)
        axes = [self.figure.add_subplot(top[0, k]) for k in range(3)]
        ax_strip = self.figure.add_axes((0.01, 0.02, 0.98, 0.2))
        for ax in (*axes, ax_strip):
            ax.set_axis_off()
        cmap = "gray" if c == 1 else None
        axes[0].imshow(self._display(self.x_a[0]), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[0].set_title("$x_a$ (alpha = 0)", fontsize=10)
        axes[2].imshow(self._display(self.x_b[0]), cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        axes[2].set_title("$x_b$ (alpha = 1)", fontsize=10)
        self._current = axes[1].imshow(self._display(self.x_a[0]), cmap=cmap, vmin=0, vmax=1,
                                       interpolation="nearest")
        self._label = axes[1].text(0.5, 1.02, "", transform=axes[1].transAxes, ha="center", va="bottom",
                                   fontsize=10)
        self._strip_artist = ax_strip.imshow(strip0, cmap=cmap, vmin=0, vmax=1, interpolation="nearest")
        # A red frame on the strip around the tile nearest to alpha, drawn through the centres of
        # the 1-pixel padding that surrounds each tile.
        self._marker = Rectangle((0, 0), w + 1, h + 1, fill=False, edgecolor="C3", linewidth=2)
        ax_strip.add_patch(self._marker)
        self._animate(self._current, self._label, self._strip_artist, self._marker)

        self.controls: dict[str, W.ValueWidget] = {
            "alpha": _slider(alpha, 0.0, 1.0, 0.01, "alpha"),
            "path": W.ToggleButtons(options=list(self.PATHS), value=path, description="path",
                                    style={"button_width": "90px"}),
        }
        self.image: Tensor = self.x_a[0].cpu()
        self.strip: Tensor = torch.zeros(steps, c, h, w)
        self._watch_controls()
        self.update()

    # -- inputs ------------------------------------------------------------------------------
    def _to_unit(self, x: Tensor, name: str) -> Tensor:
        """One image as the flow's input in [0, 1], shape (1, C, H, W), on the model's device."""
        who = f"LatentInterpolation: {name}"
        if not isinstance(x, Tensor):
            raise FlowInputError(f"{who}: expected a torch.Tensor image, got {type(x).__name__}")
        x = x.unsqueeze(0) if x.dim() == 3 else x
        if x.dim() != 4 or x.shape[0] != 1 or tuple(x.shape[1:]) != self.event_shape:
            want = "(" + ", ".join(map(str, self.event_shape)) + ")"
            raise FlowInputError(f"{who}: expected one image of shape {want} or (1, {want[1:]}, "
                                 f"got {tuple(x.shape)}")
        dtype, device = _dtype_device(self.model)
        x = x.detach().to(device)
        levels = getattr(self.model, "levels", None)
        if not x.is_floating_point() or (levels is not None and float(x.max()) > 1):
            if levels is None:
                raise FlowInputError(f"{who}: integer grey levels need a model with .levels; "
                                     f"pass floats in [0, 1] instead")
            from flowlib.dequantize import as_levels

            k = as_levels(x, levels, who)
            return ((k + 0.5) / levels).to(dtype)
        if float(x.min()) < 0 or float(x.max()) > 1:
            raise FlowInputError(f"{who}: expected floats in [0, 1] or integer grey levels, got values in "
                                 f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
        return x.to(dtype)

    def _display(self, image: Tensor) -> np.ndarray:
        arr = tile_images(image.unsqueeze(0), 1, padding=0, value_range=self.value_range)
        return arr

    # -- the computation -------------------------------------------------------------------
    def latents(self, alphas: Sequence[float] | Tensor, path: str = "linear") -> Tensor:
        """z(alpha) for each alpha: (len(alphas), C, H, W)."""
        a = torch.as_tensor(alphas, dtype=self.z_a.dtype, device=self.z_a.device).reshape(-1, 1, 1, 1)
        if path == "linear":
            return (1 - a) * self.z_a + a * self.z_b
        # slerp: sin((1-a) theta)/sin(theta) z_a + sin(a theta)/sin(theta) z_b, theta the angle between them.
        za, zb = self.z_a.flatten(), self.z_b.flatten()
        cos = torch.dot(za, zb) / (za.norm() * zb.norm()).clamp_min(1e-12)
        theta = torch.arccos(cos.clamp(-1, 1))
        if float(theta) < 1e-4:  # (almost) parallel: the great circle is the straight line
            return (1 - a) * self.z_a + a * self.z_b
        return (torch.sin((1 - a) * theta) * self.z_a + torch.sin(a * theta) * self.z_b) / torch.sin(theta)

    def decode(self, alphas: Sequence[float] | Tensor, path: str = "linear") -> Tensor:
        """x(alpha) = f^{-1}(z(alpha)) for each alpha, (len(alphas), C, H, W) on the CPU, clamped."""
        if path not in self.PATHS:
            raise FlowInputError(f"LatentInterpolation.decode: path must be one of {self.PATHS}, "
                                 f"got {path!r}")
        with read_only(self.model):
            x, _ = self.model.flow.inverse(self.latents(alphas, path))
        return x.detach().to("cpu", torch.float32).clamp(*self.value_range)

    @property
    def alpha(self) -> float:
        return float(self.controls["alpha"].value)

    def _compute(self) -> None:
        path = self.controls["path"].value
        if path not in self._strips:
            self._strips[path] = self.decode(self.alphas, path)
        self.strip = self._strips[path]
        alpha = self.alpha
        self.image = self.decode([alpha], path)[0]
        self._current.set_data(self._display(self.image))
        self._label.set_text(f"alpha = {alpha:.2f}")
        self._strip_artist.set_data(tile_images(self.strip, self.steps, value_range=self.value_range))
        # Frame the strip's tile nearest to alpha.
        _, h, w = self.event_shape
        k = round(alpha * (self.steps - 1))
        self._marker.set_xy((k * (w + 1), 0))
        self.status = (f"x(α) = f⁻¹((1−α)·f(x_a) + α·f(x_b)), {path} path; "
                       f"the strip shows α = 0, {1 / (self.steps - 1):.3g}, ..., 1")

    def _rows(self) -> list[W.Widget]:
        return [W.HBox([self.controls["alpha"], self.controls["path"]])]
