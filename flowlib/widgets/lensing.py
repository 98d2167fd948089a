"""A simulated convergence map under sliders for sigma_8 and Omega_m (lecture 9).

The map is :func:`flowlib.data.lensing.convergence_maps` from one fixed seed, so moving a slider
changes the parameters and nothing else: the same Gaussian latent u becomes the log-normal map

    kappa = lambda (exp(s u - s^2 / 2) - 1),   s^2 = log(1 + sigma_kappa^2 / lambda^2),

with sigma_kappa = 0.02 (sigma_8 / 0.8) (Omega_m / 0.3)^(1/2), and the Gaussian field
sigma_kappa u of the same spectrum beside it. Three panels: the map; the histogram of its pixels
against the Gaussian field's (log scale, the bound -lambda marked); the power spectra of both
maps. Read on every update: ``sigma_kappa``, ``minimum``, ``maximum`` and ``skewness`` of the
map's pixels.

>>> w = ConvergenceMap(size=32)
>>> w.controls["sigma_8"].value = 1.0
>>> round(w.sigma_kappa, 4), bool(w.minimum > -0.03)
(0.025, True)
"""

from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.ticker import NullFormatter
from torch import Tensor

from flowlib._checks import integer, number
from flowlib.data.lensing import LOGNORMAL_SHIFT, convergence_maps, convergence_std
from flowlib.field_statistics import power_spectrum, spectrum_bins
from flowlib.widgets.canvas import Canvas, row, slider

__all__ = ["ConvergenceMap"]

#: The sliders: name -> (label, lowest, highest, step); the prior box of lecture 9.
LENSING_SLIDERS: dict[str, tuple[str, float, float, float]] = {
    "sigma_8": ("sigma_8 (amplitude)", 0.6, 1.0, 0.02),
    "omega_m": ("Omega_m (shape)", 0.2, 0.4, 0.01),
}
_EDGES = np.linspace(-0.04, 0.2, 97)  # pixel values shown, in kappa
_BINS = 8


