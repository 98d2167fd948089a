"""The weak-lensing simulator (flowlib.data.lensing) and the map statistics (flowlib.field_statistics),
each checked on fields whose answer is known: the input spectrum recovered within its sampling
error, the log-normal map's exact moments, hand-made peaks, and the Minkowski functionals of
Gaussian fields against their closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from flowlib import FlowInputError
from flowlib.data.lensing import (
    LOGNORMAL_SHIFT,
    convergence_log_prob,
    convergence_maps,
    convergence_std,
    gaussian_field,
    shape_noise_sigma,
    spectrum_shape,
)
from flowlib.field_statistics import (
    bin_modes,
    gaussian_minkowski,
    gradient_std,
    minkowski_functionals,
    one_point_pdf,
    peak_counts,
    power_spectrum,
    spectrum_bins,
)


@pytest.mark.parametrize(("size", "omega_m"), [(32, 0.3), (64, 0.2)])
def test_the_input_spectrum_is_recovered_within_its_sampling_error(size, omega_m):
    spectrum = spectrum_shape(size, omega_m)
    maps = gaussian_field(300, size, spectrum, torch.Generator().manual_seed(0))
    _, estimates = power_spectrum(maps, bins=6)
    expected = bin_modes(spectrum, 6)
    error = estimates.std(0) / math.sqrt(estimates.shape[0])
    assert ((estimates.mean(0) - expected).abs() < 4 * error).all(), (estimates.mean(0), expected, error)
    # The scatter of one map's estimate is that of a chi-square with 2 degrees of freedom per pair of modes.
    _, _, modes = spectrum_bins(size, 6)
    relative = estimates.std(0) / estimates.mean(0)
    assert ((relative / torch.sqrt(2 / modes)) - 1).abs().max() < 0.35, relative


def test_spectrum_shape_turns_over_where_omega_m_puts_it():
    for omega_m in (0.2, 0.4):
        s = spectrum_shape(128, omega_m)
        f = torch.fft.fftfreq(128, dtype=torch.float64)
        k = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
        peak = float(k.flatten()[s.flatten().argmax()])
        turnover = 0.08 * omega_m / 0.3 / math.sqrt(2)  # q / (1 + q^2)^(3/2) is largest at q = 1/sqrt 2
        assert peak == pytest.approx(turnover, rel=0.1)
    assert float(spectrum_shape(32).mean()) == pytest.approx(1.0)


def test_lognormal_maps_have_the_exact_moments_and_a_lower_bound():
    g = torch.Generator().manual_seed(1)
    for sigma_8, omega_m in ((0.8, 0.3), (1.0, 0.25)):
        kappa = convergence_maps(200, size=32, sigma_8=sigma_8, omega_m=omega_m, generator=g).double()
        target = convergence_std(sigma_8, omega_m)
        assert float(kappa.mean()) == pytest.approx(0.0, abs=0.05 * target)
        assert float(kappa.std()) == pytest.approx(target, rel=0.05)
        assert float(kappa.min()) > -LOGNORMAL_SHIFT
        skewness = float(((kappa - kappa.mean()) ** 3).mean() / kappa.std() ** 3)
        s2 = math.log1p((target / LOGNORMAL_SHIFT) ** 2)
        exact = (math.exp(s2) + 2) * math.sqrt(math.expm1(s2))  # the skewness of a log-normal variable
        assert skewness == pytest.approx(exact, rel=0.15)
    gaussian = convergence_maps(200, size=32, lognormal=False, generator=g).double()
    assert abs(float(((gaussian / gaussian.std()) ** 3).mean())) < 0.1


def test_maps_are_seeded_take_one_parameter_pair_per_map_and_add_shape_noise():
    a = convergence_maps(4, generator=torch.Generator().manual_seed(5))
    b = convergence_maps(4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)
    sigma_8 = torch.tensor([0.6, 0.6, 1.0, 1.0])
    maps = convergence_maps(4, size=16, sigma_8=sigma_8, omega_m=0.3,
                            generator=torch.Generator().manual_seed(2))
    assert maps.shape == (4, 1, 16, 16)
    two_amplitudes = torch.full((400,), 0.6).index_fill(0, torch.arange(200), 1.2)
    many = convergence_maps(400, size=16, sigma_8=two_amplitudes,
                            generator=torch.Generator().manual_seed(3)).double()
    assert float(many[:200].std() / many[200:].std()) == pytest.approx(2.0, rel=0.08)  # S_8 scales the map
    sigma_n = shape_noise_sigma(0.26, 30, 1.0)
    noisy = convergence_maps(50, size=32, noise=sigma_n, generator=torch.Generator().manual_seed(4)).double()
    assert float(noisy.std()) == pytest.approx(math.hypot(convergence_std(), sigma_n), rel=0.05)
    with pytest.raises(FlowInputError, match="convergence_maps: sigma_8 must be a positive number or 4"):
        convergence_maps(4, sigma_8=torch.tensor([0.8, 0.9]))
    with pytest.raises(FlowInputError, match="omega_m"):
        convergence_maps(2, omega_m=-0.3)
    with pytest.raises(FlowInputError, match="gaussian_field: expected a non-negative spectrum of shape"):
        gaussian_field(2, 8, torch.ones(4, 4))


def test_one_point_pdf_of_a_gaussian_field_is_the_normal_density():
    maps = gaussian_field(100, 32, spectrum_shape(32), torch.Generator().manual_seed(6))
    edges = torch.linspace(-3, 3, 13, dtype=torch.float64)
    pdf = one_point_pdf(maps, edges).mean(0)
    centres = (edges[1:] + edges[:-1]) / 2
    normal = torch.exp(-(centres**2) / 2) / math.sqrt(2 * math.pi)
    assert (pdf - normal).abs().max() < 0.02
    inside = float((pdf * (edges[1:] - edges[:-1])).sum())
    assert inside == pytest.approx(math.erf(3 / math.sqrt(2)), abs=0.01)


def test_peak_counts_find_hand_made_peaks_by_height():
    maps = torch.zeros(2, 16, 16, dtype=torch.float64)
    maps[0, 2, 3], maps[0, 8, 8], maps[0, 12, 1] = 1.0, 2.5, 2.7
    maps[0, 8, 9] = 2.4  # next to a higher pixel: not a peak
    maps[1, 0, 0] = 3.0  # at the corner: periodic neighbours
    counts = peak_counts(maps[:, None], torch.tensor([0.5, 1.5, 2.6, 3.5]))
    assert counts.tolist() == [[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    with pytest.raises(FlowInputError, match="peak_counts: edges must be at least two increasing"):
        peak_counts(maps, torch.tensor([1.0, 0.5]))
    with pytest.raises(FlowInputError, match=r"peak_counts: expected square maps"):
        peak_counts(torch.zeros(2, 4, 5), torch.tensor([0.0, 1.0]))


def test_minkowski_functionals_of_gaussian_fields_match_the_closed_forms():
    """A smooth Gaussian field (spectrum exp(-(k/0.06)^2), resolved by the pixels): V_0, V_1, V_2
    against Tomita's formulas with sigma_0 and sigma_1 measured on the maps."""
    size = 64
    f = torch.fft.fftfreq(size, dtype=torch.float64)
    k = torch.sqrt(f[:, None] ** 2 + f[None, :] ** 2)
    spectrum = torch.exp(-((k / 0.06) ** 2))
    spectrum[0, 0] = 0
    spectrum = spectrum / spectrum.mean()
    maps = gaussian_field(60, size, spectrum, torch.Generator().manual_seed(7))
    nu = torch.linspace(-2.5, 2.5, 21, dtype=torch.float64)
    measured = minkowski_functionals(maps, nu).mean(0)
    expected = gaussian_minkowski(nu, float(maps.std()), gradient_std(maps))
    for i in range(3):
        scale = float(expected[i].abs().max())
        assert (measured[i] - expected[i]).abs().max() < 0.08 * scale, (i, measured[i], expected[i])
    with pytest.raises(FlowInputError, match="unevenly spaced"):
        minkowski_functionals(maps[:1], torch.tensor([0.0, 1.0, 3.0]))


