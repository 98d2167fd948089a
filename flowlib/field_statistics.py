"""Summary statistics of 2D maps (fields on a periodic square grid), as weak-lensing analyses use them.

Every function takes maps of shape (n, size, size) or (n, 1, size, size) and returns one row of
statistics per map, so that means, variances and covariances over maps come from the rows:

- :func:`power_spectrum`: the binned isotropic power spectrum, P(k) = <|FFT(u)(k)|^2> / N^2 over
  the modes of each bin of |k| (cycles per pixel). For a stationary field whose discrete spectrum
  is S(k), E|FFT(u)(k)|^2 / N^2 = S(k): the estimator is unbiased, and its relative scatter in a
  bin of m independent modes is about sqrt(2 / m) (a real field's modes come in pairs).
- :func:`one_point_pdf`: the histogram density of the pixel values.
- :func:`peak_counts`: the number of local maxima (pixels above their 8 neighbours) per bin of
  height; peaks carry the non-Gaussian information of the haloes (Kratochvil et al., 2010).
- :func:`minkowski_functionals`: V_0 (the area fraction above a threshold nu), V_1 (a quarter of
  the boundary length per unit area) and V_2 (the Euler characteristic per unit area, i.e. the
  integrated geodesic curvature over 2 pi) of the excursion sets {u > nu}, by the derivative
  formulas of Schmalzing & Gorski (1998) with central differences, as in Kratochvil et al. (2012)
  and Petri et al. (2013):

      V_1 = (1 / 4A) int delta(u - nu) |grad u| dA,
      V_2 = (1 / 2 pi A) int delta(u - nu) (2 u_x u_y u_xy - u_x^2 u_yy - u_y^2 u_xx) / |grad u|^2 dA,

  with delta(.) a bin of width ``width`` around nu. For a Gaussian field of variance sigma_0^2
  and gradient variance sigma_1^2 = <|grad u|^2> they have the closed forms of Tomita (1986)
  (:func:`gaussian_minkowski`), in nu measured in units of sigma_0:

      V_0 = erfc(nu / sqrt 2) / 2,
      V_1 = sigma_1 / (8 sqrt 2 sigma_0) exp(-nu^2 / 2),
      V_2 = sigma_1^2 / (2 sigma_0^2 (2 pi)^(3/2)) nu exp(-nu^2 / 2).

>>> maps = torch.zeros(2, 8, 8); maps[:, 3, 4] = 1.0
>>> peak_counts(maps, torch.tensor([0.5, 1.5])).tolist()
[[1.0], [1.0]]
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowlib._checks import FlowInputError, integer, number
from flowlib.data.lensing import frequency_grid

__all__ = ["power_spectrum", "spectrum_bins", "bin_modes", "one_point_pdf", "peak_counts",
           "minkowski_functionals", "gaussian_minkowski", "gradient_std"]


def _maps(maps: Tensor, who: str) -> Tensor:
    """Maps as float64 (n, size, size), square; (n, 1, size, size) accepted."""
    if isinstance(maps, Tensor) and maps.dim() == 4 and maps.shape[1] == 1:
        maps = maps[:, 0]
    square = isinstance(maps, Tensor) and maps.dim() == 3 and maps.shape[1] == maps.shape[2]
    if not square or maps.shape[0] == 0:
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise FlowInputError(f"{who}: expected square maps of shape (n, size, size) or (n, 1, size, size), "
                             f"got {got}")
    if not bool(torch.isfinite(maps).all()):
        raise FlowInputError(f"{who}: the maps hold NaN or infinite values")
    return maps.to(torch.float64).contiguous()


def _edges(edges: Tensor, who: str, name: str = "edges") -> Tensor:
    edges = torch.as_tensor(edges, dtype=torch.float64)
    if edges.dim() != 1 or edges.numel() < 2 or bool((edges[1:] <= edges[:-1]).any()):
        raise FlowInputError(f"{who}: {name} must be at least two increasing values, got {edges.tolist()}")
    return edges


def _mode_bins(size: int, bins: int, who: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(edges, the bin of every mode of the FFT grid (flattened; -1 or ``bins`` outside), the modes
    per bin, the mean |k| per bin): the one place where modes are put into bins."""
    size, bins = integer(size, "size", who, minimum=4), integer(bins, "bins", who)
    edges = torch.logspace(math.log10(1 / size), math.log10(0.5), bins + 1, dtype=torch.float64)
    edges[-1] += 1e-12  # |k| = 1/2 belongs to the last bin
    k = frequency_grid(size).flatten()
    which = torch.bucketize(k, edges, right=True) - 1
    inside = (which >= 0) & (which < bins)
    modes = torch.bincount(which[inside], minlength=bins).to(torch.float64)
    if bool((modes == 0).any()):
        raise FlowInputError(f"{who}: {bins} bins leave some without a Fourier mode on a {size} x {size} "
                             f"map; use fewer bins")
    centres = torch.bincount(which[inside], weights=k[inside], minlength=bins) / modes
    return edges, which, modes, centres