class ConvergenceMap(Canvas):
    """One map of the simulator at the sliders' (sigma_8, Omega_m), from a fixed seed.

    ``size``: pixels on a side (32 or 64 in lecture 9); ``seed``: the map's seed (the same latent
    for every parameter); ``sigma_8``, ``omega_m``: the starting values. Controls: ``sigma_8``
    and ``omega_m`` (ranges in :data:`LENSING_SLIDERS`). On display, after each update:
    ``maps`` (the log-normal map and the Gaussian field, (2, 1, size, size)), ``sigma_kappa``,
    and the log-normal map's ``minimum``, ``maximum`` and ``skewness``.
    """

    def __init__(self, size: int = 64, seed: int = 0, sigma_8: float = 0.8, omega_m: float = 0.3,
                 dpi: int = 80, threads: int = 1) -> None:
        who = "ConvergenceMap"
        self.size = integer(size, "size", who, minimum=16)
        self.seed = integer(seed, "seed", who, minimum=0)
        start = {}
        for key, value in (("sigma_8", sigma_8), ("omega_m", omega_m)):
            _, lo, hi, _ = LENSING_SLIDERS[key]
            start[key] = number(value, key, who, minimum=lo, maximum=hi)
        # 760 px wide: it fits the notebook column of a 1280 px window with the file browser open.
        super().__init__((9.5, 3.3), dpi=dpi, threads=threads)
        self.sigma_kappa = self.minimum = self.maximum = self.skewness = math.nan
        self.maps: Tensor = torch.empty(0)
        self._build_figure()
        self.controls = {key: slider(start[key], lo, hi, step, label)
                         for key, (label, lo, hi, step) in LENSING_SLIDERS.items()}
        self._watch_controls()
        self.update()

    def _build_figure(self) -> None:
        fig = self.figure
        widths = {"width_ratios": [1, 1.3, 1.3]}
        self._ax_map, self._ax_pdf, self._ax_pk = fig.subplots(1, 3, gridspec_kw=widths)
        fig.subplots_adjust(left=0.02, right=0.98, bottom=0.17, top=0.88, wspace=0.32)
        ax = self._ax_map
        ax.set(xticks=[], yticks=[])
        ax.set_title("the log-normal map kappa", fontsize=9)
        blank = np.zeros((self.size, self.size))
        self._image_artist = ax.imshow(blank, cmap="magma", vmin=-LOGNORMAL_SHIFT, vmax=0.15,
                                       interpolation="nearest")
        ax = self._ax_pdf
        centres = (_EDGES[1:] + _EDGES[:-1]) / 2
        self._pdf_lines = [ax.plot(centres, np.ones_like(centres), drawstyle="steps-mid", color=c, lw=1.2,
                                   label=label)[0]
                           for c, label in (("C0", "log-normal map"), ("C1", "Gaussian field"))]
        ax.axvline(-LOGNORMAL_SHIFT, color="k", ls=":", lw=1, label="-lambda")
        ax.set(yscale="log", xlim=(_EDGES[0], _EDGES[-1]), ylim=(0.1, 200.0), xlabel="kappa")
        ax.set_title("pixel values (density)", fontsize=9)
        self._overlay(ax.legend(fontsize=7, loc="upper right"))  # kept above the data
        ax = self._ax_pk
        k = spectrum_bins(self.size, _BINS)[1].numpy()
        self._pk_lines = [ax.plot(k, np.ones_like(k), marker="o", ms=3, color=c)[0] for c in ("C0", "C1")]
        ax.set(xscale="log", yscale="log", xlabel="|k| (cycles per pixel)", ylim=self._spectrum_range())
        ax.xaxis.set_minor_formatter(NullFormatter())  # a few readable ticks, not every minor one
        ax.set_xticks([0.05, 0.1, 0.2, 0.4], labels=["0.05", "0.1", "0.2", "0.4"])
        ax.set_title("power spectrum of this map", fontsize=9)
        self._text = self._ax_pdf.text(0.03, 0.97, "", transform=self._ax_pdf.transAxes, va="top", fontsize=7,
                                       family="monospace")
        self._animate(self._image_artist, *self._pdf_lines, *self._pk_lines, self._text)

    def _simulate(self, sigma_8: float, omega_m: float) -> Tensor:
        """The log-normal map and the Gaussian field (2, 1, size, size) from the widget's seed."""
        return torch.cat([convergence_maps(1, self.size, sigma_8, omega_m, lognormal=lognormal,
                                           generator=torch.Generator().manual_seed(self.seed))
                          for lognormal in (True, False)])

    def _spectrum_range(self) -> tuple[float, float]:
        """Fixed limits for the spectra: those of the corners of the parameter box, padded."""
        values = []
        for s8 in (LENSING_SLIDERS["sigma_8"][1], LENSING_SLIDERS["sigma_8"][2]):
            for om in (LENSING_SLIDERS["omega_m"][1], LENSING_SLIDERS["omega_m"][2]):
                values.append(power_spectrum(self._simulate(s8, om), bins=_BINS)[1])
        p = torch.cat(values)
        return float(p.min()) / 3, float(p.max()) * 3

    def _rows(self) -> list:
        return [row([self.controls["sigma_8"], self.controls["omega_m"]])]

    def _compute(self) -> None:
        sigma_8, omega_m = (float(self.controls[k].value) for k in ("sigma_8", "omega_m"))
        self.maps = self._simulate(sigma_8, omega_m)
        self.sigma_kappa = convergence_std(sigma_8, omega_m)
        pixels = self.maps[0].double().flatten()
        self.minimum, self.maximum = float(pixels.min()), float(pixels.max())
        centred = pixels - pixels.mean()
        self.skewness = float((centred**3).mean() / (centred**2).mean() ** 1.5)
        self._image_artist.set_data(self.maps[0, 0].numpy())
        _, spectra = power_spectrum(self.maps, bins=_BINS)
        for i, (field, spectrum) in enumerate(zip(self.maps, spectra, strict=True)):
            density, _ = np.histogram(field.numpy().ravel(), _EDGES, density=True)
            self._pdf_lines[i].set_ydata(np.where(density > 0, density, np.nan))  # log axis: no zeros
            self._pk_lines[i].set_ydata(spectrum.numpy())
        r = self.sigma_kappa / LOGNORMAL_SHIFT
        self._text.set_text(f"sigma_kappa {self.sigma_kappa:.4f}\nmin   {self.minimum:+.4f}\n"
                            f"max   {self.maximum:+.4f}\nskew  {self.skewness:.2f}")
        self.status = (f"sigma_8 = {sigma_8:.2f}, Omega_m = {omega_m:.2f}: sigma_kappa = "
                       f"{self.sigma_kappa:.4f}; this map's pixels: min {self.minimum:+.4f} (bound -lambda = "
                       f"{-LOGNORMAL_SHIFT}), max {self.maximum:.4f}, skewness {self.skewness:.2f} (the "
                       f"log-normal closed form 3r + r^3 = {3 * r + r**3:.2f}, r = sigma_kappa / lambda)")
