"""An additive coupling you can shear, and NICE's scaling layer, under sliders (lecture 3).

The plane's simplest NICE: one additive coupling, then (optionally) the diagonal scaling,

    h = (x_1, x_2 + t(x_1)),   t(x_1) = a x_1 + b sin(c x_1),      z = (e^{s_1} h_1, e^{s_2} h_2),

applied to a shape in x (the square [-1, 1]^2 or the unit disc), a grid and points inside it.
The widget measures the area of the image with the shoelace formula on the mapped boundary
and the Jacobian determinant by autograd at the points, so that "det = 1, the area is kept"
and "the scaling multiplies every area by exp(s_1 + s_2)" are read off measurements, not
asserted.

>>> w = ShearAndScale2D(n_points=20)
>>> round(w.area_before, 4), round(w.area_after, 4), w.det_range
(4.0, 4.0, (1.0, 1.0))
>>> w.controls["scaling"].value, w.controls["s1"].value = True, 0.5
>>> round(w.area_after / w.area_before, 4) == round(math.exp(0.5), 4)
True
"""

from __future__ import annotations

import math

import ipywidgets as W
import numpy as np
import torch
from matplotlib.collections import LineCollection
from matplotlib.patches import Polygon
from torch import Tensor

from flowlib._checks import FlowInputError, choice, flag, integer, number
from flowlib.widgets.canvas import Canvas, row, show, slider, sticky_range

__all__ = ["ShearAndScale2D", "SHAPES", "SHEAR_SLIDERS", "shoelace_area"]

#: The shapes in x and their exact areas: the square [-1, 1]^2 and the unit disc.
SHAPES: dict[str, float] = {"square": 4.0, "disc": math.pi}

#: The sliders: name -> (label, lowest, highest, step, default).
SHEAR_SLIDERS: dict[str, tuple[str, float, float, float, float]] = {
    "a": ("a (slope of t)", -2.0, 2.0, 0.05, 0.8),
    "b": ("b (wiggle of t)", -1.5, 1.5, 0.05, 0.5),
    "c": ("c (frequency of t)", 0.0, 4.0, 0.1, 2.0),
    "s1": ("s_1 (log-scale of z_1)", -1.0, 1.0, 0.05, 0.0),
    "s2": ("s_2 (log-scale of z_2)", -1.0, 1.0, 0.05, 0.0),
}


def shoelace_area(points: Tensor | np.ndarray) -> float:
    """The area enclosed by a closed polygon whose vertices ``points`` (n, 2) are in order.

    >>> shoelace_area(torch.tensor([[0.0, 0.0], [2.0, 0.0], [2.0, 1.0], [0.0, 1.0]]))
    2.0
    """
    p = torch.as_tensor(points, dtype=torch.float64)
    if p.dim() != 2 or p.shape[1] != 2 or p.shape[0] < 3:
        raise FlowInputError(f"shoelace_area: expected at least 3 vertices of shape (n, 2), got "
                             f"{tuple(p.shape)}")
    x1, x2 = p[:, 0], p[:, 1]
    return 0.5 * abs(float((x1 * x2.roll(-1) - x2 * x1.roll(-1)).sum()))


