"""Interactive widgets for the first two lectures: the change of variables in 1D and in 2D.

Both widgets draw one matplotlib figure ONCE and, on every slider move, only replace the data
of its artists (``set_data``, ``set_offsets``, ``set_array``...) and re-render it to a PNG
shown in an ``ipywidgets.Image``. That needs no interactive matplotlib backend (it works in
JupyterLab, classic Notebook, VS Code, Colab and Binder alike) and aims at an update under
150 ms on a 2-core CPU (``benchmarks/widget_latency.py`` measures it).

Widgets only READ flowlib layers; they never train anything. For tests and scripts each widget
exposes its controls (``.controls``, name -> ipywidget), ``update()`` (recompute and redraw
synchronously), the data on display (``density_values()``, ``integral``, ``status``) and
``widget`` (the assembled box, also shown by ``_ipython_display_``).

* :class:`ChangeOfVariables1D`: p_X(x) = p_Z(f(x)) |f'(x)| for a monotone f from
  :mod:`flowlib.elementwise`, with samples x = f^{-1}(z) and the integral of p_X read live.
* :class:`PlanarFlow2D`: planar and radial flows (Rezende & Mohamed, 2015) stacked 1..K times,
  their density on a grid, samples, and what happens when a planar layer is not invertible.
"""

from __future__ import annotations

import html
import io
import itertools
import math
import textwrap
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import ipywidgets as W
import matplotlib
import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import Bbox, IdentityTransform
from torch import Tensor

from flowlib.core import Compose, Flow, FlowInputError
from flowlib.distributions import StandardNormal
from flowlib.elementwise import Affine, MixtureLogisticCDF, SinhArcsinh
from flowlib.planar import Planar, Radial

__all__ = ["ChangeOfVariables1D", "PlanarFlow2D", "BASES_1D", "MAPS_1D"]

_LOG_2PI = math.log(2 * math.pi)
_CMAP = "viridis"


# ----------------------------------------------------------------------------------------
# Shared machinery: one figure, rendered to PNG into an ipywidgets.Image
# ----------------------------------------------------------------------------------------
class ControlledUpdates:
    """The control plumbing every widget of the course shares.

    A subclass sets ``self.controls`` (name -> ipywidget), ``self._busy = self._held = False``
    and implements ``update()``; ``_watch_controls()`` then redraws on every change of a
    control, and ``hold_updates()`` lets several controls change with one redraw.
    """

    controls: dict
    _busy: bool
    _held: bool

    def update(self) -> None:  # pragma: no cover - implemented by each widget
        raise NotImplementedError

    def _watch_controls(self) -> None:
        for control in self.controls.values():
            control.observe(self._on_change, names="value")

    def _on_change(self, change: dict) -> None:
        # An update may itself change controls (visibility): never re-enter it.
        if not self._busy and not self._held:
            self.update()

    @contextmanager
    def hold_updates(self) -> Iterator[None]:
        """Set several controls at once and update once, at the end of the ``with`` block."""
        self._held = True
        try:
            yield
        finally:
            self._held = False
            self.update()


