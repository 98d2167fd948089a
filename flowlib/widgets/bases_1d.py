"""The 1D base densities and monotone maps that :class:`~flowlib.widgets.ChangeOfVariables1D` offers.

* :data:`BASES_1D`: symmetric, light-tailed densities p_Z with the ranges the widget needs.
* :data:`MAPS_1D`: monotone layers x -> z of :mod:`flowlib.elementwise` (dimension 1) and how
  the widget's sliders set their parameters, each in the layer's own parameterisation (log
  scale, log delta, mixture weight / locations / log scales), so every slider position is a
  valid, invertible map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from flowlib.core import Flow
from flowlib.elementwise import Affine, MixtureLogisticCDF, SinhArcsinh

__all__ = ["Base1D", "BASES_1D", "Map1D", "MAPS_1D"]

_LOG_2PI = math.log(2 * math.pi)


@dataclass(frozen=True)
class Base1D:
    """A symmetric 1D base density p_Z for the widget, with the ranges it needs.

    ``tail``: |z| beyond which the mass is below 1e-9 (the integration range);
    ``bulk``: about the 0.999 quantile (the plotting range).
    """

    log_prob: Callable[[Tensor], Tensor]
    sample: Callable[[int, torch.Generator], Tensor]
    tail: float
    bulk: float


def _smooth_uniform_log_prob(z: Tensor, c: float = math.sqrt(3.0), s: float = 0.25) -> Tensor:
    # U(-c, c) blurred by N(0, s^2): (Phi((z + c)/s) - Phi((z - c)/s)) / 2c. Written with |z|
    # (the density is even) so that the difference of the two CDFs never cancels in the tail.
    a = z.abs()
    diff = torch.special.ndtr((c - a) / s) - torch.special.ndtr((-c - a) / s)
    return torch.log(diff) - math.log(2 * c)


def _bumps_log_prob(z: Tensor, m: float = 1.5, s: float = 0.5) -> Tensor:
    comps = torch.stack([-0.5 * ((z - m) / s) ** 2, -0.5 * ((z + m) / s) ** 2])
    return torch.logsumexp(comps, dim=0) - math.log(2 * s) - 0.5 * _LOG_2PI


def _bumps_sample(n: int, g: torch.Generator) -> Tensor:
    sign = torch.randint(0, 2, (n,), generator=g, dtype=torch.float64) * 2 - 1
    return 1.5 * sign + 0.5 * torch.randn(n, generator=g, dtype=torch.float64)


BASES_1D: dict[str, Base1D] = {
    "standard normal": Base1D(
        lambda z: -0.5 * z * z - 0.5 * _LOG_2PI,
        lambda n, g: torch.randn(n, generator=g, dtype=torch.float64),
        tail=6.2, bulk=3.1),
    "logistic": Base1D(
        lambda z: F.logsigmoid(z) + F.logsigmoid(-z),
        lambda n, g: torch.logit(torch.rand(n, generator=g, dtype=torch.float64).clamp(1e-12, 1 - 1e-12)),
        tail=22.0, bulk=6.9),
    "smooth uniform": Base1D(
        _smooth_uniform_log_prob,
        lambda n, g: (math.sqrt(3.0) * (2 * torch.rand(n, generator=g, dtype=torch.float64) - 1)
                      + 0.25 * torch.randn(n, generator=g, dtype=torch.float64)),
        tail=math.sqrt(3.0) + 6.2 * 0.25, bulk=math.sqrt(3.0) + 0.5),
    "two bumps": Base1D(_bumps_log_prob, _bumps_sample, tail=1.5 + 6.2 * 0.5, bulk=1.5 + 3.1 * 0.5),
}
"""The base densities offered by :class:`ChangeOfVariables1D` (all even, all light-tailed)."""


@dataclass(frozen=True)
class Map1D:
    """A monotone map of :mod:`flowlib.elementwise` and how the widget's sliders set it."""

    make: Callable[[], Flow]
    #: slider name -> (label, default, min, max, step)
    params: dict[str, tuple[str, float, float, float, float]]
    apply: Callable[[Flow, dict[str, float]], None]


def _set_affine(f: Flow, p: dict[str, float]) -> None:
    f.log_scale.fill_(p["affine_log_scale"])
    f.shift.fill_(p["affine_shift"])


def _set_sinh_arcsinh(f: Flow, p: dict[str, float]) -> None:
    f.epsilon.fill_(p["sas_epsilon"])
    f.log_delta.fill_(p["sas_log_delta"])


def _set_mixture(f: Flow, p: dict[str, float]) -> None:
    w = p["mix_weight"]
    f.logits.copy_(torch.tensor([[math.log(w), math.log1p(-w)]]))
    f.loc.copy_(torch.tensor([[p["mix_loc1"], p["mix_loc2"]]]))
    f.log_scale.copy_(torch.tensor([[p["mix_log_scale1"], p["mix_log_scale2"]]]))


MAPS_1D: dict[str, Map1D] = {
    "affine": Map1D(
        lambda: Affine(1),
        {"affine_log_scale": ("log scale", 0.4, -1.5, 1.5, 0.05),
         "affine_shift": ("shift", 0.5, -3.0, 3.0, 0.05)},
        _set_affine),
    "sinh-arcsinh": Map1D(
        lambda: SinhArcsinh(1),
        {"sas_epsilon": ("skew epsilon", 0.5, -1.5, 1.5, 0.05),
         "sas_log_delta": ("log tail delta", -0.3, -0.7, 0.7, 0.05)},
        _set_sinh_arcsinh),
    "logistic-mixture CDF": Map1D(
        lambda: MixtureLogisticCDF(1, components=2),
        {"mix_weight": ("weight pi_1", 0.5, 0.05, 0.95, 0.01),
         "mix_loc1": ("mu_1", -1.5, -3.0, 3.0, 0.05),
         "mix_loc2": ("mu_2", 1.5, -3.0, 3.0, 0.05),
         "mix_log_scale1": ("log s_1", -0.5, -2.0, 1.0, 0.05),
         "mix_log_scale2": ("log s_2", -0.5, -2.0, 1.0, 0.05)},
        _set_mixture),
}
"""The monotone maps x -> z offered by :class:`ChangeOfVariables1D` (flowlib layers, dim 1)."""