def _boundary(shape: str, n: int) -> Tensor:
    """n points along the shape's boundary, counter-clockwise (float64)."""
    if shape == "disc":
        angle = torch.linspace(0, 2 * math.pi, n + 1, dtype=torch.float64)[:-1]
        return torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    side = max(n // 4, 1)
    t = torch.linspace(-1, 1, side + 1, dtype=torch.float64)[:-1]
    one = torch.ones_like(t)
    return torch.cat([torch.stack(s, dim=1) for s in [(t, -one), (one, t), (-t, one), (-one, -t)]])


def _inside(shape: str, x: Tensor) -> Tensor:
    if shape == "disc":
        return (x**2).sum(dim=1) <= 1.0
    return (x.abs() <= 1.0).all(dim=1)


class ShearAndScale2D(Canvas):
    """One additive coupling of the plane, then NICE's diagonal scaling, on a shape you can see.

    Left panel: the shape in x (filled), a grid of lines inside it and ``n_points`` points,
    coloured by x_1. Right panel: their images under f, with the outline of the shape in x
    (dashed) for comparison. Both panels share one scale, so areas compare by eye. The map is

        h_1 = x_1,   h_2 = x_2 + t(x_1),   t(x_1) = a x_1 + b sin(c x_1),

    followed, when "scaling layer" is ticked, by z = (e^{s_1} h_1, e^{s_2} h_2) (otherwise
    z = h). Vertical lines x_1 = const move rigidly (each by its own t(x_1)), horizontal lines
    bend into copies of the graph of t: the coupling shears, and its determinant is 1
    whatever t is. Only the scaling changes areas, by exp(s_1 + s_2), the same everywhere.

    Measured on every update: ``area_before`` and ``area_after`` (the shoelace formula on
    ``boundary_points`` vertices of the boundary, before and after the map), ``det_range``
    (the smallest and largest det df/dx over the points, from autograd's Jacobian) and
    ``scale_factor`` = exp(s_1 + s_2) (1 without the scaling). Controls (``.controls``):
    ``shape`` (square / disc), ``a``, ``b``, ``c``, ``scaling`` (a checkbox), ``s1``, ``s2``
    (shown while the scaling is on); ranges and defaults in :data:`SHEAR_SLIDERS`.
    :meth:`transform` applies the current map to any points.
    """

    def __init__(self, shape: str = "square", scaling: bool = False, n_points: int = 400,
                 boundary_points: int = 4000, grid_lines: int = 9, seed: int = 0,
                 image_format: str = "png", **values: float) -> None:
        who = "ShearAndScale2D"
        choice(shape, "shape", tuple(SHAPES), who)
        flag(scaling, "scaling", who)
        unknown = sorted(set(values) - set(SHEAR_SLIDERS))
        if unknown:
            raise FlowInputError(f"{who}: unknown keyword(s) {unknown}; the sliders are "
                                 f"{list(SHEAR_SLIDERS)}")
        start = {}
        for key, (_, lo, hi, _, default) in SHEAR_SLIDERS.items():
            start[key] = number(values.get(key, default), key, who, minimum=lo, maximum=hi)
        self.n_points = integer(n_points, "n_points", who)
        self.boundary_points = integer(boundary_points, "boundary_points", who, minimum=16)
        self.grid_lines = integer(grid_lines, "grid_lines", who, minimum=2)
        seed = integer(seed, "seed", who, minimum=0)
        # 760 px wide: it fits the notebook column of a 1280 px window with the file browser open.
        super().__init__(figsize=(9.5, 4.4), image_format=image_format)
        self.area_before = self.area_after = float("nan")
        self.det_range = (float("nan"), float("nan"))
        self.scale_factor = 1.0
        self.bounds: tuple[float, float] | None = None

        g = torch.Generator().manual_seed(seed)
        self._boundaries = {s: _boundary(s, self.boundary_points) for s in SHAPES}
        self._points = {}
        for s in SHAPES:  # uniform in the shape: uniform in the square, the disc's by rejection
            cloud = torch.empty(0, 2, dtype=torch.float64)
            while len(cloud) < self.n_points:
                draw = 2 * torch.rand(2 * self.n_points, 2, generator=g, dtype=torch.float64) - 1
                cloud = torch.cat([cloud, draw[_inside(s, draw)]])
            self._points[s] = cloud[: self.n_points]
        self._lines = {s: self._grid(s) for s in SHAPES}

        c = self.controls
        c["shape"] = W.ToggleButtons(options=list(SHAPES), value=shape, description="shape in x")
        c["scaling"] = W.Checkbox(value=scaling, indent=False, description="scaling layer z = exp(s) h",
                                  layout=W.Layout(width="auto"))
        for key, (label, lo, hi, step, _) in SHEAR_SLIDERS.items():
            c[key] = slider(start[key], lo, hi, step, label)

        self._build_figure()
        self._watch_controls()
        self.update()

    def _grid(self, shape: str, per_line: int = 120) -> Tensor:
        """Grid lines (lines, per_line, 2): vertical ones first, then horizontal; NaN outside the shape."""
        levels = torch.linspace(-1, 1, self.grid_lines, dtype=torch.float64)
        along = torch.linspace(-1, 1, per_line, dtype=torch.float64)
        vertical = [torch.stack([torch.full_like(along, float(v)), along], 1) for v in levels]
        lines = torch.stack(vertical + [line.flip(1) for line in vertical])
        outside = ~_inside(shape, lines.reshape(-1, 2)).reshape(lines.shape[:2])
        return lines.masked_fill(outside.unsqueeze(-1), math.nan)

    # -- figure ---------------------------------------------------------------------------
    def _build_figure(self) -> None:
        fig = self.figure
        self._ax_x, self._ax_z = fig.subplots(1, 2)
        fig.subplots_adjust(left=0.06, right=0.98, bottom=0.08, top=0.9, wspace=0.15)
        self._ax_x.set_title("x: the shape, a grid and points", fontsize=10)
        self._ax_z.set_title("z = f(x); dashed: the shape in x", fontsize=10)
        self._artists = {}
        for name, ax in (("x", self._ax_x), ("z", self._ax_z)):
            ax.set_aspect("equal", adjustable="box")
            fill = Polygon(np.zeros((3, 2)), closed=True, facecolor="C0", alpha=0.2, edgecolor="C0", lw=1.2)
            ax.add_patch(fill)
            vertical = LineCollection([], colors="C0", linewidths=0.7)
            horizontal = LineCollection([], colors="C1", linewidths=0.7)
            ax.add_collection(vertical)
            ax.add_collection(horizontal)
            points = ax.scatter([], [], s=6, c=[], cmap="plasma", vmin=-1, vmax=1, linewidths=0)
            text = ax.text(0.03, 0.97, "", transform=ax.transAxes, va="top", fontsize=9, family="monospace",
                           bbox={"facecolor": "w", "alpha": 0.85, "edgecolor": "0.7"})
            self._artists[name] = (fill, vertical, horizontal, points, text)
            self._animate(fill, vertical, horizontal, points, text)
        self._outline, = self._ax_z.plot([], [], color="0.3", ls="--", lw=1)
        self._animate(self._outline)

    def _rows(self) -> list[W.Widget]:
        c = self.controls
        return [row([c["shape"], c["scaling"]]), row([c["a"], c["b"], c["c"]]), row([c["s1"], c["s2"]])]

    # -- the map --------------------------------------------------------------------------
    def shift(self, x1: Tensor) -> Tensor:
        """t(x_1) = a x_1 + b sin(c x_1) with the sliders' a, b, c."""
        a, b, c = (float(self.controls[k].value) for k in ("a", "b", "c"))
        return a * x1 + b * torch.sin(c * x1)

    def log_scale(self) -> Tensor:
        """(s_1, s_2) of the scaling layer, zeros while it is off."""
        if not self.controls["scaling"].value:
            return torch.zeros(2, dtype=torch.float64)
        return torch.tensor([float(self.controls["s1"].value), float(self.controls["s2"].value)],
                            dtype=torch.float64)

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z = f(x) for points x (n, 2) and log|det df/dx| (n,), for the current controls."""
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != 2:
            raise FlowInputError(f"ShearAndScale2D.transform: expected points of shape (n, 2), got "
                                 f"{getattr(x, 'shape', type(x).__name__)}")
        x = x.to(torch.float64)
        h = torch.stack([x[:, 0], x[:, 1] + self.shift(x[:, 0])], dim=1)
        s = self.log_scale()
        return h * torch.exp(s), s.sum().expand(x.shape[0])

    def jacobian_det(self, x: Tensor) -> Tensor:
        """det df/dx at each point, from autograd's Jacobian (each z_i depends on x_i only)."""
        with torch.enable_grad():
            x = x.detach().to(torch.float64).requires_grad_(True)
            z, _ = self.transform(x)
            rows = [torch.autograd.grad(z[:, i].sum(), x, retain_graph=i == 0)[0] for i in range(2)]
        return (rows[0][:, 0] * rows[1][:, 1] - rows[0][:, 1] * rows[1][:, 0]).detach()

    # -- computation ----------------------------------------------------------------------
    def _compute(self) -> None:
        c = self.controls
        shape, scaling = c["shape"].value, bool(c["scaling"].value)
        show(c["s1"], scaling)
        show(c["s2"], scaling)
        boundary, points, lines = self._boundaries[shape], self._points[shape], self._lines[shape]
        with torch.no_grad():
            z_boundary, _ = self.transform(boundary)
            z_points, _ = self.transform(points)
            z_lines = self.transform(lines.reshape(-1, 2))[0].reshape(lines.shape)
        det = self.jacobian_det(points)
        self.area_before, self.area_after = shoelace_area(boundary), shoelace_area(z_boundary)
        self.det_range = (round(float(det.min()), 12), round(float(det.max()), 12))
        self.scale_factor = math.exp(float(self.log_scale().sum()))

        lo = min(-1.0, float(z_boundary.min()))
        hi = max(1.0, float(z_boundary.max()))
        self.bounds = sticky_range(self.bounds, lo, hi)
        colour = points[:, 0].numpy()
        n = self.grid_lines
        for name, (b, p, ls) in (("x", (boundary, points, lines)), ("z", (z_boundary, z_points, z_lines))):
            fill, vertical, horizontal, scatter, _ = self._artists[name]
            fill.set_xy(b.numpy())
            vertical.set_segments(list(ls[:n].numpy()))
            horizontal.set_segments(list(ls[n:].numpy()))
            scatter.set_offsets(p.numpy())
            scatter.set_array(colour)
        self._outline.set_data(*np.append(boundary.numpy(), boundary[:1].numpy(), axis=0).T)
        self._artists["x"][4].set_text(f"area {self.area_before:.4f}")
        self._artists["z"][4].set_text(f"area {self.area_after:.4f}\ndet  {self._det_text()}")
        for ax in (self._ax_x, self._ax_z):
            ax.set_xlim(*self.bounds)
            ax.set_ylim(*self.bounds)

        a, b, cf = (float(c[k].value) for k in ("a", "b", "c"))
        lines_out = [
            f"t(x_1) = {a:.2f} x_1 + {b:.2f} sin({cf:.1f} x_1)"
            + (f";  scaling: s = ({float(c['s1'].value):.2f}, {float(c['s2'].value):.2f})" if scaling else
               ";  no scaling layer"),
            f"area of the {shape} in x: {self.area_before:.4f} (exactly {SHAPES[shape]:.4f} for the shape; "
            f"shoelace formula on {len(boundary)} boundary vertices)",
            f"area of its image z = f(x): {self.area_after:.4f}, "
            f"ratio {self.area_after / self.area_before:.4f}",
            f"det df/dx at the {len(points)} points (autograd): {self._det_text()};  "
            f"exp(s_1 + s_2) = {self.scale_factor:.4f}",
        ]
        self.status = "\n".join(lines_out)

    def _det_text(self) -> str:
        lo, hi = self.det_range
        return f"{lo:.4f}" if abs(hi - lo) < 5e-5 else f"{lo:.4f} to {hi:.4f}"