def test_the_lognormal_spectrum_is_the_transform_of_its_correlation_function():
    """kappa = lambda (exp(s u - s^2/2) - 1) has the correlation function lambda^2 (exp(s^2 xi_u) - 1),
    where xi_u = IFFT(S) on the periodic grid: its power spectrum, the FFT of that, is what the
    estimator recovers on average (within 4 standard errors). At large scales it is below
    sigma_kappa^2 S by about lambda^2 s^2 / sigma_kappa^2: the log-normal moves power to small scales."""
    size = 32
    maps = convergence_maps(300, size=size, generator=torch.Generator().manual_seed(8)).double()
    _, estimates = power_spectrum(maps, bins=6)
    s2 = math.log1p((convergence_std() / LOGNORMAL_SHIFT) ** 2)
    xi_u = torch.fft.ifft2(spectrum_shape(size)).real
    spectrum = torch.fft.fft2(LOGNORMAL_SHIFT**2 * torch.expm1(s2 * xi_u)).real
    expected = bin_modes(spectrum, 6)
    error = estimates.std(0) / math.sqrt(estimates.shape[0])
    assert ((estimates.mean(0) - expected).abs() < 4 * error).all(), (estimates.mean(0), expected, error)
    gaussian = bin_modes(spectrum_shape(size), 6) * convergence_std() ** 2
    assert float(expected[0] / gaussian[0]) < 0.95 and float(expected[-1] / gaussian[-1]) > 1.0
    v = minkowski_functionals(maps, torch.linspace(-0.01, 0.01, 3, dtype=torch.float64)).mean(0)
    assert float(v[0, 1]) < 0.5  # the skewed field spends less than half its area above its mean


