"""The knots of a rational-quadratic spline under sliders: a transformer that bends (lecture 6).

An affine transformer y = e^s x + t can only stretch and shift; the monotone rational-quadratic
spline of Durkan et al. (2019) (:class:`flowlib.splines.RationalQuadraticSpline`) bends: on
[-B, B] it is K pieces joined at knots (x_k, y_k) with slopes d_k > 0 there, the identity
outside. The widget builds the spline's parameters from the sliders (equal bin widths, the
heights and interior slopes chosen by hand), hands them to ``RationalQuadraticSpline`` and
draws what that object returns: the map y = tau(x) with its knots (read from
``RationalQuadraticSpline.knots``), its derivative (the exponential of the log-derivative the
spline reports, checked against autograd on every update) and one of two densities:

* ``view="push"``: the density of y = tau(x) for x ~ N(0, 1), p_Y(y) = p_X(x) / tau'(x);
* ``view="flow"``: the 1D flow with tau as its map from data to latent,
  p_X(x) = p_Z(tau(x)) tau'(x) with p_Z = N(0, 1).

Both are integrated numerically on every update (``integral``), and so is the mass of each bin
(``bin_masses``: the mass between consecutive knots, on the y-axis for "push", on the x-axis
for "flow").

>>> w = SplineKnots(grid_points=2001)
>>> round(w.integral, 4), w.monotone, [round(float(v), 2) for v in w.knots[0]]
(1.0, True, [-3.0, -1.5, 0.0, 1.5, 3.0])
>>> w.controls["d2"].value = 3.0
>>> ratio = w.knot_density()[2] / w.knot_density(with_slope=False)[2]  # p_Y at y = tau(0), over p_X(0)
>>> round(float(ratio), 4)
0.3333
"""

from __future__ import annotations

import math

import ipywidgets as W
import numpy as np
import torch
from torch import Tensor

from flowlib._checks import FlowInputError, choice, integer, number
from flowlib.splines import RationalQuadraticSpline
from flowlib.widgets.canvas import Canvas, row, show, slider, sticky_top

__all__ = ["SplineKnots", "SPLINE_SLIDERS", "SPLINE_VIEWS", "MAX_BINS"]

#: The most bins the widget offers (each has a height slider; the interior knots have slopes).
MAX_BINS = 5

#: The sliders: name -> (label, lowest, highest, step, default). ``h<k>`` is the log of the
#: relative height of bin k (the spline's unnormalised height: a softmax makes the heights sum
#: to 2B), ``d<k>`` the derivative at interior knot k (knots 0 and K have slope 1, as the tails).
SPLINE_SLIDERS: dict[str, tuple[str, float, float, float, float]] = {
    **{f"h{k}": (f"log-height of bin {k}", -1.5, 1.5, 0.05, 0.0) for k in range(1, MAX_BINS + 1)},
    **{f"d{k}": (f"slope d_{k}", 0.2, 4.0, 0.05, 1.0) for k in range(1, MAX_BINS)},
}

#: The densities the third panel can show: value -> button label.
SPLINE_VIEWS: dict[str, str] = {
    "push": "y = tau(x), x ~ N(0, 1)",
    "flow": "flow: p_Z(tau(x)) tau'(x)",
}

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _normal_log_pdf(v: Tensor) -> Tensor:
    return -0.5 * v * v - _LOG_SQRT_2PI


