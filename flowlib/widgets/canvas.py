"""The one canvas of every flowlib widget: a matplotlib figure drawn once, re-rendered as a PNG.

A widget draws its figure ONCE. On every move of a control it recomputes its data, hands it to
the artists marked *animated* (``set_data``, ``set_offsets``, ``set_array``...) and the canvas
redraws only those, above a cached picture of everything else (blitting), then encodes the
pixels into an ``ipywidgets.Image``. That needs no interactive matplotlib backend, so it works
in JupyterLab, classic Notebook, VS Code, Colab and Binder alike, and aims at an update under
150 ms on a 2-core CPU (``benchmarks/widget_latency.py`` measures it).

The widget is laid out for the notebook column: the figure on top (at most ``MAX_WIDTH_PX``
wide, and shrunk by the browser if the column is narrower still), the controls below it in
rows that wrap, and the status text under them. A 1280 px JupyterLab window with its file
browser open leaves an output area about 850 px wide (``tests/test_browser.py`` checks it).

For tests and scripts every widget exposes ``.controls`` (name -> ipywidget), ``update()``
(recompute and redraw, synchronously), ``status``, ``image_bytes()`` / ``png()`` and ``.widget``
(the assembled box, also shown by ``_ipython_display_``).
"""

from __future__ import annotations

import html
import io
import itertools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import ipywidgets as W
import PIL.Image
import torch
from matplotlib.artist import Artist
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.transforms import Bbox, IdentityTransform

from flowlib._checks import choice, integer

__all__ = ["ControlledUpdates", "Canvas", "MAX_WIDTH_PX", "SLIDER_WIDTH", "slider", "show", "row",
           "nice_range", "sticky_range", "sticky_top"]

#: The widest figure a widget draws, in pixels: it fits the output area of a 1280 px JupyterLab
#: window with the file browser open (about 850 px), with room for a scroll bar.
MAX_WIDTH_PX = 800


class ControlledUpdates:
    """The control plumbing every widget shares.

    A subclass sets ``self.controls`` (name -> ipywidget) and implements ``update()``;
    ``_watch_controls()`` then redraws on every change of a control, and ``hold_updates()``
    lets several controls change with one redraw.
    """

    controls: dict
    _busy: bool = False
    _held: bool = False

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