class _FigureWidget(ControlledUpdates):
    """A matplotlib figure drawn once and re-rendered into an ``ipywidgets.Image`` on change.

    Rendering uses blitting: the static parts (axes, ticks, labels, fixed images) are drawn
    once into a cached background; an update restores it and draws only the artists marked
    ``animated`` (the data), then encodes the pixels (PNG or JPEG). When the limits of a panel
    change (subclasses move them in steps, with some hysteresis), only that panel's part of
    the background is cleared and redrawn.
    Torch runs on one thread during an update: on a busy 2-core machine, small tensors are
    much faster that way than with threads competing for the cores.
    """

    def __init__(self, figsize: tuple[float, float], dpi: int = 80, image_format: str = "png") -> None:
        # A bare Figure (not pyplot): no global state, and the inline backend does not
        # display a second static copy of it when the cell ends.
        self.figure = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.controls: dict[str, W.ValueWidget] = {}
        self.integral = float("nan")
        self.status = ""
        #: How many renders had to redraw (part of) the background (a panel's limits or legend changed).
        self.relayouts = 0
        if image_format not in ("png", "jpeg"):
            raise FlowInputError(
                f"{type(self).__name__}: image_format must be 'png' or 'jpeg', got {image_format!r}")
        self.image_format = image_format
        self._image = W.Image(format=image_format)
        self._status_html = W.HTML()
        self._busy = self._held = False
        self._box: W.Widget | None = None
        self._dynamic: list[Artist] = []
        self._overlays: list[Artist] = []
        self._overlay_pixels: list = []
        self._background = None
        self._axes_keys: list[tuple] = []

    def _animate(self, *artists: Artist) -> None:
        """Mark artists as data: drawn on every update, above the cached background."""
        for a in artists:
            a.set_animated(True)
            self._dynamic.append(a)

    def _overlay(self, artist: Artist) -> None:
        """A static artist with an opaque box (a legend) that must stay above the data.

        It is drawn with the background, its pixels are kept, and after the data is drawn
        they are copied back on top: much cheaper than laying out its text on every update.
        """
        self._overlays.append(artist)

    def _panel_key(self, index: int) -> object:
        """Anything besides its axis limits whose change needs panel ``index`` redrawn (a legend)."""
        return None

    def update(self) -> None:
        """Recompute everything from the controls, update the artists and re-render."""
        self._busy = True
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            self._compute()
        finally:
            torch.set_num_threads(threads)
            self._busy = False
        self._status_html.value = self._status_markup()
        self._render()

    def _compute(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _layout_key(self) -> list[tuple]:
        """What changes each panel's static background: its axis limits and its legend."""
        return [(ax.get_xlim(), ax.get_ylim(), self._panel_key(i)) for i, ax in enumerate(self.figure.axes)]

    def _status_markup(self) -> str:
        return "<br>".join(html.escape(line) for line in self.status.splitlines())

    def _strips(self) -> list[Bbox]:
        """The part of the figure each panel owns; the panels sit in one row, with their tick
        labels, axis labels and title on the left, below and above: a vertical strip, full
        height, from just right of its left neighbour's frame (room for half a tick label) to
        just right of its own. A panel can then be repainted alone, and finding the strips
        needs no text layout (unlike tight bounding boxes)."""
        fig = self.figure
        width, height = fig.bbox.width, fig.bbox.height
        boxes = [ax.get_position() for ax in fig.axes]
        order = sorted(range(len(boxes)), key=lambda i: boxes[i].x0)
        edges = [0.0]
        for left, right in itertools.pairwise(order):
            gap = (boxes[right].x0 - boxes[left].x1) * width
            edges.append(boxes[left].x1 * width + min(16.0, 0.3 * gap))
        edges.append(width)
        strips: list[Bbox] = [Bbox.unit()] * len(boxes)
        for rank, i in enumerate(order):
            strips[i] = Bbox.from_extents(edges[rank], 0.0, edges[rank + 1], height)
        return strips

    def _redraw_background(self) -> None:
        """Bring the cached background up to date with the axis limits."""
        canvas = self.figure.canvas
        keys = self._layout_key()
        if self._background is None or len(keys) != len(self._axes_keys):
            canvas.draw()  # skips the animated artists: this is the background
        else:
            stale = [i for i, (new, old) in enumerate(zip(keys, self._axes_keys, strict=True)) if new != old]
            canvas.restore_region(self._background)
            if not stale:
                return
            # Repaint only the panels whose limits moved, each within its own strip.
            renderer = canvas.get_renderer()
            strips = self._strips()
            for i in stale:
                _fill_background(self.figure, renderer, strips[i])
                self.figure.axes[i].draw(renderer)
        renderer = canvas.get_renderer()
        self._axes_keys = keys
        self._background = canvas.copy_from_bbox(self.figure.bbox)
        self._overlay_pixels = [canvas.copy_from_bbox(a.get_window_extent(renderer)) for a in self._overlays
                                if a.get_visible()]
        self.relayouts += 1

    def _render(self) -> None:
        self._redraw_background()
        canvas = self.figure.canvas
        for a in self._dynamic:
            if a.get_visible():
                a.axes.draw_artist(a)
        for pixels in self._overlay_pixels:
            canvas.restore_region(pixels)
        width, height = canvas.get_width_height()
        pixels = PIL.Image.frombuffer("RGBA", (width, height), canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
        buffer = io.BytesIO()
        if self.image_format == "png":  # crisp lines and text; fast, light compression
            pixels.save(buffer, format="png", compress_level=1)
        else:  # heat maps: ten times faster to encode than PNG, and half the bytes to send
            pixels.convert("RGB").save(buffer, format="jpeg", quality=90)
        self._image.value = buffer.getvalue()

    def image_bytes(self) -> bytes:
        """The image currently shown, encoded as ``image_format`` (PNG or JPEG)."""
        return bytes(self._image.value)

    def _panel(self) -> list[W.Widget]:  # pragma: no cover - abstract
        """The controls in the order they are shown."""
        raise NotImplementedError

    @property
    def widget(self) -> W.Widget:
        """The whole widget: controls beside the figure, the status below (built once)."""
        if self._box is None:
            panel = W.VBox(self._panel(), layout=W.Layout(min_width="320px"))
            self._box = W.VBox([W.HBox([panel, self._image]), self._status_html])
        return self._box

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)

    def _repr_mimebundle_(self, **kwargs: object) -> dict | None:
        # For front ends that ask for a MIME bundle instead (the widget view).
        return self.widget._repr_mimebundle_(**kwargs)


def _fill_background(figure: Figure, renderer: object, box: Bbox) -> None:
    """Paint a rectangle of the canvas (display coordinates) in the figure's face colour."""
    patch = Rectangle((box.x0, box.y0), box.width, box.height, transform=IdentityTransform(),
                      facecolor=figure.get_facecolor(), edgecolor="none", linewidth=0)
    patch.set_figure(figure)
    patch.draw(renderer)


def _nice_range(lo: float, hi: float, pad: float = 0.1) -> tuple[float, float]:
    """[lo, hi] padded and rounded outwards to a round step (1, 2 or 5 times a power of 10)."""
    span = max(hi - lo, 1e-9)
    lo, hi = lo - pad * span, hi + pad * span
    raw = (hi - lo) / 10
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def _sticky_range(current: tuple[float, float] | None, lo: float, hi: float,
                  shrink: float = 0.45) -> tuple[float, float]:
    """Keep the current axis range while it holds [lo, hi] and is not much too wide.

    Moving a slider a little then leaves the axes (hence the cached background) alone.
    """
    if current is not None and current[0] <= lo and hi <= current[1] \
            and hi - lo >= shrink * (current[1] - current[0]):
        return current
    return _nice_range(lo, hi, pad=0.15)


def _sticky_top(current: float | None, top: float) -> float:
    """The upper y-limit of a density plot, changed only when the peak leaves [0.4, 1] of it."""
    if current is not None and 0.4 * current <= top <= current:
        return current
    return 1.4 * top if top > 0 else 1.0


def _slider(value: float, lo: float, hi: float, step: float, description: str) -> W.FloatSlider:
    return W.FloatSlider(value=value, min=lo, max=hi, step=step, description=description,
                         continuous_update=True, readout_format=".2f",
                         style={"description_width": "initial"}, layout=W.Layout(width="300px"))


def _show(control: W.Widget, visible: bool) -> None:
    control.layout.display = None if visible else "none"


# ----------------------------------------------------------------------------------------
# 1D: the change of variables p_X(x) = p_Z(f(x)) |f'(x)|
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Base1D:
    """A symmetric 1D base density p_Z for the widget, with the ranges it needs.

    ``tail``: |z| beyond which the mass is below 1e-9 (the integration range);
    ``bulk``: about the 0.999 quantile (the plotting range).
    """

    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int, torch.Generator], Tensor]
    tail: float
    bulk: float