class SplineKnots(Canvas):
    """One rational-quadratic spline (Durkan et al., 2019) whose knots move under sliders.

    ``bins`` K (2 to :data:`MAX_BINS`) equal-width bins on [-``bound``, ``bound``]. Sliders
    (``.controls``): ``bins``, ``view`` (see :data:`SPLINE_VIEWS`), ``h1`` .. ``h5`` (the
    log-heights of the bins; those past K are hidden), ``d1`` .. ``d4`` (the slopes at the
    interior knots; those past K - 1 are hidden); ranges in :data:`SPLINE_SLIDERS`.

    Panels: y = tau(x) with its knots and the identity; dtau/dx with the knot slopes; the
    density of the chosen view with N(0, 1) dashed. Measured on every update: ``knots`` (x
    knots, y knots, slopes; from ``RationalQuadraticSpline.knots``), ``monotone`` (tau strictly
    increasing on the grid and tau' > 0), ``min_slope``, ``autograd_error`` (the largest
    difference between tau' as the spline reports it and autograd's), ``integral`` (of the
    density shown, trapezoid rule on ``grid_points`` points of [-8, 8]) and ``bin_masses``.
    :meth:`transform` applies the current spline to any x; :meth:`parameters` returns the
    ``h`` it is built from.
    """

    def __init__(self, bins: int = 4, bound: float = 3.0, view: str = "push", grid_points: int = 4001,
                 image_format: str = "png", **values: float) -> None:
        who = "SplineKnots"
        bins = integer(bins, "bins", who, minimum=2)
        if bins > MAX_BINS:
            raise FlowInputError(f"{who}: bins must be an integer from 2 to {MAX_BINS}, got {bins}")
        self.bound = number(bound, "bound", who, minimum=0.5, maximum=4.0)
        choice(view, "view", tuple(SPLINE_VIEWS), who)
        unknown = sorted(set(values) - set(SPLINE_SLIDERS))
        if unknown:
            raise FlowInputError(f"{who}: unknown keyword(s) {unknown}; the sliders are "
                                 f"{list(SPLINE_SLIDERS)}")
        start = {key: number(values.get(key, spec[4]), key, who, minimum=spec[1], maximum=spec[2])
                 for key, spec in SPLINE_SLIDERS.items()}
        self.grid_points = integer(grid_points, "grid_points", who, minimum=201)
        # 800 px wide: the notebook column of a 1280 px window with the file browser open.
        super().__init__(figsize=(10.0, 3.5), image_format=image_format)
        self._splines: dict[int, RationalQuadraticSpline] = {}
        self._grid = torch.linspace(-8.0, 8.0, self.grid_points, dtype=torch.float64)
        self._plot_x = torch.linspace(-4.5, 4.5, 901, dtype=torch.float64)

        c = self.controls
        c["bins"] = W.IntSlider(value=bins, min=2, max=MAX_BINS, step=1, description="bins K",
                                continuous_update=True, style={"description_width": "initial"},
                                layout=W.Layout(width="220px"))
        c["view"] = W.ToggleButtons(options=[(label, key) for key, label in SPLINE_VIEWS.items()], value=view,
                                    description="density", style={"button_width": "215px"})
        for key, (label, lo, hi, step, _) in SPLINE_SLIDERS.items():
            c[key] = slider(start[key], lo, hi, step, label)
        self._build_figure()
        self._watch_controls()
        self.update()

    # -- the spline from the controls ---------------------------------------------------------
    @property
    def bins(self) -> int:
        return int(self.controls["bins"].value)

    @property
    def spline(self) -> RationalQuadraticSpline:
        """The flowlib transformer the widget shows (one per number of bins)."""
        k = self.bins
        if k not in self._splines:
            self._splines[k] = RationalQuadraticSpline(bins=k, bound=self.bound).double()
        return self._splines[k]

    def parameters(self) -> Tensor:
        """The spline's parameters h, shape (1, 3K - 1), in flowlib's layout (widths, heights, slopes).

        Widths: all zero (equal bins). Heights: the sliders' log-heights (the spline takes a
        softmax). Slopes: the unnormalised values whose softplus gives the sliders' slopes.
        """
        k, spline, c = self.bins, self.spline, self.controls
        widths = torch.zeros(k, dtype=torch.float64)
        heights = torch.tensor([float(c[f"h{i}"].value) for i in range(1, k + 1)], dtype=torch.float64)
        slopes = torch.tensor([float(c[f"d{i}"].value) for i in range(1, k)], dtype=torch.float64)
        # The spline's slope is m + (1 - m) softplus(raw) / log 2: solve for raw.
        m = spline.min_derivative
        scaled = (slopes - m) * math.log(2.0) / (1 - m)
        raw = torch.log(torch.expm1(scaled))
        return torch.cat([widths, heights, raw]).unsqueeze(0)

    def transform(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """y = tau(x) and log tau'(x) for the current sliders, x of shape (n,) (float64)."""
        if not isinstance(x, Tensor) or x.dim() != 1:
            raise FlowInputError(f"SplineKnots.transform: expected x of shape (n,), got "
                                 f"{getattr(x, 'shape', type(x).__name__)}")
        x = x.to(torch.float64).reshape(-1, 1)
        h = self.parameters().expand(x.shape[0], -1)
        y, log_derivative = self.spline(x, h)
        return y[:, 0], log_derivative[:, 0]

    def knot_density(self, with_slope: bool = True) -> np.ndarray:
        """The density of the current view at the K + 1 knots (``with_slope=False``: the same without tau',
        i.e. the base N(0, 1) at x_k for "push", at y_k for "flow")."""
        x_knots, y_knots, slopes = (torch.as_tensor(v, dtype=torch.float64) for v in self.knots)
        if self.controls["view"].value == "push":  # p_Y(y_k) = p_X(x_k) / tau'(x_k)
            log_p = _normal_log_pdf(x_knots) - (torch.log(slopes) if with_slope else 0.0)
        else:  # p_X(x_k) = p_Z(y_k) tau'(x_k)
            log_p = _normal_log_pdf(y_knots) + (torch.log(slopes) if with_slope else 0.0)
        return log_p.exp().numpy()

    # -- figure ---------------------------------------------------------------------------
    def _build_figure(self) -> None:
        fig = self.figure
        self._ax_map, self._ax_der, self._ax_p = fig.subplots(1, 3)
        fig.subplots_adjust(left=0.05, right=0.99, bottom=0.15, top=0.88, wspace=0.25)
        b = self.bound
        for ax in (self._ax_map, self._ax_der):
            ax.axvspan(-b, b, color="0.94", zorder=0)
            ax.set_xlim(-4.5, 4.5)
            ax.set_xlabel("x")
        ax = self._ax_map
        ax.plot([-4.5, 4.5], [-4.5, 4.5], color="0.6", ls="--", lw=1, label="identity")
        ax.set(ylim=(-4.5, 4.5), title="$y = \\tau(x)$: knots $(x_k, y_k)$")
        self._line_map, = ax.plot([], [], color="C0", lw=2)
        self._dots_map, = ax.plot([], [], "o", color="C3", ms=5)
        ax = self._ax_der
        ax.axhline(1.0, color="0.6", ls="--", lw=1)
        ax.set(title="$d\\tau/dx$: slopes $d_k$ at the knots")
        self._line_der, = ax.plot([], [], color="C2", lw=2)
        self._dots_der, = ax.plot([], [], "o", color="C3", ms=5)
        ax = self._ax_p
        self._line_base, = ax.plot([], [], color="0.5", ls="--", lw=1, label="N(0, 1)")
        self._line_p, = ax.plot([], [], color="C1", lw=2)
        self._dots_p, = ax.plot([], [], "o", color="C3", ms=4)
        self._text_p = ax.text(0.03, 0.96, "", transform=ax.transAxes, va="top", fontsize=8,
                               family="monospace", bbox={"facecolor": "w", "alpha": 0.85, "edgecolor": "0.7"})
        ax.set_xlim(-4.5, 4.5)
        self._title_view: str | None = None
        self._animate(self._line_map, self._dots_map, self._line_der, self._dots_der, self._line_base,
                      self._line_p, self._dots_p, self._text_p)

    def _rows(self) -> list[W.Widget]:
        c = self.controls
        return [row([c["bins"], c["view"]]),
                row([c[f"h{k}"] for k in range(1, MAX_BINS + 1)]),
                row([c[f"d{k}"] for k in range(1, MAX_BINS)])]

    def _panel_key(self, index: int) -> object:
        return self._title_view if self.figure.axes[index] is self._ax_p else None

    def _set_view_title(self, view: str) -> None:
        if view == self._title_view:
            return
        if view == "push":
            self._ax_p.set(title="density of $y = \\tau(x)$, $x \\sim N(0, 1)$", xlabel="y")
        else:
            self._ax_p.set(title="$p_X(x) = p_Z(\\tau(x))\\,\\tau'(x)$", xlabel="x")
        self._title_view = view

    # -- one update ----------------------------------------------------------------------------
    def _compute(self) -> None:
        c, k = self.controls, self.bins
        for i in range(1, MAX_BINS + 1):
            show(c[f"h{i}"], i <= k)
        for i in range(1, MAX_BINS):
            show(c[f"d{i}"], i < k)
        view = c["view"].value
        h = self.parameters()
        with torch.no_grad():
            knots = self.spline.knots(torch.zeros(1, 1, dtype=torch.float64), h)
        self.knots = tuple(v.reshape(-1).numpy() for v in knots)
        x_knots, y_knots, slopes = self.knots

        # The map and its derivative on the plot grid, the derivative checked against autograd.
        x_plot = self._plot_x.clone().requires_grad_(True)
        with torch.enable_grad():
            y_plot, log_d_plot = self.transform(x_plot)
            (grad,) = torch.autograd.grad(y_plot.sum(), x_plot)
        d_plot = log_d_plot.detach().exp()
        self.autograd_error = float((grad - d_plot).abs().max())

        with torch.no_grad():
            y, log_d = self.transform(self._grid)
        x = self._grid
        self.min_slope = float(log_d.exp().min())
        self.monotone = bool((y[1:] > y[:-1]).all()) and self.min_slope > 0
        if view == "push":  # p_Y(y) = p_X(x) / tau'(x), drawn against y
            along, p = y, (_normal_log_pdf(x) - log_d).exp()
        else:  # p_X(x) = p_Z(tau(x)) tau'(x), drawn against x
            along, p = x, (_normal_log_pdf(y) + log_d).exp()
        self._along, self._density = along.numpy(), p.numpy()
        self.integral = float(torch.trapezoid(p, along))
        self.bin_masses = self._masses(view, x_knots)

        xp, yp = self._plot_x.numpy(), y_plot.detach().numpy()
        self._line_map.set_data(xp, yp)
        self._dots_map.set_data(x_knots, y_knots)
        self._line_der.set_data(xp, d_plot.numpy())
        self._dots_der.set_data(x_knots, slopes)
        top = max(float(d_plot.max()), 1.0)
        self._ax_der.set_ylim(0.0, sticky_top(self._ax_der.get_ylim()[1] if self._laid_out else None, top))
        self._set_view_title(view)
        shown = (self._along >= -4.5) & (self._along <= 4.5)
        self._line_p.set_data(self._along[shown], self._density[shown])
        base = torch.linspace(-4.5, 4.5, 400, dtype=torch.float64)
        self._line_base.set_data(base.numpy(), _normal_log_pdf(base).exp().numpy())
        self._dots_p.set_data(y_knots if view == "push" else x_knots, self.knot_density())
        peak = max(float(self._density[shown].max()), 0.4)
        self._ax_p.set_ylim(0.0, sticky_top(self._ax_p.get_ylim()[1] if self._laid_out else None, peak))
        self._laid_out = True
        self._text_p.set_text(f"integral {self.integral:.4f}\ndashed: N(0, 1)")

        def fmt(values: np.ndarray) -> str:
            return "(" + ", ".join(f"{v:.2f}" for v in values) + ")"

        where = "y" if view == "push" else "x"
        lines = [
            f"K = {k} bins on [-{self.bound:g}, {self.bound:g}], identity outside: x knots {fmt(x_knots)}, "
            f"y knots {fmt(y_knots)}, slopes {fmt(slopes)} (read from RationalQuadraticSpline.knots)",
            f"monotone: {'yes' if self.monotone else 'NO'} (smallest tau'(x) on the grid "
            f"{self.min_slope:.3f}); "
            f"tau' reported by the spline vs autograd: largest difference {self.autograd_error:.1e}",
            f"integral of the density shown: {self.integral:.4f}; mass of each bin (between consecutive "
            f"knots, along {where}): {fmt(self.bin_masses)}",
        ]
        self.status = "\n".join(lines)

    _laid_out = False

    def _masses(self, view: str, x_knots: np.ndarray) -> np.ndarray:
        """The mass of the density shown between consecutive knots, by the trapezoid rule."""
        out = []
        for lo, hi in zip(x_knots[:-1], x_knots[1:], strict=True):
            x = torch.linspace(float(lo), float(hi), 801, dtype=torch.float64)
            with torch.no_grad():
                y, log_d = self.transform(x)
            if view == "push":
                out.append(float(torch.trapezoid((_normal_log_pdf(x) - log_d).exp(), y)))
            else:
                out.append(float(torch.trapezoid((_normal_log_pdf(y) + log_d).exp(), x)))
        return np.array(out)

    def density_values(self) -> np.ndarray:
        """The density shown, on the integration grid (against ``grid_values()``)."""
        return self._density.copy()

    def grid_values(self) -> np.ndarray:
        """Where the density is evaluated: y = tau(x) for "push", x for "flow" (increasing)."""
        return self._along.copy()
