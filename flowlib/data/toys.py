"""2D toy densities whose log-density is known, so KL(data || model) is measured, not guessed.

Each toy has a ``name``, a plotting box ``bounds = (-L, L)`` (the same interval on both axes),
``sample(n, generator=None)`` returning a float32 tensor of shape ``(n, 2)`` and a normalised
``log_prob(x)`` of shape ``(n,)`` (a point with a NaN coordinate is refused with a FlowInputError,
by every toy alike; points at +-inf get log p = -inf, the density 0 of points far away). The
definitions are fixed, so that pictures and numbers compare across notebooks, libraries and papers:

===================  =========================================================================
``eight_gaussians``  equal mixture of 8 Gaussians, centres on the circle of radius 4, std 0.5
``two_moons``        scikit-learn's two moons, centred and scaled by 2, as a mixture of 200
                     Gaussians of std 0.2 placed evenly on the arcs (exact ``log_prob``)
``checkerboard``     uniform on 8 of the 16 2x2 squares of [-4, 4]^2 (Grathwohl et al., 2019)
``rings``            4 concentric rings of radii 1..4 blurred by Gaussian noise (exact, Bessel)
``U1`` .. ``U4``     the energies of Rezende & Mohamed (2015, Table 1) restricted to [-4, 4]^2,
                     normalised numerically on a 1024 x 1024 grid (error well below 1e-3)
===================  =========================================================================

Example::

    toy = get_toy("two_moons")
    x = toy.sample(1000, generator=torch.Generator().manual_seed(0))
    toy.log_prob(x).mean()     # minus the differential entropy, in nats
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

from flowlib._checks import FlowInputError, choice, integer, number

__all__ = [
    "TOYS",
    "Toy2D",
    "EightGaussians",
    "TwoMoons",
    "Checkerboard",
    "Rings",
    "EnergyToy",
    "get_toy",
]

_LOG_2PI = math.log(2 * math.pi)


def _points(x: Tensor, who: str) -> Tensor:
    """``x`` if it is a floating-point tensor of points in the plane, shape (n, 2)."""
    if not isinstance(x, Tensor):
        raise FlowInputError(f"{who}: expected a torch.Tensor of shape (n, 2), got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != 2:
        raise FlowInputError(f"{who}: expected points of shape (n, 2), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FlowInputError(f"{who}: expected a floating-point tensor, got dtype {x.dtype}")
    # A NaN point has no density: without this check 5 of the 8 toys said -inf (the point is
    # "outside the support") and the rest NaN. +-inf points are fine: their density is 0.
    nan = torch.isnan(x).any(dim=1)
    if bool(nan.any()):
        rows = nan.nonzero().flatten().tolist()
        shown = ", ".join(map(str, rows[:5])) + (", ..." if len(rows) > 5 else "")
        raise FlowInputError(f"{who}: expected points without NaN, found NaN in {len(rows)} of {x.shape[0]} "
                             f"rows (row {shown}); drop them first, e.g. x[~x.isnan().any(dim=1)]")
    return x


def _gaussian_mixture_log_prob(x: Tensor, centres: Tensor, std: float) -> Tensor:
    """log of (1/K) sum_k N(x; c_k, std^2 I) for points x (n, 2), by logsumexp (no underflow)."""
    c = centres.to(device=x.device, dtype=x.dtype)
    const = -2 * math.log(std) - _LOG_2PI - math.log(c.shape[0])
    out = []
    # Chunks of rows bound the (rows, K) temporaries; the differences are formed directly
    # (not as |x|^2 - 2 x.c + |c|^2) because that expansion loses digits in float32.
    for xs in x.split(8192):
        sq = (xs[:, :1] - c[:, 0]) ** 2 + (xs[:, 1:] - c[:, 1]) ** 2  # (rows, K)
        out.append(torch.logsumexp(sq * (-0.5 / std**2), dim=1))
    return torch.cat(out) + const


class Toy2D:
    """A density on the plane with ``sample`` and an exact, normalised ``log_prob``.

    Subclasses set ``name`` and ``bounds`` and implement ``_sample`` and ``_log_prob``;
    this base class checks the arguments, so every toy reports mistakes the same way.
    """

    name: str = "toy"
    #: The plotting box (-L, L), used for both axes; it holds (almost) all of the mass.
    bounds: tuple[float, float] = (-4.0, 4.0)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` independent draws, float32 of shape (n, 2); same generator state, same points.

        Samples are created on the generator's device (the CPU when no generator is given).
        """
        n = integer(n, "n", f"{type(self).__name__}.sample")
        device = generator.device if generator is not None else torch.device("cpu")
        return self._sample(n, generator, device).to(torch.float32)

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) in nats, one value per row of ``x`` (shape (n, 2)); dtype and device of x."""
        return self._log_prob(_points(x, f"{type(self).__name__}.log_prob"))

    def prob(self, x: Tensor) -> Tensor:
        """p(x) = exp(log p(x))."""
        return self.log_prob(x).exp()

    def _sample(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        raise NotImplementedError

    def _log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, bounds={self.bounds})"


class EightGaussians(Toy2D):
    """p(x) = (1/8) sum_k N(x; 4 (cos(k pi/4), sin(k pi/4)), s^2 I), k = 0..7, s = ``std`` (0.5).

    A smaller ``std`` makes the modes narrow and far apart in units of their width, the test
    of mode dropping (a GAN's generator may leave some of them out).

    >>> narrow = EightGaussians(std=0.05)
    >>> round(float(narrow.sample(1000).sub(narrow.centres[0]).norm(dim=1).min()), 1) < 0.2
    True
    """

    name = "eight_gaussians"
    bounds = (-6.5, 6.5)  # radius 4 + 5 standard deviations of the default toy
    radius = 4.0
    std = 0.5

    def __init__(self, std: float = 0.5) -> None:
        self.std = number(std, "std", "EightGaussians", minimum=0.0, strict=True)
        angle = torch.arange(8, dtype=torch.float64) * (math.pi / 4)
        self.centres = self.radius * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)

    def _sample(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        k = torch.randint(0, 8, (n,), generator=generator, device=device)
        noise = torch.randn(n, 2, generator=generator, device=device, dtype=torch.float64)
        return self.centres.to(device)[k] + self.std * noise

    def _log_prob(self, x: Tensor) -> Tensor:
        return _gaussian_mixture_log_prob(x, self.centres, self.std)


class TwoMoons(Toy2D):
    """The two moons of scikit-learn's ``make_moons`` as an exact Gaussian mixture.

    The arcs, for t in [0, pi]: outer (cos t, sin t), inner (1 - cos t, 1/2 - sin t). Each arc
    carries 100 points at t = linspace(0, pi, 100) (both ends included, as in scikit-learn).
    The points are shifted by (-0.5, -0.25) -- minus the mean of the two arcs' circle centres
    (0, 0) and (1, 1/2) -- and then scaled by 2, so the density's mean is exactly (0, 0) and
    the moons span [-3, 3] x [-1.5, 1.5]. The density is the equal mixture of isotropic
    Gaussians of std 0.2 (in these final units) on the 200 points:

        p(x) = (1/200) sum_j N(x; c_j, 0.2^2 I),

    and ``sample`` draws exactly from it (a random centre plus Gaussian noise).
    """

    name = "two_moons"
    bounds = (-4.0, 4.0)
    std = 0.2
    points_per_arc = 100

    def __init__(self) -> None:
        t = torch.linspace(0, math.pi, self.points_per_arc, dtype=torch.float64)
        outer = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
        inner = torch.stack([1 - torch.cos(t), 0.5 - torch.sin(t)], dim=1)
        shift = torch.tensor([0.5, 0.25], dtype=torch.float64)
        self.centres = 2.0 * (torch.cat([outer, inner]) - shift)

    def _sample(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        k = torch.randint(0, self.centres.shape[0], (n,), generator=generator, device=device)
        noise = torch.randn(n, 2, generator=generator, device=device, dtype=torch.float64)
        return self.centres.to(device)[k] + self.std * noise

    def _log_prob(self, x: Tensor) -> Tensor:
        return _gaussian_mixture_log_prob(x, self.centres, self.std)


class Checkerboard(Toy2D):
    """FFJORD's checkerboard (Grathwohl et al., 2019): uniform on 8 of the 16 2x2 squares.

    Square (a, b) = [2a, 2a+2) x [2b, 2b+2), a, b in {-2, -1, 0, 1}, is filled when a + b is
    even. The support has area 8 * 4 = 32, so log p = log(1/32) inside and ``-inf`` outside
    (the density is exactly zero there: a model's KL stays finite, but ``log_prob`` of points
    off the support is ``-inf`` by design).
    """

    name = "checkerboard"
    bounds = (-4.0, 4.0)

    def _sample(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        a = torch.randint(-2, 2, (n,), generator=generator, device=device)
        # b in {-2, 0} when a is even and {-1, 1} when a is odd, so a + b is always even.
        b = 2 * torch.randint(0, 2, (n,), generator=generator, device=device) - 2 + a.remainder(2)
        corner = 2.0 * torch.stack([a, b], dim=1).to(torch.float64)
        return corner + 2.0 * torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)

    def _log_prob(self, x: Tensor) -> Tensor:
        cell = torch.floor(x / 2)
        inside = (x.abs() < 4).all(dim=1) & ((cell[:, 0] + cell[:, 1]).remainder(2) == 0)
        return torch.where(inside, x.new_full((), -math.log(32.0)), x.new_full((), -math.inf))


class Rings(Toy2D):
    """Four concentric rings of radii R = 1, 2, 3, 4 (equal weights), blurred by N(0, s^2 I).

    A sample is x = R (cos a, sin a) + s e with a ~ U[0, 2 pi), e ~ N(0, I), s = 0.15. Averaging
    the Gaussian over the angle gives the exact density of one ring (r = ||x||):

        p_R(x) = exp(-(r^2 + R^2) / (2 s^2)) I_0(r R / s^2) / (2 pi s^2),

    with I_0 the modified Bessel function of order 0. It is evaluated through the scaled
    ``i0e(u) = exp(-u) I_0(u)`` so that nothing overflows:
    log p_R = -(r - R)^2 / (2 s^2) + log i0e(r R / s^2) - log(2 pi s^2). Exact, no grid.
    """

    name = "rings"
    bounds = (-5.0, 5.0)
    radii = (1.0, 2.0, 3.0, 4.0)
    std = 0.15

    def _sample(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        radii = torch.tensor(self.radii, dtype=torch.float64, device=device)
        k = torch.randint(0, len(self.radii), (n,), generator=generator, device=device)
        angle = 2 * math.pi * torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        ring = radii[k, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
        return ring + self.std * torch.randn(n, 2, generator=generator, device=device, dtype=torch.float64)

    def _log_prob(self, x: Tensor) -> Tensor:
        s2 = self.std**2
        r = x.norm(dim=1, keepdim=True)  # (n, 1)
        radii = torch.tensor(self.radii, device=x.device, dtype=x.dtype)  # (K,)
        log_ring = -((r - radii) ** 2) / (2 * s2) + torch.log(torch.special.i0e(r * radii / s2))
        return torch.logsumexp(log_ring, dim=1) - math.log(len(self.radii)) - math.log(2 * math.pi * s2)


# -- the energies of Rezende & Mohamed (2015), Table 1 ----------------------------------------
def _w1(z: Tensor) -> Tensor:
    return torch.sin(2 * math.pi * z[:, 0] / 4)


def _w2(z: Tensor) -> Tensor:
    return 3 * torch.exp(-0.5 * ((z[:, 0] - 1) / 0.6) ** 2)


def _w3(z: Tensor) -> Tensor:
    return 3 * torch.sigmoid((z[:, 0] - 1) / 0.3)


def _minus_log_sum_exp(a: Tensor, b: Tensor) -> Tensor:
    """-log(exp(a) + exp(b)), stable where both exponentials underflow."""
    return -torch.logaddexp(a, b)


def _u1(z: Tensor) -> Tensor:
    ring = 0.5 * ((z.norm(dim=1) - 2) / 0.4) ** 2
    return ring + _minus_log_sum_exp(-0.5 * ((z[:, 0] - 2) / 0.6) ** 2, -0.5 * ((z[:, 0] + 2) / 0.6) ** 2)


def _u2(z: Tensor) -> Tensor:
    return 0.5 * ((z[:, 1] - _w1(z)) / 0.4) ** 2


def _u3(z: Tensor) -> Tensor:
    d = z[:, 1] - _w1(z)
    return _minus_log_sum_exp(-0.5 * (d / 0.35) ** 2, -0.5 * ((d + _w2(z)) / 0.35) ** 2)


def _u4(z: Tensor) -> Tensor:
    d = z[:, 1] - _w1(z)
    return _minus_log_sum_exp(-0.5 * (d / 0.4) ** 2, -0.5 * ((d + _w3(z)) / 0.35) ** 2)


_ENERGIES: dict[str, Callable[[Tensor], Tensor]] = {"U1": _u1, "U2": _u2, "U3": _u3, "U4": _u4}

#: Half-width of the box [-L, L]^2 the energy targets live on, and the grid that normalises them.
_ENERGY_HALF_WIDTH = 4.0
_ENERGY_GRID = 1024


@functools.cache
def _energy_grid(name: str, half_width: float, resolution: int) -> tuple[float, Tensor]:
    """log Z and the cumulative cell masses of exp(-U) on a midpoint grid over the box.

    Computed once per process in float64 on the CPU. Z = h^2 sum_cells exp(-U(centre)) is the
    midpoint rule; the integrand is smooth up to the box's edges, so the error is O(h^2) and,
    with h = 8/1024, about 1e-5, far below 1e-3 (the tests check it on a different grid).
    """
    h = 2 * half_width / resolution
    centres = -half_width + h * (torch.arange(resolution, dtype=torch.float64) + 0.5)
    energy = _ENERGIES[name]
    rows = []
    # A band of 128 grid rows at a time keeps the temporaries small.
    for start in range(0, resolution, 128):
        z2, z1 = torch.meshgrid(centres[start:start + 128], centres, indexing="ij")
        rows.append(-energy(torch.stack([z1.flatten(), z2.flatten()], dim=1)).reshape(z1.shape))
    log_unnorm = torch.cat(rows)  # [i2, i1]: row = z2, column = z1
    shift = log_unnorm.max()
    mass = torch.exp(log_unnorm - shift).flatten()
    cdf = torch.cumsum(mass, dim=0)
    log_z = float(shift + torch.log(cdf[-1]) + 2 * math.log(h))
    return log_z, cdf / cdf[-1]


class EnergyToy(Toy2D):
    """p(z) = exp(-U(z)) / Z on the box [-4, 4]^2 (zero outside), U one of Rezende & Mohamed's.

    Rezende & Mohamed (2015), Table 1, with w1 = sin(2 pi z1 / 4), w2 = 3 exp(-((z1 - 1)/0.6)^2 / 2),
    w3 = 3 sigmoid((z1 - 1)/0.3):

        U1 = ((||z|| - 2)/0.4)^2 / 2 - log(exp(-((z1 - 2)/0.6)^2/2) + exp(-((z1 + 2)/0.6)^2/2))
        U2 = ((z2 - w1)/0.4)^2 / 2
        U3 = -log(exp(-((z2 - w1)/0.35)^2/2) + exp(-((z2 - w1 + w2)/0.35)^2/2))
        U4 = -log(exp(-((z2 - w1)/0.4)^2/2) + exp(-((z2 - w1 + w3)/0.35)^2/2))

    U2-U4 do not grow along z1, so exp(-U) has infinite mass on the plane; like the paper's
    figures, we restrict every target to the box [-4, 4]^2 (U1's mass outside it is ~1e-6).
    ``log_prob`` = -U - log Z inside the box and ``-inf`` outside, where log Z comes from the
    midpoint rule on a 1024 x 1024 grid of the box (float64, cached; accurate far beyond 1e-3).
    ``sample`` picks a grid cell with probability proportional to its midpoint mass (inverse
    CDF) and a uniform point inside it: a piecewise-constant approximation whose cells are
    0.0078 wide, much finer than any feature of the targets.
    """

    bounds = (-_ENERGY_HALF_WIDTH, _ENERGY_HALF_WIDTH)

    def __init__(self, name: str) -> None:
        self.name = choice(name, "name", sorted(_ENERGIES), "EnergyToy")
        self._energy = _ENERGIES[name]

    def energy(self, z: Tensor) -> Tensor:
        """The unnormalised energy U(z), shape (n,): the target is p(z) = exp(-U(z)) / Z on the box."""
        return self._energy(_points(z, "EnergyToy.energy"))

    @property
    def log_normalizer(self) -> float:
        """log Z = log of the integral of exp(-U) over the box [-4, 4]^2."""
        return _energy_grid(self.name, _ENERGY_HALF_WIDTH, _ENERGY_GRID)[0]

    def _log_prob(self, x: Tensor) -> Tensor:
        inside = (x.abs() <= _ENERGY_HALF_WIDTH).all(dim=1)
        log_p = -self._energy(x) - self.log_normalizer
        return torch.where(inside, log_p, x.new_full((), -math.inf))

    def _sample(self, n: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
        _, cdf = _energy_grid(self.name, _ENERGY_HALF_WIDTH, _ENERGY_GRID)
        res, h = _ENERGY_GRID, 2 * _ENERGY_HALF_WIDTH / _ENERGY_GRID
        u = torch.rand(n, generator=generator, device=device, dtype=torch.float64)
        cell = torch.searchsorted(cdf.to(device), u, right=True).clamp_(max=res * res - 1)
        i2, i1 = cell // res, cell % res  # the grid is stored row = z2, column = z1
        corner = torch.stack([i1, i2], dim=1).to(torch.float64) * h - _ENERGY_HALF_WIDTH
        return corner + h * torch.rand(n, 2, generator=generator, device=device, dtype=torch.float64)


_TOY_CLASSES: dict[str, Callable[[], Toy2D]] = {
    "eight_gaussians": EightGaussians,
    "two_moons": TwoMoons,
    "checkerboard": Checkerboard,
    "rings": Rings,
    **{name: functools.partial(EnergyToy, name) for name in _ENERGIES},
}

#: The names accepted by :func:`get_toy`.
TOYS: list[str] = list(_TOY_CLASSES)


def get_toy(name: str) -> Toy2D:
    """The toy called ``name`` (one of :data:`TOYS`; ``"u1"`` is accepted for ``"U1"``).

    >>> toy = get_toy("two_moons")
    >>> toy.sample(1000, generator=torch.Generator().manual_seed(0)).shape
    torch.Size([1000, 2])
    """
    key = name if name in _TOY_CLASSES else (name.upper() if isinstance(name, str) else name)
    return _TOY_CLASSES[choice(key, "name", TOYS, "get_toy")]()
