"""Elementwise monotone maps: the flows of the 1D lecture.

Each acts on every coordinate separately, so its Jacobian is diagonal and
log|det dz/dx| = sum_i log|f'(x_i)|.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowlib.core import Flow, FlowInputError, sum_except_batch

__all__ = ["Affine", "SinhArcsinh"]


def _dim(dim: int, who: str) -> int:
    if int(dim) < 1:
        raise FlowInputError(f"{who}: dim must be >= 1, got {dim}")
    return int(dim)


class Affine(Flow):
    """z = exp(log_scale) * x + shift, per coordinate; log|dz/dx| = sum log_scale.

    The simplest flow: with a standard-normal base it is a Gaussian with mean
    -shift/scale and standard deviation 1/scale.
    """

    def __init__(self, dim: int = 1) -> None:
        dim = _dim(dim, "Affine")
        super().__init__((dim,))
        self.log_scale = nn.Parameter(torch.zeros(dim))
        self.shift = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        z = x * torch.exp(self.log_scale) + self.shift
        return z, self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        x = (z - self.shift) * torch.exp(-self.log_scale)
        return x, (-self.log_scale.sum()).expand(z.shape[0])

    @classmethod
    def example(cls, generator: torch.Generator | None = None) -> tuple[Flow, Tensor]:
        f = cls(3)
        with torch.no_grad():
            f.log_scale.copy_(0.5 * torch.randn(3, generator=generator))
            f.shift.copy_(torch.randn(3, generator=generator))
        return f, torch.randn(6, 3, generator=generator)


class SinhArcsinh(Flow):
    """The sinh-arcsinh map of Jones & Pappas (2009): skew and tail weight in one monotone map.

    z = sinh(delta * asinh(x) - epsilon),     delta = exp(log_delta) > 0
    dz/dx = delta * cosh(delta * asinh(x) - epsilon) / sqrt(1 + x^2)
    x = sinh((asinh(z) + epsilon) / delta)

    epsilon moves mass to one side (skew); delta < 1 gives heavier tails to p_X when the
    base is Gaussian, delta > 1 lighter ones.
    """

    def __init__(self, dim: int = 1) -> None:
        dim = _dim(dim, "SinhArcsinh")
        super().__init__((dim,))
        self.epsilon = nn.Parameter(torch.zeros(dim))
        self.log_delta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        delta = torch.exp(self.log_delta)
        a = delta * torch.asinh(x) - self.epsilon
        z = torch.sinh(a)
        # log cosh(a) = |a| + log1p(exp(-2|a|)) - log 2 stays finite for large |a|.
        log_cosh = a.abs() + torch.log1p(torch.exp(-2 * a.abs())) - 0.6931471805599453
        log_dzdx = self.log_delta + log_cosh - 0.5 * torch.log1p(x * x)
        return z, sum_except_batch(log_dzdx)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        x, logdet = self._inverse(z)
        return x, logdet

    def _inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        delta = torch.exp(self.log_delta)
        b = (torch.asinh(z) + self.epsilon) / delta
        x = torch.sinh(b)
        log_cosh = b.abs() + torch.log1p(torch.exp(-2 * b.abs())) - 0.6931471805599453
        log_dxdz = -self.log_delta + log_cosh - 0.5 * torch.log1p(z * z)
        return x, sum_except_batch(log_dxdz)

    @classmethod
    def example(cls, generator: torch.Generator | None = None) -> tuple[Flow, Tensor]:
        f = cls(2)
        with torch.no_grad():
            f.epsilon.copy_(0.5 * torch.randn(2, generator=generator))
            f.log_delta.copy_(0.3 * torch.randn(2, generator=generator))
        return f, torch.randn(5, 2, generator=generator)
