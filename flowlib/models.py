"""Builders of ready-to-train flow models for d-dimensional vectors.

Each returns a :class:`flowlib.FlowModel` (flow + standard-normal base), so
``model.log_prob(x)`` trains by maximum likelihood and ``model.sample(n)`` draws:

- :func:`nice`: additive couplings with alternating masks and a final scaling
  (Dinh et al., 2015);
- :func:`realnvp`: affine couplings with alternating masks, ActNorm between them, and
  fixed random permutations or learned linear maps between couplings (Dinh et al., 2017;
  ActNorm and the learned linear map from Kingma & Dhariwal, 2018);
- :func:`maf`, :func:`iaf`: stacks of autoregressive layers on MADE conditioners, affine or
  spline transformers (Papamakarios et al., 2017; Kingma et al., 2016);
- :func:`nsf`: neural spline flows, rational-quadratic splines in couplings or in the
  autoregressive structure (Durkan et al., 2019);
- :func:`planar_flow`, :func:`radial_flow`: stacks of planar / radial layers (Rezende &
  Mohamed, 2015), composed in the generative direction so that
  ``model.sample_and_log_prob(n)`` needs no numerical inversion (reverse-KL training).

Given an image shape (C, H, W) instead of a dimension, :func:`nice`, :func:`realnvp` and
:func:`glow` build the image models of :mod:`flowlib.image_models` (multi-scale, convolutional
conditioners, dequantisation), so one name serves both halves of the course.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from flowlib._checks import choice, event_shape, integer, renamed
from flowlib.actnorm import ActNorm
from flowlib.autoregressive import MADE, InverseAutoregressive, MaskedAutoregressive
from flowlib.conditional import ContextPrior, conditioning
from flowlib.core import Compose, Flow, FlowInputError, FlowModel
from flowlib.coupling import AdditiveCoupling, AffineCoupling, Coupling, Scaling, half_mask
from flowlib.distributions import StandardNormal
from flowlib.linear import InvertibleLinearLU
from flowlib.nets import MLP
from flowlib.permutations import Permutation
from flowlib.planar import Planar, Radial
from flowlib.splines import RationalQuadraticSpline, named_transformer
from flowlib.transformers import Additive, Affine

__all__ = [
    "nice", "realnvp", "glow", "nice_vector", "realnvp_vector", "glow_vector", "planar_flow", "radial_flow",
    "maf", "iaf", "nsf",
]


def _is_image_shape(shape: object) -> bool:
    return isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 3


def _context(classes: int | None, context_shape: Sequence[int] | None, who: str) -> tuple[int, dict]:
    """(k, the FlowModel's context keywords) for a vector builder: k = 0 when unconditional."""
    encoder, raw, encoded = conditioning(classes, context_shape, who)
    if encoded is None:
        return 0, {}
    if len(encoded) != 1:
        raise FlowInputError(f"{who}: a flow on vectors takes vector contexts, context_shape=(k,); "
                             f"got {encoded}")
    return encoded[0], {"context_encoder": encoder, "context_shape": raw}


def _model(flows: list[Flow], d: int, k: int, context: dict) -> FlowModel:
    """The vector model; a conditional one ends with the learned prior N(mu(c), sigma(c)^2)."""
    if k:
        flows = [*flows, ContextPrior((d,), k)]
    return FlowModel(Compose(flows), StandardNormal(d), **context)


def _vector_dim(dim: int | Sequence[int], who: str) -> int:
    """The dimension d from ``d`` or ``(d,)``."""
    shape = event_shape(dim, who)
    if len(shape) != 1:
        raise FlowInputError(f"{who}: expected a dimension d or a shape (d,), got {tuple(shape)}")
    return shape[0]


#: ``coupling="split" | "mask"`` chose the coupling's form before the coupling chose it itself.
_OLD_COUPLING = {"coupling": None}


def nice_vector(dim: int | Sequence[int], couplings: int = 4, hidden: int = 128, layers: int = 3,
                activation: Callable[[], nn.Module] = nn.ReLU, **deprecated: object) -> FlowModel:
    """NICE: ``couplings`` additive couplings (odd / even coordinates in turn) + a diagonal scaling.

    Each conditioner is an MLP with ``layers`` hidden layers of width ``hidden`` from the d/2
    kept coordinates to the shifts of the d/2 others (the coupling slices, see
    :class:`~flowlib.coupling.Coupling`). The couplings preserve volume; the final
    :class:`~flowlib.coupling.Scaling` is the only layer that changes it (Dinh et al., 2015).
    (``coupling=`` is deprecated and ignored: the layer chooses how to separate.)

    >>> sum(p.numel() for p in nice_vector(2).parameters())
    133638
    """
    renamed(deprecated, _OLD_COUPLING, "nice")
    d = _vector_dim(dim, "nice")
    couplings = integer(couplings, "couplings", "nice")
    flows: list[Flow] = []
    for k in range(couplings):
        mask = half_mask(d, k % 2, kind="alternate")
        net = MLP(*Coupling.conditioner_sizes(mask, Additive), hidden=hidden, layers=layers,
                  activation=activation)
        flows.append(AdditiveCoupling(mask, net))
    flows.append(Scaling(d))
    return FlowModel(Compose(flows), StandardNormal(d))


def realnvp_vector(dim: int | Sequence[int], couplings: int = 12, hidden: int = 64, layers: int = 2,
                   actnorm: bool = True, clamp: float | None = 3.0, mixing: str = "permutation",
                   activation: Callable[[], nn.Module] = nn.ReLU, seed: int = 0,
                   classes: int | None = None, context_shape: Sequence[int] | None = None,
                   **deprecated: object) -> FlowModel:
    """RealNVP for vectors: ``couplings`` affine couplings with alternating masks.

    Layout: [ActNorm] -> { [mixing] -> AffineCoupling -> [ActNorm] } x couplings.

    - ActNorm (``actnorm=True``) standardises the data on the first training batch and
      keeps every coupling's input at unit scale, which makes training faster and steadier;
    - masks alternate between odd and even coordinates, so each coordinate is transformed
      in every other layer; the couplings slice (the conditioner reads the kept coordinates
      and returns the log-scales and shifts of the others, see :class:`~flowlib.coupling.Coupling`);
    - ``mixing`` before each coupling but the first: ``"none"`` (masks only),
      ``"permutation"`` (a fixed random permutation, as RealNVP; only when d > 2, since for
      d = 2 the alternating masks already are all there is), or ``"linear"`` (a learned
      invertible linear map, LU-parameterised, started at a random rotation: Glow's 1x1
      convolution for vectors, which lets couplings act along any direction);
    - ``clamp`` bounds each coupling's log-scale (:func:`~flowlib.transformers.soft_clamp`);
    - conditioners: MLPs with ``layers`` hidden layers of width ``hidden``, last layer
      zero, so the model starts as (ActNorm followed by) the identity;
    - ``seed`` fixes the random permutations / rotations (the networks' initial weights
      follow torch's global seed, as for any nn.Module);
    - ``coupling=`` is deprecated and ignored: the layer chooses how to separate;
    - ``classes`` K (labels 0..K-1) or ``context_shape`` (k,) make the model conditional,
      p(x | c): every conditioner also reads c, and a learned prior N(mu(c), sigma(c)^2) ends
      the flow (:mod:`flowlib.conditional`); ``log_prob(x, context)``, ``sample(n, context=c)``.

    The defaults (12 couplings of 2 x 64 ReLU MLPs, 53k parameters for d = 2) are the best
    configuration found by ``benchmarks/toy_kl.py``: with Adam at lr 5e-3 (warm-up, cosine
    decay), KL(data || model) of 0.033 / 0.005 / 0.074 nats on eight Gaussians / two moons /
    checkerboard after 120 s of one CPU core, measured with the masked couplings of earlier
    versions (55k parameters; the sliced ones train faster per step, benchmarks/HISTORY.md).

    >>> sum(p.numel() for p in realnvp_vector(2).parameters())
    53068
    """
    renamed(deprecated, _OLD_COUPLING, "realnvp")
    d = _vector_dim(dim, "realnvp")
    couplings = integer(couplings, "couplings", "realnvp")
    choice(mixing, "mixing", ("none", "permutation", "linear"), "realnvp")
    k_context, context = _context(classes, context_shape, "realnvp")
    g = torch.Generator().manual_seed(int(seed))
    flows: list[Flow] = [ActNorm(d)] if actnorm else []
    for k in range(couplings):
        if k > 0 and mixing == "permutation" and d > 2:
            flows.append(Permutation(torch.randperm(d, generator=g)))
        elif k > 0 and mixing == "linear":
            flows.append(InvertibleLinearLU(d, generator=g))
        mask = half_mask(d, k % 2, kind="alternate")
        net = MLP(*Coupling.conditioner_sizes(mask, Affine, k_context), hidden=hidden, layers=layers,
                  activation=activation)
        flows.append(AffineCoupling(mask, net, clamp=clamp, context_features=k_context))
        if actnorm:
            flows.append(ActNorm(d))
    return _model(flows, d, k_context, context)


def planar_flow(dim: int | Sequence[int], layers: int = 8, enforce_invertibility: bool = True) -> FlowModel:
    """``layers`` planar flows; train with ``model.sample_and_log_prob(n)`` (reverse KL).

    The layers are defined generatively, so sampling and its log-density are closed form;
    ``model.log_prob(x)`` of given data works too, through the numerical inverse.

    >>> model = planar_flow(2, layers=4)
    >>> x, log_px = model.sample_and_log_prob(5)
    >>> x.shape, log_px.shape
    (torch.Size([5, 2]), torch.Size([5]))
    """
    d = _vector_dim(dim, "planar_flow")
    layers = integer(layers, "layers", "planar_flow")
    flows = [Planar(d, enforce_invertibility=enforce_invertibility) for _ in range(layers)]
    return FlowModel(Compose(flows), StandardNormal(d))


def radial_flow(dim: int | Sequence[int], layers: int = 8) -> FlowModel:
    """``layers`` radial flows; closed form in both directions (see :class:`~flowlib.planar.Radial`).

    >>> model = radial_flow(2, layers=3)
    >>> model.log_prob(torch.zeros(4, 2)).shape
    torch.Size([4])
    """
    d = _vector_dim(dim, "radial_flow")
    layers = integer(layers, "layers", "radial_flow")
    return FlowModel(Compose([Radial(d) for _ in range(layers)]), StandardNormal(d))


def glow_vector(dim: int | Sequence[int], couplings: int = 12, hidden: int = 64, layers: int = 2,
                **kwargs: object) -> FlowModel:
    """A Glow-style flow for vectors: ActNorm -> learned invertible linear map (LU) -> affine
    coupling, repeated (Kingma & Dhariwal, 2018, with the 1x1 convolution acting on the whole
    vector). The same as ``realnvp_vector(..., mixing="linear")``.

    >>> model = glow_vector(2, couplings=2, hidden=8)
    >>> x = torch.randn(3, 2)
    >>> z, _ = model.flow(x)
    >>> torch.allclose(model.flow.inverse(z)[0], x, atol=1e-5)
    True
    """
    return realnvp_vector(dim, couplings=couplings, hidden=hidden, layers=layers, actnorm=True,
                          mixing="linear", **kwargs)  # type: ignore[arg-type]


def _dispatch(name: str, vector_builder, shape: int | Sequence[int], kwargs: dict) -> FlowModel:
    if _is_image_shape(shape):
        from flowlib import image_models  # the image half: multi-scale, conv conditioners

        return getattr(image_models, f"{name}_image")(tuple(shape), **kwargs)
    return vector_builder(shape, **kwargs)


def nice(shape: int | Sequence[int], **kwargs: object) -> FlowModel:
    """NICE for vectors (``shape`` = d, see :func:`nice_vector`) or images (``shape`` = (C, H, W),
    see :func:`flowlib.image_models.nice_image`).

    >>> nice(2, couplings=2, hidden=8).sample(3).shape
    torch.Size([3, 2])
    """
    return _dispatch("nice", nice_vector, shape, kwargs)


def realnvp(shape: int | Sequence[int], **kwargs: object) -> FlowModel:
    """RealNVP for vectors (``shape`` = d, see :func:`realnvp_vector`) or images (``shape`` =
    (C, H, W), see :func:`flowlib.image_models.realnvp_image`).

    >>> realnvp(2, couplings=2, hidden=8).log_prob(torch.randn(4, 2)).shape
    torch.Size([4])
    """
    return _dispatch("realnvp", realnvp_vector, shape, kwargs)


def glow(shape: int | Sequence[int], **kwargs: object) -> FlowModel:
    """Glow for vectors (``shape`` = d, see :func:`glow_vector`) or images (``shape`` = (C, H, W),
    see :func:`flowlib.image_models.glow_image`).

    >>> glow(2, couplings=2, hidden=8).sample(3, temperature=0.5).shape
    torch.Size([3, 2])
    """
    return _dispatch("glow", glow_vector, shape, kwargs)


def _autoregressive(layer_cls: type[MaskedAutoregressive], who: str, dim: int | Sequence[int], layers: int,
                    hidden: int, made_layers: int, transformer: str, bins: int, bound: float,
                    clamp: float | None, actnorm: bool, activation: Callable[[], nn.Module],
                    classes: int | None, context_shape: Sequence[int] | None) -> FlowModel:
    d = _vector_dim(dim, who)
    layers = integer(layers, "layers", who)
    k_context, context = _context(classes, context_shape, who)
    flows: list[Flow] = [ActNorm(d)] if actnorm else []
    for k in range(layers):
        # The order is reversed from one layer to the next (Papamakarios et al., 2017): the
        # coordinate that saw nothing in one layer sees everything in the next.
        order = torch.arange(d) if k % 2 == 0 else torch.arange(d - 1, -1, -1)
        tau = named_transformer(transformer, bins, bound, clamp, who)
        made = MADE(d, tau.params, hidden=hidden, layers=made_layers, order=order, activation=activation,
                    context_features=k_context)
        flows.append(layer_cls(made, tau))
        if actnorm and transformer == "affine":
            flows.append(ActNorm(d))
    return _model(flows, d, k_context, context)


def maf(dim: int | Sequence[int], layers: int = 5, hidden: int = 64, made_layers: int = 2,
        transformer: str = "affine", bins: int = 8, bound: float = 4.0, clamp: float | None = 3.0,
        actnorm: bool = True, activation: Callable[[], nn.Module] = nn.ReLU, classes: int | None = None,
        context_shape: Sequence[int] | None = None) -> FlowModel:
    """Masked autoregressive flow (Papamakarios et al., 2017): ``layers`` MAF layers on MADEs.

    Layout: [ActNorm] -> { MaskedAutoregressive(MADE, transformer) -> [ActNorm] } x layers, the
    order reversed in every other layer. ``transformer="affine"`` (MAF) or ``"spline"`` (a
    rational-quadratic spline with ``bins`` bins on [-bound, bound], Durkan et al.'s
    autoregressive NSF; no ActNorm between spline layers, which keeps their inputs inside the
    interval the first ActNorm standardised them to). ``log_prob`` is one pass per layer,
    ``sample`` d passes per layer. ``classes`` / ``context_shape``: a conditional MAF, the
    context read by every MADE (as in Papamakarios et al.'s conditional MADE) and by a learned
    prior at the end (see :func:`realnvp_vector`).

    >>> model = maf(3, layers=2, hidden=8)
    >>> model.log_prob(torch.randn(4, 3)).shape, model.sample(2).shape
    (torch.Size([4]), torch.Size([2, 3]))
    """
    return _autoregressive(MaskedAutoregressive, "maf", dim, layers, hidden, made_layers, transformer, bins,
                           bound, clamp, actnorm, activation, classes, context_shape)


def iaf(dim: int | Sequence[int], layers: int = 5, hidden: int = 64, made_layers: int = 2,
        transformer: str = "affine", bins: int = 8, bound: float = 4.0, clamp: float | None = 3.0,
        actnorm: bool = True, activation: Callable[[], nn.Module] = nn.ReLU, classes: int | None = None,
        context_shape: Sequence[int] | None = None) -> FlowModel:
    """Inverse autoregressive flow (Kingma et al., 2016): :func:`maf`'s layout with IAF layers.

    ``sample`` and ``sample_and_log_prob`` are one pass per layer (train it by reverse KL, or
    as a variational posterior); ``log_prob`` of given data takes d passes per layer.

    >>> model = iaf(2, layers=2, hidden=8).eval()   # eval: ActNorm keeps its (identity) start
    >>> x, log_px = model.sample_and_log_prob(4)    # one pass per layer
    >>> torch.allclose(model.log_prob(x), log_px, atol=1e-4)   # the slow direction agrees
    True
    """
    return _autoregressive(InverseAutoregressive, "iaf", dim, layers, hidden, made_layers, transformer, bins,
                           bound, clamp, actnorm, activation, classes, context_shape)


def nsf(dim: int | Sequence[int], structure: str = "coupling", layers: int = 6, hidden: int = 64,
        mlp_layers: int = 2, bins: int = 8, bound: float = 4.0, actnorm: bool = True,
        activation: Callable[[], nn.Module] = nn.ReLU, seed: int = 0, classes: int | None = None,
        context_shape: Sequence[int] | None = None) -> FlowModel:
    """Neural spline flow (Durkan et al., 2019): rational-quadratic splines with linear tails.

    ``structure="coupling"``: [ActNorm] -> { [permutation] -> Coupling(mask, MLP, spline) } x
    layers, masks alternating between even and odd coordinates, a fixed random permutation
    before each coupling but the first when d > 2 (RQ-NSF (C)). ``structure="autoregressive"``:
    :func:`maf` with spline transformers (RQ-NSF (AR)). ``bins`` K (3K - 1 numbers per
    coordinate), ``bound`` B: the spline acts on [-B, B] and is the identity outside.
    ``classes`` / ``context_shape``: a conditional NSF (see :func:`realnvp_vector`), e.g. a 2D toy
    conditioned on a scalar with ``context_shape=(1,)``.

    >>> sum(p.numel() for p in nsf(2, layers=2, hidden=8, mlp_layers=1).parameters()) > 0
    True
    """
    who = "nsf"
    if choice(structure, "structure", ("coupling", "autoregressive"), who) == "autoregressive":
        return _autoregressive(MaskedAutoregressive, who, dim, layers, hidden, mlp_layers, "spline", bins,
                               bound, None, actnorm, activation, classes, context_shape)
    d = _vector_dim(dim, who)
    if d < 2:
        raise FlowInputError("nsf: a coupling needs d >= 2 coordinates; use structure='autoregressive' "
                             "for d = 1")
    layers = integer(layers, "layers", who)
    k_context, context = _context(classes, context_shape, who)
    g = torch.Generator().manual_seed(int(seed))
    flows: list[Flow] = [ActNorm(d)] if actnorm else []
    for k in range(layers):
        if k > 0 and d > 2:
            flows.append(Permutation(torch.randperm(d, generator=g)))
        mask = half_mask(d, k % 2, kind="alternate")
        spline = RationalQuadraticSpline(bins=bins, bound=bound)
        net = MLP(*Coupling.conditioner_sizes(mask, spline, k_context), hidden=hidden, layers=mlp_layers,
                  activation=activation)
        flows.append(Coupling(mask, net, spline, context_features=k_context))
    return _model(flows, d, k_context, context)
