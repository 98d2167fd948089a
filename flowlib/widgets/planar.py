"""Planar and radial flows in the plane, stacked 1..K times, under sliders (lecture 2)."""

from __future__ import annotations

import math
import textwrap
import warnings

import ipywidgets as W
import matplotlib
import numpy as np
import torch
from matplotlib.colors import Colormap
from torch import Tensor

from flowlib._checks import FlowInputError, choice, integer
from flowlib.core import Compose, Flow
from flowlib.distributions import StandardNormal
from flowlib.planar import Planar, Radial
from flowlib.widgets.canvas import SLIDER_WIDTH, Canvas, row, show, slider, sticky_range

__all__ = ["PlanarFlow2D"]

_CMAP = "viridis"


def _rotation(degrees: float) -> Tensor:
    t = math.radians(degrees)
    return torch.tensor([[math.cos(t), -math.sin(t)], [math.sin(t), math.cos(t)]])


def _softplus_inv(y: float) -> float:
    """The raw value r with softplus(r) = y > 0 (stable for large y)."""
    return y + math.log(-math.expm1(-y))


class PlanarFlow2D(Canvas):
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
        who = "PlanarFlow2D"
        choice(kind, "kind", ("planar", "radial"), who)
        max_layers = integer(max_layers, "max_layers", who)
        if not 1 <= integer(layers, "layers", who) <= max_layers:
            raise FlowInputError(f"{who}: layers must be in 1..{max_layers}, got {layers}")
        # 720 px wide: it fits the notebook column of a 1280 px window with the file browser open.
        super().__init__(figsize=(9.0, 4.3), image_format=image_format)
        self.integral = float("nan")
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
                                                description="enforce invertibility (u -> u_hat)",
                                                layout=W.Layout(width="auto"))
        c["layers"] = W.IntSlider(value=int(layers), min=1, max=self.max_layers, description="layers K",
                                  continuous_update=True, style={"description_width": "initial"},
                                  layout=W.Layout(width=SLIDER_WIDTH))
        c["turn"] = slider(60.0, 0.0, 180.0, 5.0, "turn per layer (deg)")
        for key, label, value in [("w1", "w_1", 2.0), ("w2", "w_2", 0.0), ("u1", "u_1", 1.5),
                                  ("u2", "u_2", 0.5), ("b", "b", 0.0)]:
            c[key] = slider(value, -3.0, 3.0, 0.05, label)
        c["z0_1"] = slider(0.5, -3.0, 3.0, 0.05, "z0_1")
        c["z0_2"] = slider(0.0, -3.0, 3.0, 0.05, "z0_2")
        c["alpha"] = slider(0.5, 0.05, 3.0, 0.05, "alpha")
        c["beta"] = slider(2.0, -3.0, 5.0, 0.05, "beta")

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

    def _rows(self) -> list[W.Widget]:
        # The kind of layer and the stack first, then the parameters of layer 1 (planar or radial).
        c = self.controls
        return [row([c["kind"], c["enforce_invertibility"]]), row([c["layers"], c["turn"]]),
                row([c[name] for name in ("w1", "w2", "u1", "u2", "b", "z0_1", "z0_2", "alpha", "beta")])]

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
            show(c[key], kind == "planar")
        for key in ("z0_1", "z0_2", "alpha", "beta"):
            show(c[key], kind == "radial")
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
        self.bounds = lo, hi = sticky_range(self.bounds, float(edge.min()), float(edge.max()), shrink=0.7)

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
