"""Image flow models: NICE, RealNVP and Glow for (C, H, W) images of discrete grey levels.

Every builder returns an :class:`ImageFlowModel`: a :class:`flowlib.FlowModel` whose flow
starts with :class:`~flowlib.dequantize.LogitPreprocess` and whose ``log_prob`` takes the
*discrete* images (grey levels 0..K-1, as :mod:`flowlib.data` returns them, or cast to
float), dequantizes them and returns a lower bound on log P(x) of the discrete data, so that

    bits/dim = -log P(x) / (D ln 2)

is directly comparable with published figures. ``sample(n, temperature=T)`` returns
continuous images y (T = 0: the mode, deterministic), in [0, 1] up to the logit's margin
(inverting it gives values in (-alpha, 1 + alpha) / (1 - 2 alpha): clamp them for display);
``sample_levels`` rounds them to grey levels.

- :func:`nice_image`: additive couplings with checkerboard masks and a final diagonal
  scaling (Dinh et al., 2015), at full resolution.
- :func:`realnvp_image`: the multi-scale architecture with affine couplings, checkerboard then
  channel masks at each level, split latents to N(0, I) (Dinh et al., 2017).
- :func:`glow_image`: the multi-scale architecture with Glow steps ActNorm -> invertible 1x1
  convolution (LU) -> affine coupling, and learned conditional priors for the split
  latents (Kingma & Dhariwal, 2018).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowlib.actnorm import ActNorm
from flowlib.convnets import GlowConditioner, ResNetConditioner
from flowlib.core import Compose, Flow, FlowInputError, FlowModel
from flowlib.coupling import AdditiveCoupling, AffineCoupling, Scaling, channel_mask, checkerboard_mask
from flowlib.dequantize import (
    Dequantization,
    LogitPreprocess,
    UniformDequantization,
    VariationalDequantization,
    as_levels,
)
from flowlib.distributions import StandardNormal
from flowlib.linear import InvertibleLinear, InvertibleLinearLU
from flowlib.multiscale import MultiScale
from flowlib.split_coupling import AffineSplitCoupling, can_split, split_sizes

__all__ = [
    "ImageFlowModel", "nice_image", "realnvp_image", "glow_image", "count_parameters", "mean_bits_per_dim",
]


@torch.no_grad()
def mean_bits_per_dim(model: nn.Module, x: Tensor, samples: int = 1, batch: int = 256) -> float:
    """Mean of ``model.bits_per_dim`` over the images ``x``, in batches, in evaluation mode.

    ``samples`` > 1 importance-weights over that many dequantization draws per image (see
    :meth:`ImageFlowModel.bits_per_dim`). The model's train/eval mode is restored afterwards.
    """
    was_training = model.training
    model.eval()
    try:
        total = sum(float(model.bits_per_dim(x[i:i + batch], samples=samples).double().sum())
                    for i in range(0, x.shape[0], batch))
    finally:
        model.train(was_training)
    return total / x.shape[0]


def count_parameters(model: nn.Module) -> int:
    """The number of trainable scalars of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


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

    def __init__(self, flow: Flow, base: nn.Module, levels: int = 256,
                 dequantization: str | Dequantization = "uniform", validate: bool = True) -> None:
        super().__init__(flow, base, validate)
        shape = tuple(self.event_shape)
        if len(shape) != 3:
            raise FlowInputError(f"ImageFlowModel: expected a base with an image event_shape (C, H, W), "
                                 f"got {shape}")
        if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
            raise FlowInputError(f"ImageFlowModel: levels must be an integer >= 2, got {levels!r}")
        self.levels = levels
        if isinstance(dequantization, Dequantization):
            if dequantization.levels != levels:
                raise FlowInputError(f"ImageFlowModel: the dequantizer has {dequantization.levels} levels, "
                                     f"the model {levels}")
            self.dequantizer = dequantization
        elif dequantization == "uniform":
            self.dequantizer = UniformDequantization(levels)
        elif dequantization == "variational":
            self.dequantizer = VariationalDequantization(levels, shape)
        else:
            raise FlowInputError(f"ImageFlowModel: dequantization must be 'uniform', 'variational' or a "
                                 f"Dequantization module, got {dequantization!r}")

    def _levels(self, x: Tensor, where: str) -> Tensor:
        """Validate discrete data at the model's door and return float levels on the model's dtype."""
        want = "(batch, " + ", ".join(str(s) for s in self.event_shape) + ")"
        if not isinstance(x, Tensor):
            raise FlowInputError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or tuple(x.shape[1:]) != tuple(self.event_shape):
            raise FlowInputError(f"{where}: expected images of shape {want}, got {tuple(x.shape)}")
        device = self.device
        if x.device.type != device.type:
            raise FlowInputError(f"{where}: the data is on {x.device} but the model is on {device}; "
                                 f"move one of them, e.g. x.to({str(device)!r})")
        dtype = next((p.dtype for p in self.parameters()), torch.get_default_dtype())
        if self.validate:
            return as_levels(x, self.levels, where).to(dtype)
        return x.to(dtype)

    def _log_prob_levels(self, x_levels: Tensor) -> Tensor:
        y, log_correction = self.dequantizer(x_levels)
        z, logdet = self.flow(y)
        return self.base.log_prob(z) + logdet + log_correction

    def log_prob(self, x: Tensor) -> Tensor:
        """A one-sample dequantization bound on log P(x) of discrete images x, in nats, shape (batch,)."""
        return self._log_prob_levels(self._levels(x, f"{type(self).__name__}.log_prob"))

    def log_prob_continuous(self, y: Tensor) -> Tensor:
        """log p_Y(y) of continuous images y in [0, 1]^D (no dequantization, no log K term)."""
        return FlowModel.log_prob(self, y)

    def bits_per_dim(self, x: Tensor, samples: int = 1) -> Tensor:
        """-log2 P(x) / D per image, from ``samples`` dequantization draws.

        With several draws, P(x) is estimated by their mean (importance sampling, Ho et al.,
        2019): the bound tightens as ``samples`` grows. For uniform noise and one draw this is
        (-log p((x + u)/K) + D log K) / (D ln 2), see
        :func:`flowlib.dequantize.dequantized_bits_per_dim`.
        """
        if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
            raise FlowInputError(f"{type(self).__name__}.bits_per_dim: samples must be an integer >= 1, "
                                 f"got {samples!r}")
        x_levels = self._levels(x, f"{type(self).__name__}.bits_per_dim")
        draws = torch.stack([self._log_prob_levels(x_levels) for _ in range(samples)])
        log_px = torch.logsumexp(draws, dim=0) - math.log(samples)
        return -log_px / (self.dim * math.log(2))

    def loss(self, x: Tensor) -> Tensor:
        """What training minimises, one value per image: bits/dim of one dequantization draw.

        The same optimum as nats per image, divided by D ln 2, so that the figure reads as in
        the papers (about 1 for MNIST, 8 for uniform noise) whatever the image size.
        """
        return self.bits_per_dim(x)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Run one batch in training mode, so data-dependent layers (ActNorm) initialise on it."""
        was_training = self.training
        self.train()
        self.log_prob(x)
        self.train(was_training)

    def sample_levels(self, n: int, temperature: float = 1.0) -> Tensor:
        """Samples rounded to grey levels: floor(K y) clamped to 0..K-1, as int64, shape (n, C, H, W)."""
        y = self.sample(n, temperature=temperature)
        return torch.floor(y * self.levels).clamp(0, self.levels - 1).long()


# -- builders ------------------------------------------------------------------------------
def _shape(shape: Sequence[int], who: str) -> tuple[int, int, int]:
    shape = tuple(shape) if isinstance(shape, (tuple, list, torch.Size)) else shape
    if (not isinstance(shape, tuple) or len(shape) != 3
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in shape)):
        raise FlowInputError(f"{who}: expected an image shape (channels, height, width), got {shape!r}")
    return shape  # type: ignore[return-value]


def _level_shapes(shape: tuple[int, int, int], levels: int, who: str) -> list[tuple[int, int, int]]:
    try:
        return MultiScale.level_shapes(shape, levels)
    except FlowInputError as err:
        raise FlowInputError(f"{who}: {err}") from err


def _count(value: int, what: str, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FlowInputError(f"{who}: {what} must be an integer >= 1, got {value!r}")
    return value


def _check_choice(value: str, name: str, choices: tuple[str, ...], who: str) -> str:
    if value not in choices:
        raise FlowInputError(f"{who}: {name} must be one of {choices}, got {value!r}")
    return value


def _conditioner(kind: str, c_in: int, c_out: int, hidden: int, blocks: int) -> nn.Module:
    if kind == "glow":
        return GlowConditioner(c_in, c_out, hidden)
    return ResNetConditioner(c_in, c_out, hidden, blocks)


def _affine_coupling(mask: Tensor, coupling: str, conditioner: str, hidden: int, blocks: int,
                     clamp: float | None) -> Flow:
    """An affine coupling with ``mask``: sliced when the mask allows it and ``coupling == "split"``."""
    c = mask.shape[0]
    if coupling == "split" and can_split(mask):
        kept, moved = split_sizes(mask)
        net = _conditioner(conditioner, kept, 2 * moved, hidden, blocks)
        return AffineSplitCoupling(mask, net, clamp=clamp)
    return AffineCoupling(mask, _conditioner(conditioner, c, 2 * c, hidden, blocks), clamp=clamp)


def _model(flow: Flow, shape: tuple[int, int, int], bins: int, alpha: float,
           dequantization: str | Dequantization) -> ImageFlowModel:
    return ImageFlowModel(Compose(LogitPreprocess(alpha), flow), StandardNormal(shape), levels=bins,
                          dequantization=dequantization)


def nice_image(shape: Sequence[int], couplings: int = 4, hidden: int = 64, blocks: int = 2,
               bins: int = 256, alpha: float = 0.05,
               dequantization: str | Dequantization = "uniform") -> ImageFlowModel:
    """NICE for images (Dinh et al., 2015): additive couplings + a diagonal scaling.

    ``couplings`` additive couplings with checkerboard masks of alternating parity, each with
    a :class:`~flowlib.convnets.ResNetConditioner` (``hidden`` channels, ``blocks`` residual
    blocks), then one learned scale per pixel (the only volume change). ``bins`` is K, the
    number of grey levels of the data (256 for 8-bit images, 17 for the 8x8 digits).
    """
    c, h, w = _shape(shape, "nice_image")
    _count(couplings, "couplings", "nice_image")
    layers: list[Flow] = [
        AdditiveCoupling(checkerboard_mask(c, h, w, k % 2), ResNetConditioner(c, c, hidden, blocks))
        for k in range(couplings)
    ]
    layers.append(Scaling((c, h, w)))
    return _model(Compose(layers), (c, h, w), bins, alpha, dequantization)


def realnvp_image(shape: Sequence[int], levels: int = 2, steps: int = 4, hidden: int = 64,
                  blocks: int = 2, bins: int = 256, alpha: float = 0.05, clamp: float | None = 2.0,
                  actnorm: bool = True, split_prior: bool = False,
                  dequantization: str | Dequantization = "uniform", coupling: str = "split",
                  conditioner: str = "resnet") -> ImageFlowModel:
    """RealNVP for images (Dinh et al., 2017): multi-scale affine couplings.

    Each of the ``levels`` levels squeezes, then applies ``steps`` affine couplings: the first
    half with checkerboard masks, the second half with channel masks, parities alternating (the
    paper's recipe of 3 + 3 per scale, applied after the squeeze so that every level has the
    same structure), then factors out half of the channels. Height and width must be divisible
    by 2^levels. ``actnorm`` puts an ActNorm before each coupling, standing in for the paper's
    batch normalisation; ``split_prior=True`` adds Glow's learned prior for the split latents.
    Log-scales are soft-clamped to (-clamp, clamp) (see :func:`flowlib.coupling.soft_clamp`).

    ``coupling="split"`` (default) slices the channel-mask couplings
    (:class:`~flowlib.split_coupling.AffineSplitCoupling`: the conditioner reads C/2 channels
    and writes 2 x C/2); ``"mask"`` uses :class:`~flowlib.coupling.AffineCoupling` throughout,
    the same family of maps at a higher cost. Checkerboard couplings are always masked.
    ``conditioner``: ``"resnet"`` (:class:`~flowlib.convnets.ResNetConditioner`, ``blocks``
    residual blocks) or ``"glow"`` (:class:`~flowlib.convnets.GlowConditioner`).
    """
    c, h, w = _shape(shape, "realnvp_image")
    _count(steps, "steps", "realnvp_image")
    _check_choice(coupling, "coupling", ("split", "mask"), "realnvp_image")
    _check_choice(conditioner, "conditioner", ("resnet", "glow"), "realnvp_image")
    level_steps = []
    for cl, hl, wl in _level_shapes((c, h, w), levels, "realnvp_image"):
        flows: list[Flow] = []
        for k in range(steps):
            mask_fn = checkerboard_mask if k < (steps + 1) // 2 else channel_mask
            if actnorm:
                flows.append(ActNorm(cl))
            flows.append(_affine_coupling(mask_fn(cl, hl, wl, k % 2), coupling, conditioner, hidden, blocks,
                                          clamp))
        level_steps.append(flows)
    flow = MultiScale((c, h, w), level_steps, split_prior=split_prior)
    return _model(flow, (c, h, w), bins, alpha, dequantization)


def glow_image(shape: Sequence[int], levels: int = 2, steps: int = 4, hidden: int = 64,
               blocks: int = 2, lu: bool = True, bins: int = 256, alpha: float = 0.05,
               clamp: float | None = 2.0, split_prior: bool = True,
               dequantization: str | Dequantization = "uniform", coupling: str = "split",
               conditioner: str = "resnet") -> ImageFlowModel:
    """Glow (Kingma & Dhariwal, 2018): multi-scale, K = ``steps`` steps of flow per level.

    One step: ActNorm -> invertible 1x1 convolution (LU-parameterised when ``lu``) -> affine
    coupling with a channel mask (parities alternating) and a ResNet conditioner whose last
    convolution is zero-initialised. Each level squeezes first and (except the last) factors
    out half of the channels with a learned conditional prior N(mu(z1), sigma(z1)^2)
    (``split_prior``). Height and width must be divisible by 2^levels.

    The coupling's scale: Glow's code uses sigmoid(h + 2), which bounds the scale in (0, 1); we
    use exp(soft_clamp(h)) with the same zero start (scale 1) and a scale bounded in
    (e^-clamp, e^clamp), so a coupling can expand as well as contract and never overflows.

    ``coupling="split"`` (default) slices the channels
    (:class:`~flowlib.split_coupling.AffineSplitCoupling`, as Glow's code does); ``"mask"``
    multiplies by the mask (:class:`~flowlib.coupling.AffineCoupling`): the same family of maps,
    at a higher cost. ``conditioner``: ``"resnet"`` (:class:`~flowlib.convnets.ResNetConditioner`
    with ``blocks`` residual blocks) or ``"glow"`` (the paper's three convolutions,
    :class:`~flowlib.convnets.GlowConditioner`, ``blocks`` unused), about three times faster
    per step at equal ``hidden``.
    """
    c, h, w = _shape(shape, "glow_image")
    _count(steps, "steps", "glow_image")
    _check_choice(coupling, "coupling", ("split", "mask"), "glow_image")
    _check_choice(conditioner, "conditioner", ("resnet", "glow"), "glow_image")
    linear = InvertibleLinearLU if lu else InvertibleLinear
    level_steps = []
    for cl, hl, wl in _level_shapes((c, h, w), levels, "glow_image"):
        flows: list[Flow] = []
        for k in range(steps):
            flows += [
                ActNorm(cl),
                linear(cl),
                _affine_coupling(channel_mask(cl, hl, wl, k % 2), coupling, conditioner, hidden, blocks,
                                 clamp),
            ]
        level_steps.append(flows)
    flow = MultiScale((c, h, w), level_steps, split_prior=split_prior)
    return _model(flow, (c, h, w), bins, alpha, dequantization)
