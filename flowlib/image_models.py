"""Image flow models: NICE, RealNVP and Glow for (C, H, W) images of discrete grey levels.

Every builder returns an :class:`~flowlib.image_flow.ImageFlowModel` (defined in
:mod:`flowlib.image_flow`, importable from here too): a :class:`flowlib.FlowModel` whose flow
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

from collections.abc import Sequence

from torch import Tensor, nn

from flowlib._checks import choice, event_shape, integer, renamed
from flowlib.actnorm import ActNorm
from flowlib.conditional import ContextPrior, conditioning, context_channels
from flowlib.convnets import GlowConditioner, ResNetConditioner
from flowlib.core import Compose, Flow, FlowInputError
from flowlib.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    Scaling,
    channel_mask,
    checkerboard_mask,
)
from flowlib.dequantize import Dequantization, LogitPreprocess
from flowlib.distributions import StandardNormal
from flowlib.image_flow import ImageFlowModel
from flowlib.linear import InvertibleLinear, InvertibleLinearLU
from flowlib.metrics import mean_bits_per_dim
from flowlib.multiscale import MultiScale
from flowlib.splines import named_transformer
from flowlib.transformers import Additive, Affine, Transformer

__all__ = [
    "ImageFlowModel", "nice_image", "realnvp_image", "glow_image", "count_parameters", "mean_bits_per_dim",
]


def count_parameters(model: nn.Module) -> int:
    """The number of trainable scalars of a model."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# -- builders ------------------------------------------------------------------------------
#: The builders' old keywords: ``levels`` (scales), ``steps`` (flow steps per scale), ``bins``
#: (grey levels), and ``coupling`` (the coupling now slices wherever its mask allows it).
_OLD_KEYWORDS = {"levels": "scales", "steps": "depth", "bins": "grey_levels", "coupling": None}


def _shape(shape: Sequence[int], who: str) -> tuple[int, int, int]:
    shape = event_shape(shape, who)
    if len(shape) != 3:
        raise FlowInputError(f"{who}: expected an image shape (channels, height, width), got {shape!r}")
    return shape  # type: ignore[return-value]


def _scale_shapes(shape: tuple[int, int, int], scales: int, who: str) -> list[tuple[int, int, int]]:
    try:
        return MultiScale.scale_shapes(shape, scales)
    except FlowInputError as err:
        raise FlowInputError(f"{who}: {err}") from err


def _coupling(mask: Tensor, conditioner: str, hidden: int, blocks: int, tau: Transformer,
              context_features: int = 0) -> Flow:
    """A coupling with ``mask`` and the transformer ``tau``, and a conditioner of the sizes they (and
    the context) need; an affine ``tau`` gives the :class:`~flowlib.coupling.AffineCoupling`."""
    c_in, c_out = Coupling.conditioner_sizes(mask, tau, context_features)
    net = GlowConditioner(c_in, c_out, hidden) if conditioner == "glow" else \
        ResNetConditioner(c_in, c_out, hidden, blocks)
    if type(tau) is Affine:
        return AffineCoupling(mask, net, clamp=tau.clamp, context_features=context_features)
    return Coupling(mask, net, tau, context_features=context_features)


def _context(classes: int | None, context_shape: Sequence[int] | None, shapes: list[tuple[int, int, int]],
             who: str) -> tuple[list[int], dict]:
    """Per scale, the context channels its layers read (all 0: unconditional); the model's keywords."""
    encoder, raw, encoded = conditioning(classes, context_shape, who)
    if encoded is None:
        return [0] * len(shapes), {}
    try:
        ks = [context_channels(encoded, s) for s in shapes]
    except FlowInputError as err:
        raise FlowInputError(f"{who}: {err}") from err
    return ks, {"context_encoder": encoder, "context_shape": raw}


def _multiscale(shape: tuple[int, int, int], per_scale: list[list[Flow]], split_prior: bool,
                ks: list[int]) -> Flow:
    """MultiScale; a conditional one gets context-reading split priors and, after the last scale's
    steps, the learned prior N(mu(c), sigma(c)^2) of the top latent (Glow's class-conditional prior)."""
    if ks[-1]:
        per_scale[-1].append(ContextPrior(MultiScale.scale_shapes(shape, len(per_scale))[-1], ks[-1]))
    return MultiScale(shape, per_scale, split_prior=split_prior,
                      context_features=ks[:-1] if split_prior else 0)


def _model(flow: Flow, shape: tuple[int, int, int], grey_levels: int, alpha: float,
           dequantization: str | Dequantization, context: dict | None = None) -> ImageFlowModel:
    return ImageFlowModel(Compose(LogitPreprocess(alpha), flow), StandardNormal(shape),
                          grey_levels=grey_levels, dequantization=dequantization, **(context or {}))


