"""The monotone rational-quadratic spline transformer (Durkan et al., 2019, "Neural Spline Flows").

An affine transformer can only stretch and shift a coordinate; a spline can *bend* it. On the
interval [-B, B] the map is made of K pieces, each a ratio of two quadratics (Gregory &
Delbourgo, 1982), joined at K + 1 knots (x_k, y_k) where it has the derivatives d_k > 0.
Outside [-B, B] it is the identity (the *linear tails*), so the whole real line is covered and
the derivative is continuous at +-B (d_0 = d_K = 1).

In bin k, with xi = (x - x_k) / w_k in [0, 1], w_k = x_{k+1} - x_k, h_k = y_{k+1} - y_k and
the bin's mean slope s_k = h_k / w_k:

    y = y_k + h_k [s_k xi^2 + d_k xi (1 - xi)] / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]

    dy/dx = s_k^2 [d_{k+1} xi^2 + 2 s_k xi (1 - xi) + d_k (1 - xi)^2]
            / [s_k + (d_{k+1} + d_k - 2 s_k) xi (1 - xi)]^2

It is strictly increasing, and its inverse is exact: xi is the root in [0, 1] of a quadratic
(Durkan et al., 2019, eq. 6-8), written in the form 2c / (-b - sqrt(b^2 - 4ac)) that does not
cancel when a is near 0.

Parameters per coordinate, from the conditioner (``params = 3K - 1``, stacked along dim 1 one
group after the other, as every flowlib transformer): K unnormalised widths, K unnormalised
heights (each a softmax, scaled to 2B, with a minimum), and K - 1 unnormalised interior
derivatives (a softplus, with a minimum). All zeros give equal bins and slopes 1: the identity,
so a zero-initialised conditioner starts its layer at the identity.

>>> spline = RationalQuadraticSpline(bins=4, bound=3.0)
>>> spline.params
11
>>> x = torch.tensor([[-5.0, -1.0, 0.5, 2.9, 7.0]])
>>> y, ld = spline(x, torch.zeros(1, 11 * 5))
>>> torch.allclose(y, x), bool(ld.abs().max() < 1e-6)
(True, True)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from flowlib._checks import choice, integer, number
from flowlib.transformers import Affine, Transformer

__all__ = ["RationalQuadraticSpline", "named_transformer"]


class RationalQuadraticSpline(Transformer):
    """Durkan et al.'s monotone rational-quadratic spline on [-bound, bound], identity outside.

    ``bins`` K pieces (``params = 3K - 1`` numbers per coordinate); ``min_width``,
    ``min_height`` (fractions of the interval) and ``min_derivative`` keep every bin and slope
    away from 0, which keeps the map and its inverse well conditioned in float32.

    >>> spline = RationalQuadraticSpline(bins=5, bound=3.0)
    >>> h = torch.randn(4, spline.params * 2)          # the conditioner's output for 2 coordinates
    >>> x = torch.tensor([[-2.9, 0.0], [1.0, 2.5], [-4.0, 9.0], [0.3, -0.3]])   # row 3: the tails
    >>> y, logdet = spline(x, h)
    >>> x_back, logdet_back = spline.inverse(y, h)
    >>> torch.allclose(x_back, x, atol=1e-4), torch.allclose(logdet_back, -logdet, atol=1e-4)
    (True, True)
    >>> torch.equal(y[2], x[2])                          # identity outside [-bound, bound]
    True
    """

    def __init__(self, bins: int = 8, bound: float = 3.0, min_width: float = 1e-3,
                 min_height: float = 1e-3, min_derivative: float = 1e-3) -> None:
        super().__init__()
        who = "RationalQuadraticSpline"
        self.bins = integer(bins, "bins", who, minimum=1)
        self.bound = number(bound, "bound", who, minimum=0.0, strict=True)
        self.min_width = number(min_width, "min_width", who, minimum=0.0, maximum=1.0 / self.bins)
        self.min_height = number(min_height, "min_height", who, minimum=0.0, maximum=1.0 / self.bins)
        self.min_derivative = number(min_derivative, "min_derivative", who, minimum=0.0, maximum=1.0)
        self.params = 3 * self.bins - 1  # an instance's count: it depends on K

    def knots(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x knots, y knots, derivatives), each of shape ``x.shape + (K + 1,)``."""
        parts = self.parts(x, h)
        k = self.bins
        widths = torch.stack(parts[:k], dim=-1)
        heights = torch.stack(parts[k:2 * k], dim=-1)
        inner = torch.stack(parts[2 * k:], dim=-1) if k > 1 else x.new_zeros((*x.shape, 0))
        return (self._edges(widths, self.min_width), self._edges(heights, self.min_height),
                self._derivatives(inner))

    def _edges(self, raw: Tensor, minimum: float) -> Tensor:
        fractions = minimum + (1 - minimum * self.bins) * torch.softmax(raw, dim=-1)
        edges = F.pad(torch.cumsum(fractions, dim=-1), (1, 0))
        edges = 2 * self.bound * edges - self.bound
        # The last edge is +B exactly (a cumulative sum in float32 can miss it by an ulp).
        return torch.cat([edges[..., :-1], edges.new_full((*edges.shape[:-1], 1), self.bound)], dim=-1)

    def _derivatives(self, raw: Tensor) -> Tensor:
        # softplus(0) = log 2: scaled so that raw = 0 gives the slope 1 (the identity).
        inner = self.min_derivative + (1 - self.min_derivative) * F.softplus(raw) / math.log(2.0)
        return F.pad(inner, (1, 1), value=1.0)  # d_0 = d_K = 1: continuous with the linear tails

    @staticmethod
    def _bin(values: Tensor, edges: Tensor) -> Tensor:
        """The index k of the bin [edges_k, edges_{k+1}] holding each value (values inside)."""
        return (values.unsqueeze(-1) >= edges[..., 1:-1]).sum(dim=-1, keepdim=True)

    def _piece(self, edges_x: Tensor, edges_y: Tensor, derivs: Tensor, k: Tensor) -> tuple[Tensor, ...]:
        x_k = edges_x.gather(-1, k).squeeze(-1)
        w_k = (edges_x.gather(-1, k + 1) - edges_x.gather(-1, k)).squeeze(-1)
        y_k = edges_y.gather(-1, k).squeeze(-1)
        h_k = (edges_y.gather(-1, k + 1) - edges_y.gather(-1, k)).squeeze(-1)
        d_k, d_k1 = derivs.gather(-1, k).squeeze(-1), derivs.gather(-1, k + 1).squeeze(-1)
        return x_k, w_k, y_k, h_k, d_k, d_k1

    @staticmethod
    def _log_derivative(xi: Tensor, s: Tensor, d_k: Tensor, d_k1: Tensor) -> Tensor:
        one_minus = 1 - xi
        denominator = s + (d_k1 + d_k - 2 * s) * xi * one_minus
        numerator = s.pow(2) * (d_k1 * xi.pow(2) + 2 * s * xi * one_minus + d_k * one_minus.pow(2))
        return torch.log(numerator) - 2 * torch.log(denominator)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        edges_x, edges_y, derivs = self.knots(x, h)
        inside = (x >= -self.bound) & (x <= self.bound)
        # The spline is evaluated at a clamped copy so that the tails produce no inf/NaN that
        # torch.where would still send gradients through.
        x_in = x.clamp(-self.bound, self.bound)
        x_k, w_k, y_k, h_k, d_k, d_k1 = self._piece(edges_x, edges_y, derivs, self._bin(x_in, edges_x))
        xi = ((x_in - x_k) / w_k).clamp(0.0, 1.0)
        s = h_k / w_k
        one_minus = 1 - xi
        y = y_k + h_k * (s * xi.pow(2) + d_k * xi * one_minus) / (s + (d_k1 + d_k - 2 * s) * xi * one_minus)
        log_derivative = self._log_derivative(xi, s, d_k, d_k1)
        return torch.where(inside, y, x), torch.where(inside, log_derivative, torch.zeros_like(x))

    def inverse(self, y: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        edges_x, edges_y, derivs = self.knots(y, h)
        inside = (y >= -self.bound) & (y <= self.bound)
        y_in = y.clamp(-self.bound, self.bound)
        x_k, w_k, y_k, h_k, d_k, d_k1 = self._piece(edges_x, edges_y, derivs, self._bin(y_in, edges_y))
        s = h_k / w_k
        dy = y_in - y_k
        bend = d_k1 + d_k - 2 * s
        a = h_k * (s - d_k) + dy * bend
        b = h_k * d_k - dy * bend
        c = -s * dy
        discriminant = (b.pow(2) - 4 * a * c).clamp_min(0.0)  # >= 0 in exact arithmetic
        xi = ((2 * c) / (-b - torch.sqrt(discriminant))).clamp(0.0, 1.0)
        x = xi * w_k + x_k
        log_derivative = -self._log_derivative(xi, s, d_k, d_k1)
        return torch.where(inside, x, y), torch.where(inside, log_derivative, torch.zeros_like(y))

    def extra_repr(self) -> str:
        return f"bins={self.bins}, bound={self.bound}"


def named_transformer(kind: str, bins: int, bound: float, clamp: float | None, who: str) -> Transformer:
    """The transformer a builder's ``transformer=`` keyword names: ``"affine"`` (Affine(clamp)) or
    ``"spline"`` (a rational-quadratic spline of ``bins`` bins on [-bound, bound]); ``who`` names the
    builder in the error for any other name.

    >>> type(named_transformer("spline", 8, 4.0, None, "nsf")).__name__
    'RationalQuadraticSpline'
    >>> named_transformer("affine", 8, 4.0, 2.0, "nsf").clamp
    2.0
    """
    if choice(kind, "transformer", ("affine", "spline"), who) == "affine":
        return Affine(clamp)
    return RationalQuadraticSpline(bins=bins, bound=bound)