def _smooth_uniform_log_prob(z: Tensor, c: float = math.sqrt(3.0), s: float = 0.25) -> Tensor:
    # U(-c, c) blurred by N(0, s^2): (Phi((z + c)/s) - Phi((z - c)/s)) / 2c. Written with |z|
    # (the density is even) so that the difference of the two CDFs never cancels in the tail.
    a = z.abs()
    diff = torch.special.ndtr((c - a) / s) - torch.special.ndtr((-c - a) / s)
    return torch.log(diff) - math.log(2 * c)


def _bumps_log_prob(z: Tensor, m: float = 1.5, s: float = 0.5) -> Tensor:
    comps = torch.stack([-0.5 * ((z - m) / s) ** 2, -0.5 * ((z + m) / s) ** 2])
    return torch.logsumexp(comps, dim=0) - math.log(2 * s) - 0.5 * _LOG_2PI


def _bumps_sample(n: int, g: torch.Generator) -> Tensor:
    sign = torch.randint(0, 2, (n,), generator=g, dtype=torch.float64) * 2 - 1
    return 1.5 * sign + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)


BASES_1D: dict[str, Base1D] = {
    "standard normal": Base1D(
        lambda z: -0.5 * z * z - 0.5 * _LOG_2PI,
        lambda n, g: torch.randn(n, generator=g, dtype=torch.float64),
        tail=6.2, bulk=3.1),
    "logistic": Base1D(
        lambda z: F.logsigmoid(z) + F.logsigmoid(-z),
        lambda n, g: torch.logit(torch.rand(n, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)),
        tail=22.0, bulk=6.9),
    "smooth uniform": Base1D(
        _smooth_uniform_log_prob,
        lambda n, g: (math.sqrt(3.0) * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)
                      + 0.25 * torch.randn(n, generator=g, dtype=torch.float64)),
        tail=math.sqrt(3.0) + 6.2 * 0.25, bulk=math.sqrt(3.0) + 0.5),
    "two bumps": Base1D(_bumps_log_prob, _bumps_sample, tail=1.5 + 6.2 * 0.5, bulk=1.5 + 3.1 * 0.5),
}
"""The base densities offered by :class:`ChangeOfVariables1D` (all even, all light-tailed)."""


@dataclass(frozen=True)
class Map1D:
    """A monotone map of :mod:`flowlib.elementwise` and how the widget's sliders set it."""

    make: Callable[[], Flow]
    #: slider name -> (label, default, min, max, step)
    params: dict[str, tuple[str, float, float, float, float]]
    apply: Callable[[Flow, dict[str, float]], None]


def _set_affine(f: Flow, p: dict[str, float]) -> None:
    f.log_scale.fill_(p["affine_log_scale"])
    f.shift.fill_(p["affine_shift"])


def _set_sinh_arcsinh(f: Flow, p: dict[str, float]) -> None:
    f.epsilon.fill_(p["sas_epsilon"])
    f.log_delta.fill_(p["sas_log_delta"])


def _set_mixture(f: Flow, p: dict[str, float]) -> None:
    w = p["mix_weight"]
    f.logits.copy_(torch.tensor([[math.log(w), math.log1p(-w)]]))
    f.loc.copy_(torch.tensor([[p["mix_loc1"], p["mix_loc2"]]]))
    f.log_scale.copy_(torch.tensor([[p["mix_log_scale1"], p["mix_log_scale2"]]]))


MAPS_1D: dict[str, Map1D] = {
    "affine": Map1D(
        lambda: Affine(1),
        {"affine_log_scale": ("log scale", 0.4, -1.5, 1.5, 0.05),
         "affine_shift": ("shift", 0.5, -3.0, 3.0, 0.05)},
        _set_affine),
    "sinh-arcsinh": Map1D(
        lambda: SinhArcsinh(1),
        {"sas_epsilon": ("skew epsilon", 0.5, -1.5, 1.5, 0.05),
         "sas_log_delta": ("log tail delta", -0.3, -0.7, 0.7, 0.05)},
        _set_sinh_arcsinh),
    "logistic-mixture CDF": Map1D(
        lambda: MixtureLogisticCDF(1, components=2),
        {"mix_weight": ("weight pi_1", 0.5, 0.05, 0.95, 0.01),
         "mix_loc1": ("mu_1", -1.5, -3.0, 3.0, 0.05),
         "mix_loc2": ("mu_2", 1.5, -3.0, 3.0, 0.05),
         "mix_log_scale1": ("log s_1", -0.5, -2.0, 1.0, 0.05),
         "mix_log_scale2": ("log s_2", -0.5, -2.0, 1.0, 0.05)},
        _set_mixture),
}
"""The monotone maps x -> z offered by :class:`ChangeOfVariables1D` (flowlib layers, dim 1)."""