def spectrum_bins(size: int, bins: int = 8) -> tuple[Tensor, Tensor, Tensor]:
    """Logarithmic bins of |k| from 1/size to 1/2 (cycles per pixel) for :func:`power_spectrum`.

    Returns (edges (bins + 1,), centres (bins,), modes per bin (bins,)); the centre of a bin is the
    mean |k| of its modes. A bin without modes is an error: ask for fewer bins.

    >>> edges, centres, modes = spectrum_bins(32, bins=4)
    >>> int(modes.sum()) <= 32 * 32, bool((centres > edges[:-1]).all())
    (True, True)
    """
    edges, _, modes, centres = _mode_bins(size, bins, "spectrum_bins")
    return edges, centres, modes


def bin_modes(values: Tensor, bins: int = 8) -> Tensor:
    """The mean of ``values`` (..., size, size), given on the FFT grid, over the modes of each bin of
    :func:`spectrum_bins`: shape (..., bins). A spectrum S(k) binned as :func:`power_spectrum` bins
    its estimates, so the two compare bin for bin.

    >>> bin_modes(torch.ones(32, 32), bins=4).tolist()
    [1.0, 1.0, 1.0, 1.0]
    """
    values = torch.as_tensor(values, dtype=torch.float64)
    if values.dim() < 2 or values.shape[-1] != values.shape[-2]:
        raise FlowInputError(f"bin_modes: expected values of shape (..., size, size), "
                             f"got {tuple(values.shape)}")
    _, which, modes, _ = _mode_bins(values.shape[-1], bins, "bin_modes")
    inside = (which >= 0) & (which < len(modes))
    flat = values.reshape(*values.shape[:-2], -1)[..., inside]
    sums = torch.zeros(*flat.shape[:-1], len(modes), dtype=torch.float64).index_add_(-1, which[inside], flat)
    return sums / modes


def power_spectrum(maps: Tensor, bins: int = 8) -> tuple[Tensor, Tensor]:
    """The binned power spectrum of each map: (centres (bins,), P (n, bins)), bins of :func:`spectrum_bins`.

    >>> white = torch.randn(50, 32, 32, generator=torch.Generator().manual_seed(0))
    >>> k, p = power_spectrum(white, bins=4)
    >>> bool(((p.mean(0) - 1).abs() < 0.1).all())
    True
    """
    maps = _maps(maps, "power_spectrum")
    _, centres, _ = spectrum_bins(maps.shape[1], bins)
    return centres, bin_modes(torch.fft.fft2(maps).abs() ** 2 / maps.shape[1] ** 2, bins)


def one_point_pdf(maps: Tensor, edges: Tensor) -> Tensor:
    """The histogram density of each map's pixel values over the bins ``edges``: shape (n, bins).

    Values outside the edges are counted in no bin, so a row integrates to the share inside.
    """
    maps = _maps(maps, "one_point_pdf")
    edges = _edges(edges, "one_point_pdf")
    flat = maps.reshape(maps.shape[0], -1)
    which = torch.bucketize(flat, edges, right=True) - 1
    inside = (which >= 0) & (which < len(edges) - 1)
    counts = torch.zeros(flat.shape[0], len(edges) - 1, dtype=torch.float64)
    counts.scatter_add_(1, which.clamp(0, len(edges) - 2), inside.to(torch.float64))
    return counts / (flat.shape[1] * (edges[1:] - edges[:-1]))


def peak_counts(maps: Tensor, edges: Tensor) -> Tensor:
    """The number of peaks (pixels above all 8 neighbours, periodic) of each map per height bin: (n, bins)."""
    maps = _maps(maps, "peak_counts")
    edges = _edges(edges, "peak_counts")
    is_peak = torch.ones_like(maps, dtype=torch.bool)
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            if dx or dy:
                is_peak &= maps > torch.roll(maps, shifts=(dx, dy), dims=(1, 2))
    which = torch.bucketize(maps, edges, right=True) - 1
    counted = is_peak & (which >= 0) & (which < len(edges) - 1)
    counts = torch.zeros(maps.shape[0], len(edges) - 1, dtype=torch.float64)
    counts.scatter_add_(1, which.clamp(0, len(edges) - 2).reshape(maps.shape[0], -1),
                        counted.reshape(maps.shape[0], -1).to(torch.float64))
    return counts


