"""The image flow model: a flow on [0, 1]^D images behind a dequantizer, scored on discrete images.

:class:`ImageFlowModel` is what every image builder of :mod:`flowlib.image_models` (and
:mod:`flowlib.tarflow`, :mod:`flowlib.field_models`) returns: a :class:`flowlib.FlowModel` whose
``log_prob`` takes images of grey levels 0..K-1, dequantizes them (uniform noise, or a learned
q(u|x), Ho et al., 2019) and returns a lower bound on log P(x), so that

    bits/dim = -log P(x) / (D ln 2)

reads as in the papers. Split from the builders so that each file stays short.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowlib._checks import choice, inputs_checked, integer, renamed
from flowlib._modules import placement, training
from flowlib.actnorm import check_initialising_batch
from flowlib.core import Compose, Flow, FlowInputError, FlowModel, apply
from flowlib.dequantize import (
    Dequantization,
    LogitPreprocess,
    UniformDequantization,
    VariationalDequantization,
    as_levels,
)
from flowlib.metrics import bits_per_dim

__all__ = ["ImageFlowModel"]


class ImageFlowModel(FlowModel):
    """A flow on [0, 1]^D images plus dequantization: the likelihood of discrete images.

        log P(x) >= E_{q(u|x)}[ log p_Y((x + u) / K) - D log K - log q(u|x) ]

    ``log_prob(x)`` takes discrete images (grey levels 0..K-1, as uint8 or as floats, see
    :func:`flowlib.dequantize.as_levels`), draws one dequantization sample and
    returns this bound per image; maximising it trains the flow (and a variational
    dequantizer, Ho et al., 2019) jointly. ``log_prob_continuous(y)`` is the flow's density on
    [0, 1]^D. ``FlowModel`` itself is unchanged: this subclass only adds the discrete door.
    """

    #: Image models are trained and compared in bits per dimension (see :meth:`loss`).
    loss_unit = "bits/dim"

    def __init__(self, flow: Flow, base: nn.Module, grey_levels: int = 256,
                 dequantization: str | Dequantization = "uniform", validate: bool = True,
                 context_encoder: nn.Module | None = None, context_shape: Sequence[int] | None = None,
                 **deprecated: object) -> None:
        super().__init__(flow, base, validate, context_encoder=context_encoder, context_shape=context_shape)
        grey_levels = renamed(deprecated, {"levels": "grey_levels"}, "ImageFlowModel").get("grey_levels",
                                                                                            grey_levels)
        shape = tuple(self.event_shape)
        if len(shape) != 3:
            raise FlowInputError(f"ImageFlowModel: expected a base with an image event_shape (C, H, W), "
                                 f"got {shape}")
        #: K, the number of grey levels of the data (256 for 8-bit images, 17 for the 8x8 digits).
        self.grey_levels = integer(grey_levels, "grey_levels", "ImageFlowModel", minimum=2)
        if isinstance(dequantization, Dequantization):
            if dequantization.grey_levels != self.grey_levels:
                raise FlowInputError(f"ImageFlowModel: the dequantizer has {dequantization.grey_levels} grey "
                                     f"levels, the model {self.grey_levels}")
            self.dequantizer = dequantization
        else:
            choice(dequantization, "dequantization", ("uniform", "variational"), "ImageFlowModel")
            self.dequantizer = (UniformDequantization(self.grey_levels) if dequantization == "uniform"
                                else VariationalDequantization(self.grey_levels, shape))

    @property
    def levels(self) -> int:
        """Deprecated spelling of :attr:`grey_levels`."""
        warnings.warn("ImageFlowModel.levels is deprecated, use .grey_levels", DeprecationWarning,
                      stacklevel=2)
        return self.grey_levels

    def _levels(self, x: Tensor, where: str) -> Tensor:
        """Validate discrete data at the model's door and return float levels on the model's dtype."""
        want = "(batch, " + ", ".join(str(s) for s in self.event_shape) + ")"
        if not isinstance(x, Tensor):
            raise FlowInputError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.event_shape):
            raise FlowInputError(f"{where}: expected images of shape {want}, got {tuple(x.shape)}")
        device, dtype = placement(self)
        if x.device.type != device.type:
            raise FlowInputError(f"{where}: the data is on {x.device} but the model is on {device}; "
                                 f"move one of them, e.g. x.to({str(device)!r})")
        levels = as_levels(x, self.grey_levels, where).to(dtype) if self.checks_inputs else x.to(dtype)
        if self.training:
            check_initialising_batch(self.flow, levels, where)
        return levels

    def _log_prob_levels(self, x_levels: Tensor, context: Tensor | None = None) -> Tensor:
        """The bound for checked levels and an encoded context (see :meth:`FlowModel._context`)."""
        y, log_correction = self.dequantizer(x_levels)
        with inputs_checked():  # y is in [0, 1] by construction: the logit's domain check is not needed
            z, logdet = apply(self.flow, y, context)
        return self.base.log_prob(z) + logdet + log_correction

    def log_prob(self, x: Tensor, context: object = None) -> Tensor:
        """A one-sample dequantization bound on log P(x) (or P(x | c)) of discrete images, nats, (batch,)."""
        who = f"{type(self).__name__}.log_prob"
        levels = self._levels(x, who)
        return self._log_prob_levels(levels, self._context(context, levels.shape[0], who))

    def log_prob_continuous(self, y: Tensor, context: object = None) -> Tensor:
        """log p_Y(y) of continuous images y in [0, 1]^D (no dequantization, no log K term).

        Also defined on the margin of the logit's domain around [0, 1], where the model's own
        samples lie (:class:`~flowlib.dequantize.LogitPreprocess`): their log-density is finite
        at every temperature. Values outside that domain have none: a FlowInputError names the
        range found (checked once here, with the shape, dtype, device and finiteness).
        """
        who = f"{type(self).__name__}.log_prob_continuous"
        if self.checks_inputs:
            self._check_data(y, who)
            first = self.flow.flows[0] if isinstance(self.flow, Compose) else self.flow
            if isinstance(first, LogitPreprocess):
                first.check_domain(y, who)
        c = self._context(context, y.shape[0], who)
        with inputs_checked():  # checked above (or not wanted): the layer need not read the values again
            z, logdet = apply(self.flow, y, c)
        return self.base.log_prob(z) + logdet

    def bits_per_dim(self, x: Tensor, samples: int = 1, context: object = None) -> Tensor:
        """-log2 P(x) / D per image, from ``samples`` dequantization draws.

        With several draws, P(x) is estimated by their mean (importance sampling, Ho et al.,
        2019): the bound tightens as ``samples`` grows. For uniform noise and one draw this is
        (-log p((x + u)/K) + D log K) / (D ln 2), see
        :func:`flowlib.dequantize.dequantized_bits_per_dim`.
        """
        who = f"{type(self).__name__}.bits_per_dim"
        samples = integer(samples, "samples", who)
        x_levels = self._levels(x, who)
        c = self._context(context, x_levels.shape[0], who)
        draws = torch.stack([self._log_prob_levels(x_levels, c) for _ in range(samples)])
        log_px = torch.logsumexp(draws, dim=0) - math.log(samples)
        return bits_per_dim(log_px, self.dim)

    def loss(self, x: Tensor, context: object = None) -> Tensor:
        """What training minimises, one value per image: bits/dim of one dequantization draw.

        The same optimum as nats per image, divided by D ln 2, so that the figure reads as in
        the papers (about 1 for MNIST, 8 for uniform noise) whatever the image size.
        """
        return self.bits_per_dim(x) if context is None else self.bits_per_dim(x, context=context)

    def initialize(self, x: Tensor, context: object = None) -> None:
        """Run one batch in training mode, so data-dependent layers (ActNorm) initialise on it.

        Without gradients; every module's train/eval flag is as it was afterwards.
        """
        who = f"{type(self).__name__}.initialize"
        with training(self):
            levels = self._levels(x, who)
            self._log_prob_levels(levels, self._context(context, levels.shape[0], who))

    def sample_levels(self, n: int, temperature: float = 1.0, context: object = None) -> Tensor:
        """Samples rounded to grey levels: floor(K y) clamped to 0..K-1, as int64, shape (n, C, H, W).

        A NaN has no grey level (``.long()`` would make it -9.2e18, outside the clamp): if the
        model produces one (broken weights), a FlowInputError says so instead.
        """
        who = f"{type(self).__name__}.sample_levels"
        n = integer(n, "n", who, minimum=0)
        y = self.sample(n, temperature=self._temperature(temperature, who), context=context)
        if bool(torch.isnan(y).any()):
            raise FlowInputError(
                f"{who}: the model produced {int(torch.isnan(y).sum())} NaN pixels in {n} samples at "
                f"temperature {temperature:g}, which have no grey level: its weights are broken (check "
                f"all(torch.isfinite(p).all() for p in model.parameters())) or the temperature too high")
        return torch.floor(y * self.grey_levels).clamp(0, self.grey_levels - 1).long()