class ChangeOfVariables1D(_FigureWidget):
    """Pick a base density p_Z and a monotone map f: x -> z; see p_X appear.

    The change of variables for an increasing f (a flowlib layer's ``forward``) gives

        p_X(x) = p_Z(f(x)) |f'(x)|,        samples: x = f^{-1}(z), z ~ p_Z.

    Three panels: p_Z(z); the map z = f(x); p_X(x) with a histogram of transformed samples.
    The integral of p_X is computed numerically, by the trapezoid rule on ``grid_points``
    points covering f^{-1}([-t, t]), where p_Z puts all but 1e-9 of its mass in [-t, t]. The
    points are x = c + s sinh(t) for equally spaced t (c, s: centre and scale of the bulk of
    p_X): as dense as a uniform grid where the mass is, sparser far out, so that a heavy
    tail costs no resolution; the integral then reads 1.000 at every slider setting. The
    checkbox "drop |f'(x)|" overlays p_Z(f(x)) alone, whose integral is in general not 1:
    the Jacobian factor is what makes p_X a density.

    Controls (``.controls``): ``base``, ``transform``, ``drop_jacobian`` and the sliders
    of :data:`MAPS_1D` (only those of the chosen map are shown). Parameters are in each
    layer's own parameterisation (log scale, log delta, mixture weight / locations / log
    scales), so every slider position is a valid, invertible map. The layers run in float64.
    """

    def __init__(self, base: str = "standard normal", transform: str = "sinh-arcsinh",
                 n_samples: int = 2000, grid_points: int = 20001, plot_points: int = 500,
                 bins: int = 60, seed: int = 0, image_format: str = "png") -> None:
        if base not in BASES_1D:
            raise FlowInputError(f"ChangeOfVariables1D: base must be one of {list(BASES_1D)}, got {base!r}")
        if transform not in MAPS_1D:
            raise FlowInputError(
                f"ChangeOfVariables1D: transform must be one of {list(MAPS_1D)}, got {transform!r}")
        super().__init__(figsize=(11.5, 3.4), image_format=image_format)
        self.n_samples, self.grid_points, self.plot_points = n_samples, grid_points, plot_points
        self.bins, self.seed = bins, seed
        # float64 layers: the 1e-3 promise on the integral should not hinge on float32 rounding.
        self._maps = {name: m.make().double() for name, m in MAPS_1D.items()}
        self._samples_z: dict[str, Tensor] = {}
        self.x_window: tuple[float, float] | None = None
        self._laid_out = False

        self.controls["base"] = W.Dropdown(options=list(BASES_1D), value=base, description="p_Z")
        self.controls["transform"] = W.Dropdown(options=list(MAPS_1D), value=transform, description="map f")
        for m in MAPS_1D.values():
            for key, (label, value, lo, hi, step) in m.params.items():
                self.controls[key] = _slider(value, lo, hi, step, label)
        self.controls["drop_jacobian"] = W.Checkbox(value=False, description="drop |f'(x)|", indent=False)

        self._build_figure()
        self._watch_controls()
        self.update()

    # -- figure ---------------------------------------------------------------------------
    def _build_figure(self) -> None:
        fig = self.figure
        self._ax_z, self._ax_f, self._ax_x = fig.subplots(1, 3)
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.16, top=0.88, wspace=0.25)
        self._line_pz, = self._ax_z.plot([], [], color="C0")
        self._ax_z.set(title="base density $p_Z(z)$", xlabel="z")
        self._line_f, = self._ax_f.plot([], [], color="C2")
        self._ax_f.set(title="the map $z = f(x)$", xlabel="x")
        self._ax_f.axhline(0.0, color="0.85", lw=0.8, zorder=0)
        self._hist = self._ax_x.stairs(np.zeros(self.bins), np.arange(self.bins + 1.0), fill=True,
                                       color="C1", alpha=0.35, label="samples x = f⁻¹(z)")
        self._line_px, = self._ax_x.plot([], [], color="C3", lw=2, label="p_Z(f(x)) |f′(x)|")
        self._line_nojac, = self._ax_x.plot([], [], color="0.3", ls="--", label="p_Z(f(x)) alone")
        self._ax_x.set(title="data density $p_X(x)$", xlabel="x")
        self._text_integral = self._ax_x.text(0.02, 0.96, "", transform=self._ax_x.transAxes,
                                              va="top", fontsize=9)
        self._animate(self._line_pz, self._line_f, self._hist, self._line_px, self._line_nojac,
                      self._text_integral)
        self._legend_drop: bool | None = None

    def _legend(self, drop: bool) -> None:
        """The p_X panel's legend, above the data (the dashed line only when it is shown)."""
        if drop == self._legend_drop:
            return
        if self._legend_drop is not None:
            self._overlays.remove(self._ax_x.get_legend())
        handles = [self._hist, self._line_px] + ([self._line_nojac] if drop else [])
        self._overlay(self._ax_x.legend(handles=handles, loc="upper right", fontsize=8, framealpha=1.0))
        self._legend_drop = drop

    def _panel_key(self, index: int) -> object:
        return self._legend_drop if self.figure.axes[index] is self._ax_x else None

    def _panel(self) -> list[W.Widget]:
        c = self.controls
        return [c["base"], c["transform"], *(c[k] for m in MAPS_1D.values() for k in m.params),
                c["drop_jacobian"]]

    # -- computation ----------------------------------------------------------------------
    def _z_samples(self, base_name: str) -> Tensor:
        # Fixed z per base: moving a slider then moves the same samples, which reads well.
        if base_name not in self._samples_z:
            g = torch.Generator().manual_seed(self.seed)
            self._samples_z[base_name] = BASES_1D[base_name].sample(self.n_samples, g).reshape(-1, 1)
        return self._samples_z[base_name]

    def _values(self) -> dict[str, float]:
        return {k: float(c.value) for k, c in self.controls.items() if isinstance(c, W.FloatSlider)}

    @property
    def layer(self) -> Flow:
        """The flowlib layer currently used as f (float64), with the sliders' parameters."""
        return self._maps[self.controls["transform"].value]

    def _compute(self) -> None:
        base_name, map_name = self.controls["base"].value, self.controls["transform"].value
        base, spec = BASES_1D[base_name], MAPS_1D[map_name]
        for name, m in MAPS_1D.items():
            for key in m.params:
                _show(self.controls[key], name == map_name)
        f = self._maps[map_name]
        with torch.no_grad():
            spec.apply(f, self._values())
            # The ends of the ranges in x are the preimages of the ends in z (f increases).
            ends = torch.tensor([[-base.tail], [base.tail], [-base.bulk], [base.bulk]], dtype=torch.float64)
            x_ends = f.inverse(ends)[0][:, 0].tolist()
            self.x_window = _sticky_range(self.x_window, x_ends[2], x_ends[3])

            # The integral, on the full range (all but 2e-9 of the mass), by the trapezoid rule
            # on points x = c + s sinh(t) with t equally spaced: as fine as a uniform grid where
            # the mass is, geometrically coarser far out, so heavy tails cost no resolution.
            c, s = 0.5 * (x_ends[2] + x_ends[3]), (x_ends[3] - x_ends[2]) / 8
            t = torch.linspace(math.asinh((x_ends[0] - c) / s), math.asinh((x_ends[1] - c) / s),
                               self.grid_points, dtype=torch.float64)
            x_int = c + s * torch.sinh(t)
            z_int, logdet = f(x_int[:, None])
            log_pz = base.log_prob(z_int[:, 0])
            xs = x_int.numpy()
            self.integral = float(np.trapezoid(torch.exp(log_pz + logdet).numpy(), xs))
            self.integral_without_jacobian = float(np.trapezoid(torch.exp(log_pz).numpy(), xs))

            # The picture, on the plotting window.
            x_plot = torch.linspace(*self.x_window, self.plot_points, dtype=torch.float64)
            z_plot, logdet = f(x_plot[:, None])
            log_pz = base.log_prob(z_plot[:, 0])
            self._x_plot = x_plot.numpy()
            self._px_plot = torch.exp(log_pz + logdet).numpy()
            nojac = torch.exp(log_pz).numpy()
            z_end = 1.15 * base.bulk
            z_grid = torch.linspace(-z_end, z_end, self.plot_points, dtype=torch.float64)
            pz = torch.exp(base.log_prob(z_grid)).numpy()

            z_samples = self._z_samples(base_name)
            x_samples = f.inverse(z_samples)[0]
            # Some maps (the mixture CDF) are inverted numerically: check f(f^-1(z)) = z on the
            # samples and on the range ends rather than trust the solver.
            z_all, z_back = torch.cat([z_samples, ends]), f(torch.cat([x_samples, f.inverse(ends)[0]]))[0]
            self.unsolved = int(((z_back - z_all).abs() > 1e-5 * (1 + z_all.abs())).sum())
            x_samples = x_samples[:, 0].numpy()

        edges = np.linspace(*self.x_window, self.bins + 1)
        counts, _ = np.histogram(x_samples, edges)
        # Normalised by ALL samples, so samples outside the window are not spread over the rest.
        heights = counts / (len(x_samples) * (edges[1] - edges[0]))

        self._line_pz.set_data(z_grid.numpy(), pz)
        self._ax_z.set_xlim(z_grid[0].item(), z_grid[-1].item())
        self._ax_z.set_ylim(0, 1.1 * pz.max())
        z_line = z_plot[:, 0].numpy()
        self._line_f.set_data(self._x_plot, z_line)
        self._ax_f.set_xlim(*self.x_window)
        self._ax_f.set_ylim(*_sticky_range(self._ax_f.get_ylim() if self._laid_out else None,
                                           float(z_line.min()), float(z_line.max())))
        self._hist.set_data(heights, edges)
        self._line_px.set_data(self._x_plot, self._px_plot)
        drop = bool(self.controls["drop_jacobian"].value)
        self._line_nojac.set_data(self._x_plot, nojac)
        self._line_nojac.set_visible(drop)
        self._legend(drop)
        top = max(self._px_plot.max(), heights.max(), nojac.max() if drop else 0.0)
        self._ax_x.set_xlim(*self.x_window)
        self._ax_x.set_ylim(0, _sticky_top(self._ax_x.get_ylim()[1] if self._laid_out else None, float(top)))
        self._laid_out = True

        text = f"∫ p_X dx = {self.integral:.4f}"
        if drop:
            text += f"\n∫ p_Z(f(x)) dx = {self.integral_without_jacobian:.4f}"
        self._text_integral.set_text(text)
        self.status = (
            f"∫ p_X(x) dx = {self.integral:.4f}  (trapezoid rule, {self.grid_points} points, densest "
            f"where the mass is, on [{x_ends[0]:.3g}, {x_ends[1]:.3g}] = f^-1 of the z-range that "
            f"holds all but 2e-9 of p_Z)")
        if drop:
            self.status += (f"\nwithout the factor |f'(x)|: ∫ p_Z(f(x)) dx = "
                            f"{self.integral_without_jacobian:.4f}, not a density")
        if self.unsolved:
            self.status += (f"\nwarning: the numerical inverse f^-1 missed (f(f^-1(z)) != z) at "
                            f"{self.unsolved} of {len(z_all)} points: samples or the integration range "
                            f"may be off.")

    def density_values(self) -> np.ndarray:
        """p_X on the plotting grid (a copy); the grid is :meth:`x_values`."""
        return self._px_plot.copy()

    def x_values(self) -> np.ndarray:
        return self._x_plot.copy()