def nice_image(shape: Sequence[int], couplings: int = 4, hidden: int = 64, blocks: int = 2,
               grey_levels: int = 256, alpha: float = 0.05,
               dequantization: str | Dequantization = "uniform", **deprecated: object) -> ImageFlowModel:
    """NICE for images (Dinh et al., 2015): additive couplings + a diagonal scaling.

    ``couplings`` additive couplings with checkerboard masks of alternating parity (masked, see
    :class:`~flowlib.coupling.Coupling`), each with a :class:`~flowlib.convnets.ResNetConditioner`
    (``hidden`` channels, ``blocks`` residual blocks), then one learned scale per pixel (the
    only volume change). ``grey_levels`` is K, the number of grey levels of the data (256 for
    8-bit images, 17 for the 8x8 digits; old keyword ``bins=``).

    >>> sum(p.numel() for p in nice_image((1, 8, 8), hidden=16, grey_levels=17).parameters())
    38408
    """
    grey_levels = renamed(deprecated, _OLD_KEYWORDS, "nice_image").get("grey_levels", grey_levels)
    c, h, w = _shape(shape, "nice_image")
    integer(couplings, "couplings", "nice_image")
    layers: list[Flow] = []
    for k in range(couplings):
        mask = checkerboard_mask(c, h, w, k % 2)
        net = ResNetConditioner(*Coupling.conditioner_sizes(mask, Additive), hidden, blocks)
        layers.append(AdditiveCoupling(mask, net))
    layers.append(Scaling((c, h, w)))
    return _model(Compose(layers), (c, h, w), grey_levels, alpha, dequantization)


def realnvp_image(shape: Sequence[int], scales: int = 2, depth: int = 4, hidden: int = 64,
                  blocks: int = 2, grey_levels: int = 256, alpha: float = 0.05, clamp: float | None = 2.0,
                  actnorm: bool = True, split_prior: bool = False,
                  dequantization: str | Dequantization = "uniform", conditioner: str = "resnet",
                  classes: int | None = None, context_shape: Sequence[int] | None = None,
                  **deprecated: object) -> ImageFlowModel:
    """RealNVP for images (Dinh et al., 2017): multi-scale affine couplings.

    Each of the ``scales`` scales squeezes, then applies ``depth`` affine couplings: the first
    half with checkerboard masks (masked), the second half with channel masks (sliced: the
    conditioner reads C/2 channels and writes 2 x C/2), parities alternating (the paper's recipe
    of 3 + 3 per scale, applied after the squeeze so that every scale has the same structure),
    then factors out half of the channels. Height and width must be divisible by 2^scales.
    ``actnorm`` puts an ActNorm before each coupling, standing in for the paper's batch
    normalisation; ``split_prior=True`` adds Glow's learned prior for the split latents.
    Log-scales are soft-clamped to (-clamp, clamp) (see :func:`flowlib.transformers.soft_clamp`).
    ``conditioner``: ``"resnet"`` (:class:`~flowlib.convnets.ResNetConditioner`, ``blocks``
    residual blocks) or ``"glow"`` (:class:`~flowlib.convnets.GlowConditioner`).
    ``classes`` / ``context_shape``: a conditional model, as for :func:`glow_image`.

    Old keywords (deprecated): ``levels=`` for ``scales``, ``steps=`` for ``depth``, ``bins=``
    for ``grey_levels``; ``coupling=`` is ignored.

    >>> model = realnvp_image((1, 8, 8), scales=2, depth=4, hidden=16, blocks=1, grey_levels=17)
    >>> sum(p.numel() for p in model.parameters())
    53040
    """
    new = renamed(deprecated, _OLD_KEYWORDS, "realnvp_image")
    scales, depth = new.get("scales", scales), new.get("depth", depth)
    grey_levels = new.get("grey_levels", grey_levels)
    c, h, w = _shape(shape, "realnvp_image")
    integer(depth, "depth", "realnvp_image")
    choice(conditioner, "conditioner", ("resnet", "glow"), "realnvp_image")
    shapes = _scale_shapes((c, h, w), scales, "realnvp_image")
    ks, context = _context(classes, context_shape, shapes, "realnvp_image")
    per_scale = []
    for (cl, hl, wl), kl in zip(shapes, ks, strict=True):
        flows: list[Flow] = []
        for k in range(depth):
            mask_fn = checkerboard_mask if k < (depth + 1) // 2 else channel_mask
            if actnorm:
                flows.append(ActNorm(cl))
            mask = mask_fn(cl, hl, wl, k % 2)
            flows.append(_coupling(mask, conditioner, hidden, blocks, Affine(clamp), kl))
        per_scale.append(flows)
    flow = _multiscale((c, h, w), per_scale, split_prior, ks)
    return _model(flow, (c, h, w), grey_levels, alpha, dequantization, context)


