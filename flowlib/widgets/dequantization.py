"""Dequantization noise of width w and the bound on the discrete log-likelihood, under sliders (lecture 4)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import ipywidgets as W
import numpy as np
import torch
from torch import Tensor

from flowlib._checks import FlowInputError, integer, number
from flowlib.dequantize import dequantized_bits_per_dim
from flowlib.metrics import bits_per_dim
from flowlib.widgets.canvas import Canvas, row, slider, sticky_top

__all__ = ["DequantizationBound", "DEFAULT_PROBS"]

#: P(x = k) of the default discrete data, k = 0..5.
DEFAULT_PROBS: tuple[float, ...] = (0.10, 0.30, 0.05, 0.25, 0.20, 0.10)
_SQRT2 = math.sqrt(2.0)


def _cdf(z: Tensor) -> Tensor:
    return 0.5 * torch.erfc(-z / _SQRT2)


def _box(a: Tensor, b: Tensor) -> Tensor:
    """Phi(a) - Phi(b) for a >= b, from the tail on the side where the two are small (no cancellation)."""
    upper = 0.5 * (torch.erfc(b / _SQRT2) - torch.erfc(a / _SQRT2))
    return torch.where(a + b > 0, upper, _cdf(a) - _cdf(b))


def _cdf_integral(z: Tensor) -> Tensor:
    """G(z) = z Phi(z) + phi(z), the antiderivative of the normal CDF Phi."""
    return z * _cdf(z) + torch.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


class DequantizationBound(Canvas):
    """Discrete data x in {0, ..., K-1}, noise u ~ U(0, w), and what a density of x + u reports.

    A flow trained on v = x + u with noise of width w (in bins) learns, at best, the density of
    v itself: each level k spread evenly over [k, k + w). The model shown is that density,
    blurred by a Gaussian of width ``blur`` (a flow cannot draw perfect steps):

        p(v) = sum_k P(k) (1/w) [Phi((v - k)/blur) - Phi((v - k - w)/blur)]      (a box for blur = 0)

    Three figures in bits per dimension (D = 1), each computed exactly by quadrature:

    * ``reported_bits``: what training and testing with width w reports, -E_x E_{u ~ U(0, w)}
      log2 p(x + u), through :func:`flowlib.dequantize.dequantized_bits_per_dim` (with y = v / K
      and p_Y(y) = K p(v), the lectures' one bits/dim formula);
    * ``actual_bits``: what the model really gives the discrete data, -E_x log2 P_model(x)
      with P_model(x) = the mass of p on the cell [x, x + 1), through
      :func:`flowlib.metrics.bits_per_dim`;
    * ``entropy_bits``: H(P), the floor no model of the discrete data can go below.

    The reported figure is a valid bound (``is_bound``: reported >= actual, i.e. a lower bound
    on log P_model(x)) for w = 1, by Jensen's inequality, and then is tight when p is flat in
    every cell (blur 0). For w < 1 the spikes are taller than any cell-flat density and the
    reported figure drops below the model's actual one, and below the entropy (an impossible
    score): H(P) + log2 w for blur 0. The right panel traces the figures against w, with the
    score of the same model honestly tested with u ~ U(0, 1) (``honest_bits``, always a bound).

    Controls (``.controls``): ``width`` (w, in bins), ``blur``. After an update: the figures
    above, ``density(v)``, ``cell_masses()``, ``status``.

    >>> w = DequantizationBound()
    >>> w.controls["width"].value, w.controls["blur"].value = 1.0, 0.0
    >>> round(w.reported_bits - w.entropy_bits, 6), w.is_bound
    (0.0, True)
    """

    def __init__(self, probs: Sequence[float] = DEFAULT_PROBS, width: float = 0.25, blur: float = 0.03,
                 quadrature: int = 800, curve_points: int = 60) -> None:
        who = "DequantizationBound"
        try:
            values = [number(p, "probs", who, minimum=0.0, strict=True) for p in probs]
        except TypeError:
            raise FlowInputError(f"{who}: probs must be a sequence of probabilities P(x = k), "
                                 f"got {probs!r}") from None
        if not 2 <= len(values) <= 32 or abs(sum(values) - 1.0) > 1e-6:
            raise FlowInputError(f"{who}: probs must hold 2 to 32 positive probabilities that sum to 1, got "
                                 f"{len(values)} summing to {sum(values):.6g}")
        self.probs = torch.tensor(values, dtype=torch.float64)
        self.grey_levels = len(values)
        self.quadrature = integer(quadrature, "quadrature", who, minimum=10)
        self.curve_points = integer(curve_points, "curve_points", who, minimum=2)
        width = number(width, "width", who, minimum=0.05, maximum=2.0)
        blur = number(blur, "blur", who, minimum=0.0, maximum=0.3)
        super().__init__(figsize=(10.0, 3.6))
        self.controls["width"] = slider(width, 0.05, 2.0, 0.01, "noise width w (bins)")
        self.controls["blur"] = slider(blur, 0.0, 0.3, 0.01, "model blur")
        self.entropy_bits = float((self.probs * bits_per_dim(self.probs.log(), 1)).sum())
        self._curves: dict[float, dict[str, np.ndarray]] = {}
        self._widths = np.geomspace(0.05, 2.0, self.curve_points)
        self._build_figure()
        self._watch_controls()
        self.update()

    # -- the model and its figures -----------------------------------------------------------
    @property
    def width(self) -> float:
        return float(self.controls["width"].value)

    @property
    def blur(self) -> float:
        return float(self.controls["blur"].value)

    def density(self, v: Tensor, width: float | None = None, blur: float | None = None) -> Tensor:
        """p(v) of the model fitted with noise width ``width`` (default: the slider's), float64."""
        w = self.width if width is None else float(width)
        sigma = self.blur if blur is None else float(blur)
        v = torch.as_tensor(v, dtype=torch.float64)
        k = torch.arange(self.grey_levels, dtype=torch.float64)
        d = v[..., None] - k
        if sigma < 1e-9:
            inside = ((d >= 0) & (d < w)).to(torch.float64)
        else:
            inside = _box(d / sigma, (d - w) / sigma)
        return (inside * self.probs).sum(-1) / w

    def cell_masses(self, width: float | None = None, blur: float | None = None) -> Tensor:
        """P_model(x) = the mass of p on [x, x + 1), x = 0..K-1 (closed form)."""
        w = self.width if width is None else float(width)
        sigma = self.blur if blur is None else float(blur)
        cells = torch.arange(self.grey_levels, dtype=torch.float64)[:, None]  # the cell [x, x + 1)
        j = torch.arange(self.grey_levels, dtype=torch.float64)[None, :]  # the level whose noise lands there
        if sigma < 1e-9:  # the length of [x, x + 1) within [j, j + w)
            share = (torch.minimum(cells + 1, j + w) - torch.maximum(cells, j)).clamp(min=0.0)
        else:  # the integral over the cell of Phi((v - j)/sigma) - Phi((v - j - w)/sigma)
            def box(shift: Tensor) -> Tensor:
                upper, lower = (cells + 1 - shift) / sigma, (cells - shift) / sigma
                return sigma * (_cdf_integral(upper) - _cdf_integral(lower))
            share = box(j) - box(j + w)
        return (share * self.probs).sum(-1) / w

    def _scores(self, width: float, blur: float) -> tuple[float, float, float]:
        """(reported, honest, actual) bits/dim for the model fitted with ``width``."""
        # the midpoints of [0, 1): E_u by the midpoint rule
        u = (torch.arange(self.quadrature, dtype=torch.float64) + 0.5) / self.quadrature
        levels = torch.arange(self.grey_levels, dtype=torch.float64)[:, None]
        k = self.grey_levels
        figures = []
        for span in (width, 1.0):  # scored with u ~ U(0, w), then with u ~ U(0, 1)
            v = levels + span * u
            log_p_y = torch.log(self.density(v, width, blur)) + math.log(k)  # p_Y(y) = K p(v), y = v / K
            bpd = dequantized_bits_per_dim(log_p_y, 1, k).mean(dim=1)  # E_u, per level
            figures.append(float((self.probs * bpd).sum()))
        actual = float((self.probs * bits_per_dim(torch.log(self.cell_masses(width, blur)), 1)).sum())
        return figures[0], figures[1], actual

    def curves(self) -> dict[str, np.ndarray]:
        """The three figures against w (``"width"``) at the current blur (cached per blur)."""
        key = round(self.blur, 6)
        if key not in self._curves:
            rows = np.array([self._scores(float(w), self.blur) for w in self._widths])
            self._curves[key] = {"width": self._widths, "reported": rows[:, 0], "honest": rows[:, 1],
                                 "actual": rows[:, 2]}
        return self._curves[key]

    # -- figure -----------------------------------------------------------------------------
    def _build_figure(self) -> None:
        fig = self.figure
        self._ax_p, self._ax_b = fig.subplots(1, 2, width_ratios=(1.45, 1.0))
        fig.subplots_adjust(left=0.055, right=0.985, bottom=0.15, top=0.88, wspace=0.2)
        k = self.grey_levels
        self._v = torch.linspace(-0.5, k + 1.5, 2000, dtype=torch.float64)
        self._ax_p.bar(np.arange(k), self.probs.numpy(), width=1.0, align="edge", color="0.88",
                       edgecolor="0.7", label="P(x) spread flat over [x, x+1)")
        v = self._v.numpy()
        self._fill = self._ax_p.fill_between(v, 0 * v, color="C0", alpha=0.3, lw=0)
        self._line_p, = self._ax_p.plot([], [], color="C0", lw=1.5, label="model p(v), fitted to v = x + u")
        self._ax_p.set(xlim=(-0.5, k + 1.5), xlabel="v = x + u (grey levels, bins of width 1)",
                       title="the continuous density")
        self._overlay(self._ax_p.legend(loc="upper right", fontsize=7.5, framealpha=1.0))

        ax = self._ax_b
        ax.set_xscale("log")
        ax.axvline(1.0, color="0.8", lw=1, zorder=0)
        ax.axhline(self.entropy_bits, color="k", lw=1, ls=":",
                   label=f"entropy H(P) = {self.entropy_bits:.2f}")
        self._curve_r, = ax.plot([], [], color="C0", label="reported, u ~ U(0, w)")
        self._curve_h, = ax.plot([], [], color="C2", ls="--", label="same model, scored with U(0, 1)")
        self._curve_a, = ax.plot([], [], color="C3", label="actual: -E log2 P_model(x)")
        self._marks, = ax.plot([], [], "o", color="k", ms=4)
        self._now = ax.axvline(self.width, color="k", lw=1)
        self._text_b = ax.text(0.03, 0.96, "", transform=ax.transAxes, va="top", fontsize=8,
                               bbox={"facecolor": "w", "edgecolor": "0.7", "alpha": 0.9})
        ax.set(xlim=(0.05, 2.0), xlabel="noise width w (bins)", ylabel="bits/dim",
               title="the figures, against w")
        self._overlay(ax.legend(loc="lower right", fontsize=7, framealpha=1.0))
        self._animate(self._fill, self._line_p, self._curve_r, self._curve_h, self._curve_a,
                      self._marks, self._now, self._text_b)

    def _rows(self) -> list[W.Widget]:
        return [row([self.controls["width"], self.controls["blur"]])]

    # -- one update ----------------------------------------------------------------------------
    def _compute(self) -> None:
        w = self.width
        self.reported_bits, self.honest_bits, self.actual_bits = self._scores(w, self.blur)
        self.is_bound = self.reported_bits >= self.actual_bits - 1e-9
        p = self.density(self._v).numpy()
        v = self._v.numpy()
        self._line_p.set_data(v, p)
        self._fill.set_data(v, np.zeros_like(p), p)
        self._ax_p.set_ylim(0, sticky_top(self._ax_p.get_ylim()[1] if hasattr(self, "_laid_out") else None,
                                          float(p.max())))
        c = self.curves()
        self._curve_r.set_data(c["width"], c["reported"])
        self._curve_h.set_data(c["width"], np.where(np.isfinite(c["honest"]), c["honest"], np.nan))
        self._curve_a.set_data(c["width"], c["actual"])
        self._marks.set_data([w, w, w], [self.reported_bits, self.honest_bits, self.actual_bits])
        self._now.set_xdata([w, w])
        finite = [x[np.isfinite(x)] for x in (c["reported"], c["honest"], c["actual"])]
        lo = min(float(finite[0].min()), self.entropy_bits)
        hi = max(float(finite[2].max()), self.entropy_bits) + 1.5
        span = hi - lo
        self._ax_b.set_ylim(math.floor(4 * (lo - 0.1 * span)) / 4, math.ceil(4 * (hi + 0.1 * span)) / 4)
        self._laid_out = True
        verdict = "a valid bound" if self.is_bound else "NOT a bound"
        honest = f"{self.honest_bits:.2f}" if math.isfinite(self.honest_bits) else "inf"
        self._text_b.set_text(f"w = {w:.2f}: reported {self.reported_bits:.2f}\n"
                              f"actual {self.actual_bits:.2f}: {verdict}\nscored with U(0, 1): {honest}")
        self.status = (
            f"noise width w = {w:.2f} bins, model blur {self.blur:.2f}: trained and tested with u ~ U(0, w), "
            f"the flow reports {self.reported_bits:.3f} bits/dim; the discrete model it defines (the mass "
            f"of p on each cell [x, x+1)) in fact scores {self.actual_bits:.3f}, and no model can go below "
            f"the entropy {self.entropy_bits:.3f}. The reported figure is {verdict} on the discrete "
            f"log-likelihood"
            + (" (Jensen, w = 1)." if abs(w - 1.0) < 1e-9 else "." if self.is_bound else
               f" (it is {self.actual_bits - self.reported_bits:.3f} bits too good).")
            + f" Tested honestly with u ~ U(0, 1), the same model scores {self.honest_bits:.3f}.")
