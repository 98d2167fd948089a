"""Base distributions p_Z for the latent side of a flow, with temperature sampling.

Sampling at temperature T draws z ~ N(mu, T^2 sigma^2): T = 1 is the model itself, T < 1
trades diversity for quality (Kingma & Dhariwal, 2018, section 5), T = 0 returns the mode.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowlib.core import FlowInputError, sum_except_batch

__all__ = ["StandardNormal", "DiagonalGaussian"]

_LOG_2PI = math.log(2 * math.pi)


def _event_shape(event_shape: int | Sequence[int], who: str) -> tuple[int, ...]:
    shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
    if not shape or any(int(s) <= 0 for s in shape):
        raise FlowInputError(f"{who}: expected a non-empty event_shape of positive sizes, got {shape}")
    return tuple(int(s) for s in shape)


def _check_temperature(temperature: float, who: str) -> None:
    if not (temperature >= 0 and math.isfinite(temperature)):
        raise FlowInputError(f"{who}: temperature must be a finite number >= 0, got {temperature}")


class StandardNormal(nn.Module):
    """p_Z(z) = N(z; 0, I): log p = -1/2 (||z||^2 + d log 2 pi)."""

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.event_shape = _event_shape(event_shape, "StandardNormal")
        # A buffer so that .to(device) moves where samples are created.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        d = math.prod(self.event_shape)
        return -0.5 * (sum_except_batch(z * z) + d * _LOG_2PI)

    def sample(self, n: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        _check_temperature(temperature, "StandardNormal.sample")
        eps = torch.randn((n, *self.event_shape), generator=generator,
                          device=self._anchor.device, dtype=self._anchor.dtype)
        return temperature * eps


class DiagonalGaussian(nn.Module):
    """A learnable p_Z(z) = N(z; mu, diag(sigma^2)), sigma = exp(log_sigma).

    log p = -1/2 sum_i [((z_i - mu_i)/sigma_i)^2 + 2 log sigma_i + log 2 pi]
    """

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.event_shape = _event_shape(event_shape, "DiagonalGaussian")
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def log_prob(self, z: Tensor) -> Tensor:
        u = (z - self.loc) * torch.exp(-self.log_scale)
        return -0.5 * sum_except_batch(u * u + 2 * self.log_scale + _LOG_2PI)

    def sample(self, n: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        _check_temperature(temperature, "DiagonalGaussian.sample")
        eps = torch.randn((n, *self.event_shape), generator=generator,
                          device=self.loc.device, dtype=self.loc.dtype)
        return self.loc + temperature * torch.exp(self.log_scale) * eps
