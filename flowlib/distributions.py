"""Base distributions p_Z for the latent side of a flow, with temperature sampling.

Sampling at temperature T draws z ~ N(mu, T^2 sigma^2): T = 1 is the model itself, T < 1
trades diversity for quality (Kingma & Dhariwal, 2018, section 5), T = 0 returns the mode.
Each base writes that rule once, in :meth:`latent`: the latent at temperature T of given
standard-normal noise eps. :meth:`sample` draws eps and calls it; a widget that keeps its eps
fixed while T moves (``flowlib.widgets.TemperatureGrid``) calls it directly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowlib._checks import event_shape as _event_shape
from flowlib._checks import integer
from flowlib.core import FlowInputError, check_temperature, sum_except_batch

__all__ = ["StandardNormal", "DiagonalGaussian"]

_LOG_2PI = math.log(2 * math.pi)


def _noise(eps: Tensor, shape: tuple[int, ...], who: str) -> None:
    if not isinstance(eps, Tensor) or tuple(eps.shape[1:]) != shape:
        got = tuple(eps.shape) if isinstance(eps, Tensor) else type(eps).__name__
        want = ", ".join(map(str, shape))
        raise FlowInputError(f"{who}: expected noise eps of shape (n, {want}), got {got}")


class StandardNormal(nn.Module):
    """p_Z(z) = N(z; 0, I): log p = -1/2 (||z||^2 + d log 2 pi).

    >>> base = StandardNormal(2)
    >>> base.latent(torch.ones(1, 2), temperature=0.5)
    tensor([[0.5000, 0.5000]])
    """

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.event_shape = _event_shape(event_shape, "StandardNormal")
        # A buffer so that .to(device) moves where samples are created.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        d = math.prod(self.event_shape)
        return -0.5 * (sum_except_batch(z * z) + d * _LOG_2PI)

    def latent(self, eps: Tensor, temperature: float = 1.0) -> Tensor:
        """z = T eps: the latent at temperature T of standard-normal noise eps, shape (n,) + event_shape."""
        _noise(eps, self.event_shape, "StandardNormal.latent")
        temperature = check_temperature(temperature, "StandardNormal.latent", eps.dtype)
        return temperature * eps

    def sample(self, n: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """n draws of z ~ N(0, T^2 I)."""
        who = "StandardNormal.sample"
        temperature = check_temperature(temperature, who, self._anchor.dtype)
        eps = torch.randn((integer(n, "n", who, minimum=0), *self.event_shape),
                          generator=generator, device=self._anchor.device, dtype=self._anchor.dtype)
        return self.latent(eps, temperature)


class DiagonalGaussian(nn.Module):
    """A learnable p_Z(z) = N(z; mu, diag(sigma^2)), sigma = exp(log_sigma).

    log p = -1/2 sum_i [((z_i - mu_i)/sigma_i)^2 + 2 log sigma_i + log 2 pi]

    >>> base = DiagonalGaussian(2)
    >>> with torch.no_grad():
    ...     _ = base.loc.fill_(1.0)
    >>> base.latent(torch.ones(1, 2), temperature=0.0)  # T = 0: the mode, mu
    tensor([[1., 1.]], grad_fn=<AddBackward0>)
    """

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        super().__init__()
        self.event_shape = _event_shape(event_shape, "DiagonalGaussian")
        self.loc = nn.Parameter(torch.zeros(self.event_shape))
        self.log_scale = nn.Parameter(torch.zeros(self.event_shape))

    def log_prob(self, z: Tensor) -> Tensor:
        u = (z - self.loc) * torch.exp(-self.log_scale)
        return -0.5 * sum_except_batch(u * u + 2 * self.log_scale + _LOG_2PI)

    def latent(self, eps: Tensor, temperature: float = 1.0) -> Tensor:
        """z = mu + T sigma eps: the latent at temperature T of standard-normal noise eps."""
        _noise(eps, self.event_shape, "DiagonalGaussian.latent")
        temperature = check_temperature(temperature, "DiagonalGaussian.latent", eps.dtype)
        return self.loc + temperature * torch.exp(self.log_scale) * eps

    def sample(self, n: int, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> Tensor:
        """n draws of z ~ N(mu, T^2 diag(sigma^2))."""
        who = "DiagonalGaussian.sample"
        temperature = check_temperature(temperature, who, self.loc.dtype)
        eps = torch.randn((integer(n, "n", who, minimum=0), *self.event_shape),
                          generator=generator, device=self.loc.device, dtype=self.loc.dtype)
        return self.latent(eps, temperature)

