"""Flows for real-valued fields on a grid (maps, not images): Glow without dequantization.

An image holds grey levels, so an image model dequantizes them, scales them to [0, 1] and passes
them through a logit before its flow (:mod:`flowlib.image_models`). A field such as a weak-lensing
convergence map (:mod:`flowlib.data.lensing`) is real-valued already, with no bounds and no
grid of levels: its density is the flow's own,

    log p_X(x) = log p_Z(f(x)) + log |det df/dx|,

in nats, on the field's own units. The flow is Glow's multi-scale stack (Kingma & Dhariwal,
2018) as :func:`flowlib.image_models.glow_image` builds it. Its ActNorm layers start from the
first batch the model sees in training mode (give it a large one, under ``torch.no_grad()``),
which also brings maps of standard deviation 0.02 to unit scale. A conditional field model,
p(x | theta), reads a parameter vector as its context (``context_shape=(k,)``): every coupling
and split prior sees it, and the top latent gets a learned prior N(mu(theta), sigma(theta)^2), as
in lecture 7; that is a field-level likelihood for inference of the parameters (Dai & Seljak,
2022; Diaz Rivero & Dvorkin, 2020).

>>> import torch
>>> model = glow_field((1, 8, 8), depth=2, hidden=8, blocks=1)
>>> x = 0.02 * torch.randn(4, 1, 8, 8)
>>> model.log_prob(x).shape
torch.Size([4])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from flowlib.core import Compose, FlowInputError, FlowModel
from flowlib.dequantize import LogitPreprocess
from flowlib.distributions import StandardNormal
from flowlib.image_models import glow_image

__all__ = ["glow_field", "PRIOR_BOX", "theta_context"]

#: The prior box of the conditional lensing model: (low, high) of sigma_8 and of Omega_m, uniform.
PRIOR_BOX: dict[str, tuple[float, float]] = {"sigma_8": (0.6, 1.0), "omega_m": (0.2, 0.4)}


def theta_context(theta: Tensor) -> Tensor:
    """Rows (sigma_8, Omega_m) (n, 2) rescaled from :data:`PRIOR_BOX` to [-1, 1]: the context of p(x | theta).

    A network reads inputs of order one best, so the conditional model was trained on this
    rescaling; score and sample it with the same one.

    >>> theta_context(torch.tensor([[0.6, 0.4], [0.8, 0.3]])).round(decimals=6).tolist()
    [[-1.0, 1.0], [0.0, 0.0]]
    """
    if not isinstance(theta, Tensor) or theta.dim() != 2 or theta.shape[1] != 2:
        got = tuple(theta.shape) if isinstance(theta, Tensor) else type(theta).__name__
        raise FlowInputError(f"theta_context: expected rows (sigma_8, Omega_m) of shape (n, 2), got {got}")
    low = torch.tensor([PRIOR_BOX["sigma_8"][0], PRIOR_BOX["omega_m"][0]], dtype=theta.dtype)
    high = torch.tensor([PRIOR_BOX["sigma_8"][1], PRIOR_BOX["omega_m"][1]], dtype=theta.dtype)
    return 2 * (theta - low) / (high - low) - 1


def glow_field(shape: Sequence[int], scales: int = 2, depth: int = 4, hidden: int = 64, blocks: int = 2,
               lu: bool = True, clamp: float | None = 2.0, split_prior: bool = True,
               conditioner: str = "resnet", context_shape: Sequence[int] | None = None) -> FlowModel:
    """Glow on real-valued fields of ``shape`` (C, H, W): a :class:`~flowlib.core.FlowModel` in nats.

    The arguments are those of :func:`~flowlib.image_models.glow_image`, without the image ones
    (grey levels, dequantization, the logit's alpha); ``context_shape=(k,)`` makes it p(x | theta)
    for k parameters, ``log_prob(x, context=theta)`` and ``sample(n, context=theta)``.

    >>> model = glow_field((1, 8, 8), depth=1, hidden=8, blocks=1, context_shape=(2,))
    >>> theta = torch.zeros(3, 2)
    >>> model.sample(3, context=theta).shape, model.log_prob(torch.randn(3, 1, 8, 8), context=theta).shape
    (torch.Size([3, 1, 8, 8]), torch.Size([3]))
    """
    image = glow_image(shape, scales=scales, depth=depth, hidden=hidden, blocks=blocks, lu=lu, clamp=clamp,
                       split_prior=split_prior, conditioner=conditioner, context_shape=context_shape)
    logit, flow = image.flow.flows  # glow_image composes LogitPreprocess(alpha) with the flow
    if not isinstance(logit, LogitPreprocess):  # the one place that knows glow_image's layout
        raise FlowInputError("glow_field: glow_image no longer starts with its logit layer; "
                             "update glow_field")
    return FlowModel(Compose(flow), StandardNormal(tuple(image.event_shape)),
                     context_encoder=image.context_encoder, context_shape=image.context_shape)
