"""Weak-lensing-like convergence maps on a small flat patch, simulated on the fly (no download).

The convergence kappa of weak gravitational lensing is a weighted projection of the matter
density along the line of sight. Its one-point distribution is skewed (voids are bounded below,
haloes make a long positive tail), and a **log-normal** field is the standard approximation of it
(Taruya et al., 2002; Hilbert, Hartlap & Schneider, 2011; Clerkin et al., 2017; Xavier et al.,
2016). This module builds such fields in four steps, on a periodic N x N grid of pixels:

1. **a Gaussian random field u** of unit variance whose discrete power spectrum has the fixed
   shape of a broken power law, rising as k at large scales and falling as k^-2 at small ones,

       S(k) ∝ (k / k_t) / (1 + (k / k_t)^2)^(3/2),      k_t = 0.08 (Omega_m / 0.3) cycles/pixel,

   where k = |(k_x, k_y)| is the frequency in cycles per pixel; the turnover k_t plays the part of
   the matter power spectrum's turnover, whose position is set by Omega_m h in cosmology. White
   noise w is coloured in Fourier space, u = IFFT(FFT(w) sqrt(S)), and S is normalised so that
   (1/N^2) sum_k S(k) = 1, so E|FFT(u)(k)|^2 / N^2 = S(k) exactly (the estimator of
   :func:`flowlib.field_statistics.power_spectrum` is unbiased for it);
2. **the amplitude**: the convergence's standard deviation is
   sigma_kappa = 0.02 (sigma_8 / 0.8) (Omega_m / 0.3)^(1/2), so that, as for real lensing
   surveys, the best-measured combination is S_8 = sigma_8 (Omega_m / 0.3)^(1/2);
3. **the log-normal map** kappa = lambda (exp(s u - s^2 / 2) - 1) with
   s^2 = log(1 + sigma_kappa^2 / lambda^2): its mean is 0, its variance sigma_kappa^2 exactly, its
   minimum -lambda (the shift lambda = 0.03, of the order of the convergence of an empty line of
   sight), and its skewness positive. Its correlation function is lambda^2 (exp(s^2 xi_u) - 1),
   with xi_u = IFFT(S) that of u, so its spectrum keeps the shape S at large scales, lowered by
   about lambda^2 s^2 / sigma_kappa^2, and gains power at small scales (tests/test_lensing.py);
4. **shape noise**, optional: the intrinsic ellipticities of the source galaxies add white noise
   of standard deviation sigma_e / sqrt(n_gal A_pix) per pixel (:func:`shape_noise_sigma`).

The numbers are of the order of real ones (arcminute pixels, sources near redshift 1) but this is
a teaching simulator: its spectrum is a fixed analytic shape, not one computed from cosmology.

>>> maps = convergence_maps(3, size=32, generator=torch.Generator().manual_seed(0))
>>> maps.shape, maps.dtype
(torch.Size([3, 1, 32, 32]), torch.float32)
>>> bool(maps.min() > -LOGNORMAL_SHIFT)
True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from flowlib._checks import FlowInputError, integer, number

__all__ = ["LOGNORMAL_SHIFT", "frequency_grid", "spectrum_shape", "gaussian_field", "convergence_std",
           "convergence_maps", "shape_noise_sigma", "convergence_log_prob"]

#: The shift lambda of the log-normal map: kappa >= -lambda.
LOGNORMAL_SHIFT = 0.03
_SIGMA_KAPPA = 0.02  # the convergence's standard deviation at sigma_8 = 0.8, Omega_m = 0.3
_TURNOVER = 0.08  # k_t at Omega_m = 0.3, in cycles per pixel


def frequency_grid(size: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """|k| in cycles per pixel on the size x size grid of the FFT, shape (size, size).

    >>> frequency_grid(4)[0].tolist()
    [0.0, 0.25, 0.5, 0.25]
    """
    f = torch.fft.fftfreq(size, dtype=dtype)
    return torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)


def _parameters(sigma_8: float, omega_m: float, who: str) -> tuple[float, float]:
    return (number(sigma_8, "sigma_8", who, minimum=0.0, strict=True),
            number(omega_m, "omega_m", who, minimum=0.0, strict=True))


def spectrum_shape(size: int, omega_m: float = 0.3, dtype: torch.dtype = torch.float64) -> Tensor:
    """S(k) on the FFT grid of a size x size map, normalised to (1/N^2) sum S = 1 (unit variance).

    The mean of the patch, the mode k = 0, gets the power of the fundamental mode |k| = 1/N: a patch
    cut from a larger sky has a mean convergence that differs from patch to patch (super-sample
    variance), and with S(0) = 0 every map would lie on the hyperplane sum u = 0, where no density
    in N^2 dimensions exists (a flow's likelihood could then grow without bound).

    >>> s = spectrum_shape(16)
    >>> bool(s[0, 0] == s[0, 1]), round(float(s.mean()), 6)
    (True, 1.0)
    """
    who = "spectrum_shape"
    size = integer(size, "size", who, minimum=4)
    omega_m = number(omega_m, "omega_m", who, minimum=0.0, strict=True)
    k = frequency_grid(size, dtype).clamp(min=1.0 / size)  # k = 0 gets the fundamental mode's power
    q = k / (_TURNOVER * omega_m / 0.3)
    shape = q / (1 + q**2) ** 1.5
    return shape / shape.mean()


def gaussian_field(n: int, size: int, spectrum: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """n periodic Gaussian fields (n, size, size), float64, with E|FFT(u)|^2 / size^2 = ``spectrum``.

    >>> u = gaussian_field(200, 16, spectrum_shape(16), torch.Generator().manual_seed(0))
    >>> round(float(u.var()), 1)
    1.0
    """
    who = "gaussian_field"
    n, size = integer(n, "n", who), integer(size, "size", who, minimum=4)
    if not isinstance(spectrum, Tensor) or spectrum.shape != (size, size) or bool((spectrum < 0).any()):
        got = tuple(spectrum.shape) if isinstance(spectrum, Tensor) else type(spectrum).__name__
        raise FlowInputError(f"{who}: expected a non-negative spectrum of shape ({size}, {size}), got {got}")
    white = torch.randn(n, size, size, generator=generator, dtype=torch.float64)
    return torch.fft.ifft2(torch.fft.fft2(white) * spectrum.to(torch.float64).sqrt()).real


def convergence_std(sigma_8: float = 0.8, omega_m: float = 0.3) -> float:
    """sigma_kappa = 0.02 (sigma_8 / 0.8) (Omega_m / 0.3)^(1/2), the maps' standard deviation.

    >>> convergence_std(0.8, 0.3)
    0.02
    """
    sigma_8, omega_m = _parameters(sigma_8, omega_m, "convergence_std")
    return _SIGMA_KAPPA * (sigma_8 / 0.8) * math.sqrt(omega_m / 0.3)


def shape_noise_sigma(sigma_e: float = 0.26, n_gal: float = 30.0, pixel_arcmin: float = 1.0) -> float:
    """The per-pixel standard deviation of shape noise, sigma_e / sqrt(n_gal A_pix).

    ``sigma_e``: the intrinsic ellipticity dispersion per component; ``n_gal``: source galaxies
    per square arcminute (about 30 for a deep survey); ``pixel_arcmin``: the pixel's side.

    >>> round(shape_noise_sigma(0.26, 30.0, 1.0), 4)
    0.0475
    """
    who = "shape_noise_sigma"
    sigma_e = number(sigma_e, "sigma_e", who, minimum=0.0)
    n_gal = number(n_gal, "n_gal", who, minimum=0.0, strict=True)
    pixel = number(pixel_arcmin, "pixel_arcmin", who, minimum=0.0, strict=True)
    return sigma_e / math.sqrt(n_gal * pixel**2)


def _per_map(value: float | Tensor, name: str, n: int, who: str) -> Tensor:
    """A parameter as n float64 values (one per map): a positive number, or n positive values."""
    values = torch.as_tensor(value, dtype=torch.float64).flatten()
    bad = bool((values <= 0).any()) or not bool(torch.isfinite(values).all())
    if values.numel() not in (1, n) or bad:
        raise FlowInputError(f"{who}: {name} must be a positive number or {n} positive values "
                             f"(one per map), got {values.tolist()[:6]}")
    return values.expand(n)


def convergence_maps(n: int, size: int = 32, sigma_8: float | Tensor = 0.8, omega_m: float | Tensor = 0.3,
                     noise: float = 0.0, generator: torch.Generator | None = None,
                     lognormal: bool = True) -> Tensor:
    """n convergence maps (n, 1, size, size), float32: log-normal (or Gaussian) fields plus noise.

    ``sigma_8`` and ``omega_m``: numbers, or tensors of n values (one pair per map, e.g. drawn
    from a prior for a conditional model). ``noise``: the standard deviation of white shape noise
    per pixel (0: none; :func:`shape_noise_sigma` gives a survey's). ``lognormal=False``: the
    Gaussian field sigma_kappa u itself, of the same spectrum shape and variance. Seeded by
    ``generator``: the same state gives the same maps.

    >>> g = torch.Generator().manual_seed(1)
    >>> kappa = convergence_maps(64, size=32, generator=g)
    >>> round(float(kappa.std()), 3), bool(kappa.mean().abs() < 0.002)
    (0.02, True)
    """
    who = "convergence_maps"
    n, size = integer(n, "n", who), integer(size, "size", who, minimum=4)
    noise = number(noise, "noise", who, minimum=0.0)
    sigma_8s, omega_ms = _per_map(sigma_8, "sigma_8", n, who), _per_map(omega_m, "omega_m", n, who)
    out = torch.empty(n, size, size, dtype=torch.float64)
    # Maps that share Omega_m share the spectrum: colour them together.
    for omega in torch.unique(omega_ms):
        rows = (omega_ms == omega).nonzero().flatten()
        out[rows] = gaussian_field(len(rows), size, spectrum_shape(size, float(omega)), generator)
    sigma_kappa = (_SIGMA_KAPPA * (sigma_8s / 0.8) * torch.sqrt(omega_ms / 0.3))[:, None, None]
    if lognormal:
        s = torch.sqrt(torch.log1p((sigma_kappa / LOGNORMAL_SHIFT) ** 2))
        out = LOGNORMAL_SHIFT * torch.expm1(s * out - s**2 / 2)
    else:
        out = sigma_kappa * out
    if noise > 0:
        out = out + noise * torch.randn(out.shape, generator=generator, dtype=torch.float64)
    return out[:, None].to(torch.float32)


def convergence_log_prob(maps: Tensor, sigma_8: float | Tensor = 0.8, omega_m: float | Tensor = 0.3,
                         lognormal: bool = True) -> Tensor:
    """The exact log-density log p(kappa | sigma_8, Omega_m) of noise-free maps (n, 1, N, N): (n,), float64.

    The simulator is itself a flow. With f(kappa) = u = (log(1 + kappa / lambda) + s^2 / 2) / s
    pixel by pixel, the Gaussian latent u ~ N(0, C) and C diagonal in Fourier space with the
    spectrum S (C = U^H diag(S) U for the unitary DFT U), the change of variables gives

        log p(kappa) = -1/2 sum_k |FFT(u)_k|^2 / (N^2 S_k) - 1/2 sum_k log S_k - (N^2 / 2) log 2 pi
                       - sum_pixels log(s (kappa + lambda)),

    the last sum being log |det df/dkappa| (df/dkappa = 1 / (s (kappa + lambda))). For
    ``lognormal=False`` (kappa = sigma_kappa u) it is -N^2 log sigma_kappa instead. Maps with a
    pixel at or below -lambda are outside the support: -inf. ``sigma_8``, ``omega_m``: numbers or
    n values (one pair per map, e.g. a grid of parameters for a posterior). Shape noise has no
    closed form here: pass maps without it.

    >>> g = torch.Generator().manual_seed(0)
    >>> kappa = convergence_maps(200, size=16, generator=g)
    >>> right, wrong = convergence_log_prob(kappa), convergence_log_prob(kappa, sigma_8=0.9)
    >>> bool((right.mean() > wrong.mean()) and right.isfinite().all())
    True
    """
    who = "convergence_log_prob"
    if not isinstance(maps, Tensor) or maps.dim() != 4 or maps.shape[1] != 1 \
            or maps.shape[2] != maps.shape[3]:
        got = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise FlowInputError(f"{who}: expected maps of shape (n, 1, N, N), got {got}")
    n, size = maps.shape[0], maps.shape[-1]
    kappa = maps[:, 0].to(torch.float64)
    sigma_8s, omega_ms = _per_map(sigma_8, "sigma_8", n, who), _per_map(omega_m, "omega_m", n, who)
    sigma_kappa = (_SIGMA_KAPPA * (sigma_8s / 0.8) * torch.sqrt(omega_ms / 0.3))[:, None, None]
    if lognormal:
        s = torch.sqrt(torch.log1p((sigma_kappa / LOGNORMAL_SHIFT) ** 2))
        inside = (kappa > -LOGNORMAL_SHIFT).flatten(1).all(1)
        shifted = (kappa + LOGNORMAL_SHIFT).clamp(min=1e-300)
        u = (torch.log(shifted / LOGNORMAL_SHIFT) + s**2 / 2) / s
        log_det = -torch.log(s * shifted).sum((1, 2))
    else:
        inside = torch.ones(n, dtype=torch.bool)
        u = kappa / sigma_kappa
        log_det = -size**2 * torch.log(sigma_kappa[:, 0, 0])
    # One spectrum per distinct Omega_m (a grid of sigma_8 shares one), indexed for every map.
    values, which = torch.unique(omega_ms, return_inverse=True)
    spectra = torch.stack([spectrum_shape(size, float(o)) for o in values])[which]
    power = torch.fft.fft2(u).abs() ** 2 / size**2
    log_gauss = -0.5 * (power / spectra).sum((1, 2)) - 0.5 * spectra.log().sum((1, 2)) \
        - 0.5 * size**2 * math.log(2 * math.pi)
    out = log_gauss + log_det
    return torch.where(inside, out, torch.full_like(out, -math.inf))