def _derivatives(maps: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """u_x, u_y, u_xx, u_yy, u_xy by central differences on the periodic grid (pixel units)."""
    def shift(u: Tensor, dx: int, dy: int) -> Tensor:
        return torch.roll(u, shifts=(dy, dx), dims=(1, 2))

    ux = (shift(maps, -1, 0) - shift(maps, 1, 0)) / 2
    uy = (shift(maps, 0, -1) - shift(maps, 0, 1)) / 2
    uxx = shift(maps, -1, 0) - 2 * maps + shift(maps, 1, 0)
    uyy = shift(maps, 0, -1) - 2 * maps + shift(maps, 0, 1)
    uxy = (shift(maps, -1, -1) - shift(maps, -1, 1) - shift(maps, 1, -1) + shift(maps, 1, 1)) / 4
    return ux, uy, uxx, uyy, uxy


def gradient_std(maps: Tensor) -> float:
    """sigma_1 = <|grad u|^2>^(1/2) over all pixels of all maps, with the central differences of
    :func:`minkowski_functionals` (per pixel), for :func:`gaussian_minkowski`."""
    ux, uy, *_ = _derivatives(_maps(maps, "gradient_std"))
    return float((ux**2 + uy**2).mean().sqrt())


def minkowski_functionals(maps: Tensor, thresholds: Tensor, width: float | None = None) -> Tensor:
    """V_0, V_1, V_2 of each map at each threshold (in the maps' units): shape (n, 3, thresholds).

    ``width``: the bin of the delta function in V_1 and V_2 (default: the thresholds' spacing,
    which must then be even). Lengths and curvatures are per pixel and per pixel area.
    """
    who = "minkowski_functionals"
    maps = _maps(maps, who)
    nu = _edges(thresholds, who, "thresholds")
    if width is None:
        steps = nu[1:] - nu[:-1]
        if bool(((steps - steps[0]).abs() > 1e-9 * steps[0].abs().clamp(min=1)).any()):
            raise FlowInputError(f"{who}: thresholds are unevenly spaced; give the delta function's width")
        width = float(steps[0])
    width = number(width, "width", who, minimum=0.0, strict=True)
    ux, uy, uxx, uyy, uxy = (d.reshape(maps.shape[0], 1, -1) for d in _derivatives(maps))
    u = maps.reshape(maps.shape[0], 1, -1)
    level = nu[None, :, None]
    v0 = (u > level).to(torch.float64).mean(-1)
    in_bin = ((u - level).abs() < width / 2).to(torch.float64) / width
    gradient2 = ux**2 + uy**2
    v1 = (in_bin * gradient2.sqrt()).mean(-1) / 4
    curvature = (2 * ux * uy * uxy - ux**2 * uyy - uy**2 * uxx) / gradient2.clamp(min=1e-300)
    v2 = (in_bin * curvature).mean(-1) / (2 * math.pi)
    return torch.stack([v0, v1, v2], dim=1)


def gaussian_minkowski(thresholds: Tensor, sigma_0: float, sigma_1: float) -> Tensor:
    """The closed forms of V_0, V_1, V_2 for a Gaussian field (Tomita, 1986): shape (3, thresholds).

    ``thresholds`` in the field's units (not in units of sigma_0); ``sigma_1^2 = <|grad u|^2>``.

    >>> v = gaussian_minkowski(torch.tensor([0.0]), 1.0, 1.0)
    >>> [round(float(x), 4) for x in v[:, 0]]
    [0.5, 0.0884, 0.0]
    """
    who = "gaussian_minkowski"
    sigma_0 = number(sigma_0, "sigma_0", who, minimum=0.0, strict=True)
    sigma_1 = number(sigma_1, "sigma_1", who, minimum=0.0, strict=True)
    nu = torch.as_tensor(thresholds, dtype=torch.float64) / sigma_0
    gauss = torch.exp(-(nu**2) / 2)
    v0 = 0.5 * torch.erfc(nu / math.sqrt(2))
    v1 = sigma_1 / (8 * math.sqrt(2) * sigma_0) * gauss
    v2 = sigma_1**2 / (2 * sigma_0**2 * (2 * math.pi) ** 1.5) * nu * gauss
    return torch.stack([v0, v1, v2])