# ----------------------------------------------------------------------------------------
# 2D: planar and radial flows
# ----------------------------------------------------------------------------------------
def _rotation(degrees: float) -> Tensor:
    t = math.radians(degrees)
    return torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def _softplus_inv(y: float) -> float:
    """The raw value r with softplus(r) = y > 0 (stable for large y)."""
    return y + math.log(-math.expm1(-y))


class PlanarFlow2D(_FigureWidget):
    """Planar or radial flows on a standard-normal base in the plane, stacked 1..K times.

    Generative direction (closed form, :meth:`Planar.inverse` / :meth:`Radial.inverse`):
    x = g_K(... g_1(z)), z ~ N(0, I). Layer 1 has the sliders' parameters; layer k is the
    same layer turned by (k - 1) times the "turn" angle about the origin (w and u, or z0,
    rotated). Why shared-and-rotated rather than random layers: every picture follows from
    the sliders alone (nothing hidden, reproducible), the turn shows how stacking builds
    shapes one layer cannot, and w.u, hence the invertibility condition, is the same for
    every layer (a rotation keeps dot products), so one condition governs the whole stack.

    The density is evaluated on a regular grid of x by the change of variables

        log p_X(x) = log N(f(x); 0, I) + log|det df/dx|,     f = g^{-1} (``forward``),

    using the layers' numerical (planar) or closed-form (radial) ``forward``. Why not push a
    grid of z forward through g and colour the warped cells by p_Z / |det dg/dz|: that
    needs no solver, but its "integral" is a tautology (it equals the integral of p_Z), and
    when g folds space it silently shows a wrong density. On a regular x-grid the integral
    is an honest check, shown live. The plotting box is fitted to the image under g of the
    circle |z| = 4.5 (outside which N(0, I) has 4e-5 of its mass), so the integral reads 1
    unless a sharp ridge is under-resolved by the grid; the status then says so.

    With "enforce invertibility" off, planar layers use u itself; when w.u < -1 the map is
    not invertible. The density panel is then greyed out with the reason from
    :meth:`Planar.invertibility_report`: p_Z(f(x)) |det| does not apply. Samples g(z) are
    still drawn: the push-forward exists, only its density formula fails. A planar layer's
    numerical ``forward`` is checked at every grid point against the closed-form ``inverse``
    (g(f(x)) = x); where the solver missed, the cell is grey and the status says so.

    Controls (``.controls``): ``kind`` (planar / radial), ``enforce_invertibility``,
    ``layers`` (1..max_layers), ``turn`` (degrees between layers), planar ``w1 w2 u1 u2 b``
    (u is the raw parameter; u_hat is drawn), radial ``z0_1 z0_2 alpha beta``. After an
    update: ``density_values()``, ``integral``, ``status``, ``invertible``, ``bounds``.
    """

    def __init__(self, kind: str = "planar", layers: int = 1, enforce_invertibility: bool = True,
                 resolution: int = 200, n_samples: int = 800, max_layers: int = 6, seed: int = 0,
                 image_format: str = "jpeg") -> None:
        if kind not in ("planar", "radial"):
            raise FlowInputError(f"PlanarFlow2D: kind must be 'planar' or 'radial', got {kind!r}")
        if not 1 <= int(layers) <= int(max_layers):
            raise FlowInputError(f"PlanarFlow2D: layers must be in 1..{max_layers}, got {layers}")
        super().__init__(figsize=(9.0, 4.3), image_format=image_format)
        self.resolution, self.max_layers = int(resolution), int(max_layers)
        self.base = StandardNormal(2)
        self._z = torch.randn(n_samples, 2, generator=torch.Generator().manual_seed(seed))
        angles = torch.linspace(0, 2 * math.pi, 361)
        self.bounds: tuple[float, float] | None = None
        self._circle = 4.5 * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
        # One set of layers per kind / mode, allocated once; update() only copies parameters.
        self._layers = {
            ("planar", True): [Planar(2, enforce_invertibility=True) for _ in range(self.max_layers)],
            ("planar", False): [Planar(2, enforce_invertibility=False) for _ in range(self.max_layers)],
            ("radial", True): [Radial(2) for _ in range(self.max_layers)],
        }
        for stack in self._layers.values():
            for layer in stack:
                layer.requires_grad_(False)

        c = self.controls
        c["kind"] = W.ToggleButtons(options=["planar", "radial"], value=kind, description="layer")
        c["enforce_invertibility"] = W.Checkbox(value=enforce_invertibility, indent=False,
                                                description="enforce invertibility (u -> u_hat)")
        c["layers"] = W.IntSlider(value=int(layers), min=1, max=self.max_layers, description="layers K",
                                  continuous_update=True, style={"description_width": "initial"})
        c["turn"] = _slider(60.0, 0.0, 180.0, 5.0, "turn per layer (deg)")
        for key, label, value in [("w1", "w_1", 2.0), ("w2", "w_2", 0.0), ("u1", "u_1", 1.5),
                                  ("u2", "u_2", 0.5), ("b", "b", 0.0)]:
            c[key] = _slider(value, -3.0, 3.0, 0.05, label)
        c["z0_1"] = _slider(0.5, -3.0, 3.0, 0.05, "z0_1")
        c["z0_2"] = _slider(0.0, -3.0, 3.0, 0.05, "z0_2")
        c["alpha"] = _slider(0.5, 0.05, 3.0, 0.05, "alpha")
        c["beta"] = _slider(2.0, -3.0, 5.0, 0.05, "beta")

        self._build_figure()
        self._watch_controls()
        self.update()

    # -- figure ---------------------------------------------------------------------------
    def _build_figure(self) -> None:
        fig = self.figure
        self._ax_z, self._ax_x = fig.subplots(1, 2)
        fig.subplots_adjust(left=0.06, right=0.98, bottom=0.1, top=0.9, wspace=0.18)
        g = torch.linspace(-4, 4, 161)
        zz = torch.stack(torch.meshgrid(g, g, indexing="xy"), dim=-1).reshape(-1, 2)
        pz = self.base.log_prob(zz).exp().reshape(161, 161).numpy()
        self._ax_z.imshow(pz, extent=(-4, 4, -4, 4), origin="lower", cmap=_CMAP, interpolation="bilinear")
        self._scatter_z = self._ax_z.scatter([], [], s=2, color="w", alpha=0.5, linewidths=0)
        self._line_hyperplane, = self._ax_z.plot([], [], color="C1", lw=1.5, label="w.z + b = 0")
        self._line_u, = self._ax_z.plot([], [], color="C3", lw=2, marker="o", markevery=[1], label="u_hat")
        self._point_z0, = self._ax_z.plot([], [], color="C3", marker="x", ms=10, mew=2, ls="", label="z0")
        self._ax_z.set(xlim=(-4, 4), ylim=(-4, 4), title="base $p_Z = N(0, I)$, samples z, layer 1")
        self._legend_kind: str | None = None

        cmap = _colormap_with_grey()
        empty = np.zeros((self.resolution, self.resolution))
        self._image_x = self._ax_x.imshow(empty, extent=(-4, 4, -4, 4), origin="lower", cmap=cmap,
                                          interpolation="bilinear", vmin=0, vmax=1)
        self._scatter_x = self._ax_x.scatter([], [], s=2, color="w", alpha=0.5, linewidths=0)
        self._ax_x.set_title("$p_X(x) = p_Z(f(x))\\,|\\det\\, df/dx|$ and samples $x = g(z)$")
        self._text_integral = self._ax_x.text(0.02, 0.97, "", transform=self._ax_x.transAxes, va="top",
                                              color="w", fontsize=8, family="monospace")
        self._text_warning = self._ax_x.text(0.5, 0.5, "", transform=self._ax_x.transAxes, ha="center",
                                             va="center", fontsize=10, color="darkred", wrap=True,
                                             bbox={"facecolor": "w", "alpha": 0.85, "edgecolor": "darkred"})
        self._animate(self._line_hyperplane, self._line_u, self._point_z0, self._image_x,
                      self._scatter_x, self._text_integral, self._text_warning)

    def _panel(self) -> list[W.Widget]:
        names = ["kind", "enforce_invertibility", "layers", "turn", "w1", "w2", "u1", "u2", "b",
                 "z0_1", "z0_2", "alpha", "beta"]
        return [self.controls[name] for name in names]

    # -- the flow from the controls -------------------------------------------------------
    def _active_layers(self) -> list[Flow]:
        """Layers g_1..g_K (generative order) with the controls' parameters copied in."""
        c = self.controls
        kind, k = c["kind"].value, int(c["layers"].value)
        enforce = bool(c["enforce_invertibility"].value) or kind == "radial"
        stack = self._layers[(kind, enforce)][:k]
        turn = float(c["turn"].value)
        with torch.no_grad():
            if kind == "planar":
                w = torch.tensor([c["w1"].value, c["w2"].value], dtype=torch.float32)
                u = torch.tensor([c["u1"].value, c["u2"].value], dtype=torch.float32)
                for i, layer in enumerate(stack):
                    rot = _rotation(i * turn)
                    layer.w.copy_(rot @ w)
                    layer.u.copy_(rot @ u)
                    layer.b.fill_(c["b"].value)
            else:
                alpha, beta = self._alpha_beta()
                z0 = torch.tensor([c["z0_1"].value, c["z0_2"].value], dtype=torch.float32)
                for i, layer in enumerate(stack):
                    layer.z0.copy_(_rotation(i * turn) @ z0)
                    layer.alpha_raw.fill_(_softplus_inv(alpha))
                    layer.beta_raw.fill_(_softplus_inv(beta + alpha))
        return stack

    def _alpha_beta(self) -> tuple[float, float]:
        # Radial layers are invertible iff beta >= -alpha, and flowlib's Radial keeps
        # beta > -alpha by its parameterisation: a slider below that is clamped, and said so.
        alpha, beta = float(self.controls["alpha"].value), float(self.controls["beta"].value)
        return alpha, max(beta, -0.95 * alpha)

    @property
    def flow(self) -> Compose:
        """The current flow f: x -> z as a flowlib Compose (forward = density direction)."""
        return Compose(list(reversed(self._active_layers())))

    # -- computation ----------------------------------------------------------------------
    def _compute(self) -> None:
        c = self.controls
        kind = c["kind"].value
        for key in ("w1", "w2", "u1", "u2", "b", "enforce_invertibility"):
            _show(c[key], kind == "planar")
        for key in ("z0_1", "z0_2", "alpha", "beta"):
            _show(c[key], kind == "radial")
        layers = self._active_layers()
        flow = Compose(list(reversed(layers)))
        broken = [i for i, layer in enumerate(layers) if not layer.is_invertible()]
        self.invertible = not broken

        with torch.no_grad(), warnings.catch_warnings():
            # Planar.inverse warns when not invertible; this widget says it on screen instead.
            warnings.simplefilter("ignore", RuntimeWarning)
            x_samples = flow.inverse(self._z)[0]
            # The box holds g(disc of radius 4.5) (g maps the circle onto the disc's boundary),
            # hence all but 4e-5 of the mass; without invertibility, just the samples.
            edge = flow.inverse(self._circle)[0] if self.invertible else x_samples
        self.bounds = lo, hi = _sticky_range(self.bounds, float(edge.min()), float(edge.max()), shrink=0.7)

        if self.invertible:
            lines = self._show_density(flow, layers)
        else:
            lines = self._show_not_invertible(layers[broken[0]], broken[0])
        if kind == "radial" and float(c["beta"].value) < -0.95 * float(c["alpha"].value):
            lines.append(f"beta clamped to -0.95 alpha = {self._alpha_beta()[1]:.3f}: flowlib's Radial keeps "
                         f"beta > -alpha (its invertibility condition) by its parameterisation.")
        self.status = "\n".join(lines)

        self._image_x.set_extent((lo, hi, lo, hi))
        self._ax_x.set_xlim(lo, hi)
        self._ax_x.set_ylim(lo, hi)
        self._scatter_x.set_offsets(x_samples.numpy())
        # White dots read on the colour map, black ones on the grey of an undefined density.
        self._scatter_x.set_facecolor("w" if self.invertible else "k")
        self._scatter_z.set_offsets(self._z.numpy())
        self._text_integral.set_text(
            f"∫ p_X dx = {self.integral:.3f}" if self.invertible else "∫ p_X dx: undefined")
        self._draw_layer_one(layers[0], kind)
        self._legend(kind)

    def _legend(self, kind: str) -> None:
        """The base panel's legend: the hyperplane and u_hat (planar) or z0 (radial)."""
        if kind == self._legend_kind:
            return
        if self._legend_kind is not None:
            self._overlays.remove(self._ax_z.get_legend())
        handles = [self._line_hyperplane, self._line_u] if kind == "planar" else [self._point_z0]
        self._overlay(self._ax_z.legend(handles=handles, loc="lower left", fontsize=7, framealpha=1.0))
        self._legend_kind = kind

    def _panel_key(self, index: int) -> object:
        return self._legend_kind if self.figure.axes[index] is self._ax_z else None

    def _density_on_grid(self, flow: Compose) -> tuple[np.ndarray, float, int]:
        """p_X at the cell centres of the grid over ``self.bounds``, the cell size, misses.

        The numerical solve x -> z is checked with the closed form: g(f(x)) must give x back.
        A grid point where it does not is NaN (shown grey, left out), never trusted.
        """
        lo, hi = self.bounds
        n = self.resolution
        h = (hi - lo) / n
        axis = torch.linspace(lo + h / 2, hi - h / 2, n)
        grid = torch.stack(torch.meshgrid(axis, axis, indexing="xy"), dim=-1).reshape(-1, 2)
        with torch.no_grad():
            z, logdet = flow(grid)
            x_back = flow.inverse(z)[0]
            log_px = self.base.log_prob(z) + logdet
        miss = ((x_back - grid).norm(dim=1) > 1e-3 * (1 + grid.norm(dim=1))) | ~torch.isfinite(log_px)
        density = log_px.exp().masked_fill(miss, math.nan).reshape(n, n).numpy()
        return density, h, int(miss.sum())

    def _show_density(self, flow: Compose, layers: list[Flow]) -> list[str]:
        density, h, self.unsolved = self._density_on_grid(flow)
        self._density = density
        finite = np.nan_to_num(density, nan=0.0)
        self.integral = float(finite.sum() * h * h)  # the midpoint rule
        # The same sum on every other grid point (cells twice as wide): if it differs, the
        # grid does not resolve p_X and the integral is not to be trusted.
        coarse = float(finite[::2, ::2].sum() * 4 * h * h)
        self._image_x.set_data(np.ma.masked_invalid(density))
        # Colours clipped at the 99.8th percentile, so that one sharp ridge does not hide the rest.
        self._image_x.set_clim(0.0, float(np.quantile(finite, 0.998)) or 1.0)
        self._text_warning.set_visible(False)
        n, (lo, hi) = self.resolution, self.bounds
        lines = [f"∫ p_X(x) dx on the {n}x{n} grid over [{lo:.3g}, {hi:.3g}]^2 = {self.integral:.4f}"]
        finest = self._finest_feature(layers)
        if abs(self.integral - coarse) > 5e-3 or finest < 2 * h:
            lines.append(f"note: p_X has features about {finest:.2g} wide (sharpest layer) for grid cells "
                         f"{h:.2g} wide, and on every other grid point its integral is {coarse:.4f}: "
                         f"the grid under-resolves it, so the integral above is only approximate.")
        if self.unsolved:
            lines.append(f"warning: the numerical inverse f = g^-1 did not converge at {self.unsolved} of "
                         f"{n * n} grid points (g(f(x)) != x): shown grey, left out of the integral.")
        lines.append(layers[0].invertibility_report())
        return lines

    def _show_not_invertible(self, layer: Flow, index: int) -> list[str]:
        n = self.resolution
        self.unsolved = 0
        self._density = np.full((n, n), np.nan)
        self.integral = float("nan")
        self._image_x.set_data(np.ma.masked_invalid(self._density))
        # Only a raw-mode planar layer can fail (Radial keeps beta > -alpha by construction).
        condition = f"w.u = {layer.w_dot_u_hat():.3f} < -1" if isinstance(layer, Planar) else "see below"
        self._text_warning.set_text(_wrap(f"NOT INVERTIBLE: {condition}\nthe map folds the plane, so "
                                          f"p_Z(f(x)) |det df/dx| is not a density.\n"
                                          f"The samples g(z) are still valid."))
        self._text_warning.set_visible(True)
        return [f"layer {index + 1}: {layer.invertibility_report()}",
                "density not shown: the change of variables needs an invertible map; "
                "turn 'enforce invertibility' on, or make w.u >= -1."]

    def _draw_layer_one(self, layer: Flow, kind: str) -> None:
        with torch.no_grad():
            if kind == "planar":
                w, b, u_hat = layer.w.numpy(), float(layer.b), layer.u_hat().numpy()
                norm2 = float(w @ w)
                if norm2 > 1e-12:
                    p0 = -b * w / norm2
                    d = np.array([-w[1], w[0]]) / math.sqrt(norm2)
                    ends = np.stack([p0 - 10 * d, p0 + 10 * d])
                    self._line_hyperplane.set_data(ends[:, 0], ends[:, 1])
                else:
                    self._line_hyperplane.set_data([], [])
                    p0 = np.zeros(2)
                arrow = np.stack([p0, p0 + u_hat])
                self._line_u.set_data(arrow[:, 0], arrow[:, 1])
                self._point_z0.set_data([], [])
            else:
                z0 = layer.z0.numpy()
                self._point_z0.set_data([z0[0]], [z0[1]])
                self._line_hyperplane.set_data([], [])
                self._line_u.set_data([], [])

    @staticmethod
    def _finest_feature(layers: list[Flow]) -> float:
        """The width (in x) of the sharpest detail a single layer puts into p_X.

        Planar, c = w.u_hat: along w the map a -> a + c tanh(a + b) bends over a width ~1
        in a, i.e. 1/||w|| in x; when c < 0 it squeezes a band around a = -b to a ridge of
        width ~(1 + c)^(3/2)/||w||. Radial: a core of radius ~alpha around z0, squeezed to
        alpha + beta when beta < 0.
        """
        widths = []
        with torch.no_grad():
            for layer in layers:
                if isinstance(layer, Planar):
                    c, norm = layer.w_dot_u_hat(), float(layer.w.norm())
                    # max(.., 0): float32 rounding can put w.u_hat a hair below -1.
                    widths.append(min(1.0, max(1.0 + min(c, 0.0), 0.0) ** 1.5) / max(norm, 1e-6))
                else:
                    alpha, beta = (float(t) for t in layer.alpha_beta())
                    widths.append(alpha + min(beta, 0.0))
        return min(widths)

    def density_values(self) -> np.ndarray:
        """p_X on the grid (resolution x resolution, rows = x_2); all NaN when not invertible."""
        return self._density.copy()


def _wrap(text: str, width: int = 46) -> str:
    return "\n".join(textwrap.fill(part, width) for part in text.split("\n"))


def _colormap_with_grey() -> Colormap:
    # NaN (an undefined density) shows as grey.
    return matplotlib.colormaps[_CMAP].with_extremes(bad="0.8")