def _pixel_covariance(size: int, omega_m: float) -> torch.Tensor:
    """The covariance of u between all pixel pairs, C_ab = xi_u(a - b), from the spectrum by brute force."""
    xi = torch.fft.ifft2(spectrum_shape(size, omega_m)).real
    i = torch.arange(size)
    rows, cols = (t.flatten() for t in torch.meshgrid(i, i, indexing="ij"))
    return xi[(rows[:, None] - rows[None]) % size, (cols[:, None] - cols[None]) % size]


@pytest.mark.parametrize("lognormal", [True, False], ids=["log-normal", "Gaussian"])
def test_the_exact_log_density_is_the_change_of_variables_of_a_dense_gaussian(lognormal):
    """Against a multivariate normal with the full pixel covariance (no Fourier shortcut) and, for
    the log-normal map, the log-derivative of u(kappa) by autograd."""
    size, sigma_8, omega_m = 6, 0.9, 0.25
    kappa = convergence_maps(4, size, sigma_8=sigma_8, omega_m=omega_m, lognormal=lognormal,
                             generator=torch.Generator().manual_seed(3))
    sigma_kappa = convergence_std(sigma_8, omega_m)
    flat = kappa[:, 0].double().flatten(1)
    if lognormal:
        s = math.sqrt(math.log1p((sigma_kappa / LOGNORMAL_SHIFT) ** 2))

        def to_u(k):
            return (torch.log1p(k / LOGNORMAL_SHIFT) + s**2 / 2) / s
    else:
        def to_u(k):
            return k / sigma_kappa
    gauss = torch.distributions.MultivariateNormal(torch.zeros(size**2, dtype=torch.float64),
                                                   covariance_matrix=_pixel_covariance(size, omega_m))
    jacobians = [torch.autograd.functional.jacobian(to_u, row) for row in flat]
    log_det = torch.stack([torch.linalg.slogdet(j)[1] for j in jacobians])
    expected = gauss.log_prob(to_u(flat)) + log_det
    got = convergence_log_prob(kappa, sigma_8=sigma_8, omega_m=omega_m, lognormal=lognormal)
    assert got.dtype == torch.float64 and torch.allclose(got, expected, atol=1e-8, rtol=0)


def test_the_exact_log_density_peaks_near_the_truth_and_refuses_what_it_cannot_score():
    kappa = convergence_maps(50, 32, sigma_8=0.8, generator=torch.Generator().manual_seed(4))
    grid = torch.linspace(0.6, 1.0, 41)
    total = torch.stack([convergence_log_prob(kappa, sigma_8=float(s)).sum() for s in grid])
    assert abs(float(grid[total.argmax()]) - 0.8) <= 0.02
    # One parameter per map; a pixel below -lambda is outside the support.
    per_map = convergence_log_prob(kappa[:2], sigma_8=torch.tensor([0.8, 0.9]))
    assert torch.allclose(per_map, torch.stack([convergence_log_prob(kappa[:1])[0],
                                                convergence_log_prob(kappa[1:2], sigma_8=0.9)[0]]))
    below = kappa[:2].clone()
    below[0, 0, 3, 3] = -1.01 * LOGNORMAL_SHIFT
    out = convergence_log_prob(below)
    assert out[0] == -math.inf and torch.isfinite(out[1])
    with pytest.raises(FlowInputError, match=r"convergence_log_prob: expected maps of shape \(n, 1, N, N\)"):
        convergence_log_prob(kappa[:, 0])
    with pytest.raises(FlowInputError, match="convergence_log_prob: sigma_8 must be"):
        convergence_log_prob(kappa, sigma_8=torch.tensor([0.8, 0.9]))


def test_every_map_has_a_density_the_patch_mean_varies():
    """S(0) > 0: the mean of a patch varies from map to map as the fundamental mode's power says."""
    size = 32
    spectrum = spectrum_shape(size)
    assert float(spectrum[0, 0]) == float(spectrum[0, 1]) > 0
    u = gaussian_field(2000, size, spectrum, torch.Generator().manual_seed(5))
    means = u.mean((1, 2))
    expected = math.sqrt(float(spectrum[0, 0])) / size  # Var(mean) = S(0) / N^2
    assert abs(float(means.std()) / expected - 1) < 0.1