def glow_image(shape: Sequence[int], scales: int = 2, depth: int = 4, hidden: int = 64,
               blocks: int = 2, lu: bool = True, grey_levels: int = 256, alpha: float = 0.05,
               clamp: float | None = 2.0, split_prior: bool = True,
               dequantization: str | Dequantization = "uniform", conditioner: str = "resnet",
               classes: int | None = None, context_shape: Sequence[int] | None = None,
               transformer: str = "affine", spline_bins: int = 8, **deprecated: object) -> ImageFlowModel:
    """Glow (Kingma & Dhariwal, 2018): multi-scale, K = ``depth`` flow steps per scale.

    One step: ActNorm -> invertible 1x1 convolution (LU-parameterised when ``lu``) -> affine
    coupling with a channel mask (parities alternating; sliced, as Glow's code does) and a
    conditioner whose last convolution is zero-initialised. Each of the ``scales`` scales
    squeezes first and (except the last) factors out half of the channels with a learned
    conditional prior N(mu(z1), sigma(z1)^2) (``split_prior``). Height and width must be
    divisible by 2^scales.

    The coupling's scale: Glow's code uses sigmoid(h + 2), which bounds the scale in (0, 1); we
    use exp(soft_clamp(h)) with the same zero start (scale 1) and a scale bounded in
    (e^-clamp, e^clamp), so a coupling can expand as well as contract and never overflows.
    ``conditioner``: ``"resnet"`` (:class:`~flowlib.convnets.ResNetConditioner` with ``blocks``
    residual blocks) or ``"glow"`` (the paper's three convolutions,
    :class:`~flowlib.convnets.GlowConditioner`, ``blocks`` unused), about three times faster
    per step at equal ``hidden``. ``transformer="spline"`` replaces the affine map of each coupling
    by a rational-quadratic spline of ``spline_bins`` bins on [-4, 4] (identity outside; Durkan et
    al., 2019, "Neural Spline Flows", who use it in this Glow architecture for images): the
    conditioner writes 3 ``spline_bins`` - 1 numbers per transformed entry instead of 2.

    Conditional Glow, p(x | c) (:mod:`flowlib.conditional`): ``classes`` K (labels 0..K-1, one-hot
    encoded: Glow's class-conditional model) or ``context_shape`` (a float vector (k,) or image
    (k, H, W)). Every coupling's conditioner and every split prior also read the context, and
    the top latent gets a learned prior N(mu(c), sigma(c)^2); ``log_prob(x, context)``,
    ``sample(n, temperature, context=c)``.

    Old keywords (deprecated): ``levels=`` for ``scales``, ``steps=`` for ``depth``, ``bins=``
    for ``grey_levels``; ``coupling=`` is ignored.

    >>> model = glow_image((1, 8, 8), scales=2, depth=4, hidden=32, blocks=1, grey_levels=17)
    >>> sum(p.numel() for p in model.parameters())
    169920
    """
    new = renamed(deprecated, _OLD_KEYWORDS, "glow_image")
    scales, depth = new.get("scales", scales), new.get("depth", depth)
    grey_levels = new.get("grey_levels", grey_levels)
    c, h, w = _shape(shape, "glow_image")
    integer(depth, "depth", "glow_image")
    choice(conditioner, "conditioner", ("resnet", "glow"), "glow_image")
    bins = integer(spline_bins, "spline_bins", "glow_image")
    linear = InvertibleLinearLU if lu else InvertibleLinear
    shapes = _scale_shapes((c, h, w), scales, "glow_image")
    ks, context = _context(classes, context_shape, shapes, "glow_image")
    per_scale = []
    for (cl, hl, wl), kl in zip(shapes, ks, strict=True):
        flows: list[Flow] = []
        for k in range(depth):
            mask = channel_mask(cl, hl, wl, k % 2)
            tau = named_transformer(transformer, bins, 4.0, clamp, "glow_image")
            flows += [ActNorm(cl), linear(cl), _coupling(mask, conditioner, hidden, blocks, tau, kl)]
        per_scale.append(flows)
    flow = _multiscale((c, h, w), per_scale, split_prior, ks)
    return _model(flow, (c, h, w), grey_levels, alpha, dequantization, context)