class Canvas(ControlledUpdates):
    """A matplotlib figure drawn once and re-rendered into an ``ipywidgets.Image`` on change.

    Rendering blits: the static parts (axes, ticks, labels, fixed images) are drawn once into a
    cached background; an update restores it and draws only the ``animated`` artists (the
    data), puts the pixels of the overlays (legends) back on top, and encodes the picture (PNG
    for lines and text, JPEG for heat maps: ten times faster to encode). When the limits of a
    panel change (widgets move them in steps, with some hysteresis), only that panel's strip
    of the background is repainted. Torch runs on ``threads`` threads during an update (1 by
    default: on a busy 2-core machine, threads competing for the cores cost more than they bring).

    A subclass builds its artists on ``self.figure``, implements ``_compute()`` (controls ->
    artists, ``status``) and ``_rows()`` (the rows of controls shown under the figure).
    """

    def __init__(self, figsize: tuple[float, float], dpi: int = 80, image_format: str = "png",
                 threads: int = 1) -> None:
        who = type(self).__name__
        self.image_format = choice(image_format, "image_format", ("png", "jpeg"), who)
        self.threads = integer(threads, "threads", who)
        dpi = integer(dpi, "dpi", who)
        # A bare Figure (not pyplot): no global state, and the inline backend does not display
        # a second, static copy of it when the cell ends.
        self.figure = Figure(figsize=figsize, dpi=dpi)
        FigureCanvasAgg(self.figure)
        self.controls: dict[str, W.ValueWidget] = {}
        self.status = ""
        #: How many renders had to redraw (part of) the background (a panel's limits or legend changed).
        self.relayouts = 0
        # Shown at its own size in pixels (not stretched to the column: align_self), and shrunk by
        # the browser rather than let it overflow a column narrower still (max_width).
        width_px = round(figsize[0] * dpi)
        self._image = W.Image(format=image_format, layout=W.Layout(width=f"{width_px}px", max_width="100%",
                                                                   height="auto", align_self="flex-start"))
        self._status_html = W.HTML(layout=W.Layout(max_width=f"{MAX_WIDTH_PX}px"))
        self._box: W.Widget | None = None
        self._dynamic: list[Artist] = []
        self._overlays: list[Artist] = []
        self._overlay_pixels: list = []
        self._background = None
        self._axes_keys: list[tuple] = []

    # -- what a widget declares -------------------------------------------------------------
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

    def _compute(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _rows(self) -> list[W.Widget]:  # pragma: no cover - abstract
        """The rows of controls, in the order they are shown under the figure."""
        raise NotImplementedError

    # -- one update ----------------------------------------------------------------------------
    def update(self) -> None:
        """Recompute everything from the controls, update the artists and re-render."""
        self._busy = True
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(self.threads)
            self._compute()
        finally:
            torch.set_num_threads(threads)
            self._busy = False
        self._status_html.value = "<br>".join(html.escape(line) for line in self.status.splitlines())
        self._render()

    def _layout_key(self) -> list[tuple]:
        """What changes each panel's static background: its axis limits and its legend."""
        return [(ax.get_xlim(), ax.get_ylim(), self._panel_key(i)) for i, ax in enumerate(self.figure.axes)]

    def _strips(self) -> list[Bbox]:
        """The part of the figure each panel owns. Panels sit in one row, with their tick
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
        """Bring the cached background up to date with the axis limits and legends."""
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
        if self.image_format == "png":  # crisp lines and text; fast, light compression (a local socket)
            pixels.save(buffer, format="png", compress_level=1)
        else:  # heat maps: ten times faster to encode than PNG, and half the bytes to send
            pixels.convert("RGB").save(buffer, format="jpeg", quality=90)
        self._image.value = buffer.getvalue()

    def image_bytes(self) -> bytes:
        """The image currently shown, encoded as ``image_format`` (PNG or JPEG)."""
        return bytes(self._image.value)

    png = image_bytes  # the name the image widgets used

    # -- the assembled widget -------------------------------------------------------------------
    @property
    def widget(self) -> W.Widget:
        """The whole widget: the figure, the rows of controls below it, the status (built once)."""
        if self._box is None:
            self._box = W.VBox([self._image, *self._rows(), self._status_html],
                               layout=W.Layout(max_width="100%"))
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


# ----------------------------------------------------------------------------------------
# The controls: one slider, one row, one way to hide
# ----------------------------------------------------------------------------------------
#: The width of one slider (with its label and readout); two sit side by side in a row.
SLIDER_WIDTH = "300px"


def slider(value: float, lo: float, hi: float, step: float, description: str) -> W.FloatSlider:
    """The slider of every widget: continuous updates, two decimals, the label at its own width."""
    return W.FloatSlider(value=value, min=lo, max=hi, step=step, description=description,
                         continuous_update=True, readout_format=".2f",
                         style={"description_width": "initial"}, layout=W.Layout(width=SLIDER_WIDTH))


def row(controls: Sequence[W.Widget]) -> W.HBox:
    """Controls side by side, wrapping onto the next line where the notebook column ends."""
    return W.HBox(list(controls), layout=W.Layout(flex_flow="row wrap", max_width="100%",
                                                  align_items="center"))


def show(control: W.Widget, visible: bool) -> None:
    """Show or hide a control (hidden controls take no room in their row)."""
    control.layout.display = None if visible else "none"


# ----------------------------------------------------------------------------------------
# Axis limits that move in steps, so that small slider moves keep the cached background
# ----------------------------------------------------------------------------------------
def nice_range(lo: float, hi: float, pad: float = 0.1) -> tuple[float, float]:
    """[lo, hi] padded and rounded outwards to a round step (1, 2 or 5 times a power of 10).

    >>> nice_range(0.13, 0.88)
    (0.0, 1.0)
    """
    span = max(hi - lo, 1e-9)
    lo, hi = lo - pad * span, hi + pad * span
    raw = (hi - lo) / 10
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    return math.floor(lo / step) * step, math.ceil(hi / step) * step


def sticky_range(current: tuple[float, float] | None, lo: float, hi: float,
                 shrink: float = 0.45) -> tuple[float, float]:
    """Keep the current axis range while it holds [lo, hi] and is not much too wide.

    >>> sticky_range((0.0, 1.0), 0.2, 0.8)   # still fits: unchanged
    (0.0, 1.0)
    """
    if current is not None and current[0] <= lo and hi <= current[1] \
            and hi - lo >= shrink * (current[1] - current[0]):
        return current
    return nice_range(lo, hi, pad=0.15)


def sticky_top(current: float | None, top: float) -> float:
    """The upper y-limit of a density plot, changed only when the peak leaves [0.4, 1] of it."""
    if current is not None and 0.4 * current <= top <= current:
        return current
    return 1.4 * top if top > 0 else 1.0
