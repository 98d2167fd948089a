"""The change of variables in 1D, under sliders: p_X(x) = p_Z(f(x)) |f'(x)| (lecture 1)."""

from __future__ import annotations

import math

import ipywidgets as W
import numpy as np
import torch
from torch import Tensor

from flowlib._checks import choice
from flowlib.core import Flow
from flowlib.widgets.bases_1d import BASES_1D, MAPS_1D
from flowlib.widgets.canvas import Canvas, row, show, slider, sticky_range, sticky_top

__all__ = ["ChangeOfVariables1D"]


class ChangeOfVariables1D(Canvas):
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
        choice(base, "base", tuple(BASES_1D), "ChangeOfVariables1D")
        choice(transform, "transform", tuple(MAPS_1D), "ChangeOfVariables1D")
        # 800 px wide: the notebook column of a 1280 px window with the file browser open.
        super().__init__(figsize=(10.0, 3.4), image_format=image_format)
        self.integral = float("nan")
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
                self.controls[key] = slider(value, lo, hi, step, label)
        self.controls["drop_jacobian"] = W.Checkbox(value=False, description="drop |f'(x)|", indent=False,
                                                    layout=W.Layout(width="auto"))

        self._build_figure()
        self._watch_controls()
        self.update()

    # -- figure ---------------------------------------------------------------------------
    def _build_figure(self) -> None:
        fig = self.figure
        # p_X gets the widest panel: it holds the curves, the histogram, the integral and a legend.
        self._ax_z, self._ax_f, self._ax_x = fig.subplots(1, 3, width_ratios=(1.0, 1.0, 1.45))
        fig.subplots_adjust(left=0.045, right=0.99, bottom=0.16, top=0.88, wspace=0.22)
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
                                              va="top", fontsize=8.5)
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
        self._overlay(self._ax_x.legend(handles=handles, loc="upper right", fontsize=7.5, framealpha=1.0))
        self._legend_drop = drop

    def _panel_key(self, index: int) -> object:
        return self._legend_drop if self.figure.axes[index] is self._ax_x else None

    def _rows(self) -> list[W.Widget]:
        # The choices first, then the sliders of the chosen map (the others are hidden).
        c = self.controls
        return [row([c["base"], c["transform"], c["drop_jacobian"]]),
                row([c[k] for m in MAPS_1D.values() for k in m.params])]

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
                show(self.controls[key], name == map_name)
        f = self._maps[map_name]
        with torch.no_grad():
            spec.apply(f, self._values())
            # The ends of the ranges in x are the preimages of the ends in z (f increases).
            ends = torch.tensor([[-base.tail], [base.tail], [-base.bulk], [base.bulk]], dtype=torch.float64)
            x_ends = f.inverse(ends)[0][:, 0].tolist()
            self.x_window = sticky_range(self.x_window, x_ends[2], x_ends[3])

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
        self._ax_f.set_ylim(*sticky_range(self._ax_f.get_ylim() if self._laid_out else None,
                                           float(z_line.min()), float(z_line.max())))
        self._hist.set_data(heights, edges)
        self._line_px.set_data(self._x_plot, self._px_plot)
        drop = bool(self.controls["drop_jacobian"].value)
        self._line_nojac.set_data(self._x_plot, nojac)
        self._line_nojac.set_visible(drop)
        self._legend(drop)
        top = max(self._px_plot.max(), heights.max(), nojac.max() if drop else 0.0)
        self._ax_x.set_xlim(*self.x_window)
        self._ax_x.set_ylim(0, sticky_top(self._ax_x.get_ylim()[1] if self._laid_out else None, float(top)))
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

