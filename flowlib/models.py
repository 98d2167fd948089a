"""Builders of ready-to-train flow models for d-dimensional vectors.

Each returns a :class:`flowlib.FlowModel` (flow + standard-normal base), so
``model.log_prob(x)`` trains by maximum likelihood and ``model.sample(n)`` draws:

- :func:`nice`: additive couplings with alternating masks and a final scaling
  (Dinh et al., 2015);
- :func:`realnvp`: affine couplings with alternating masks, ActNorm between them, and
  fixed random permutations or learned linear maps between couplings (Dinh et al., 2017;
  ActNorm and the learned linear map from Kingma & Dhariwal, 2018);
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
from flowlib.core import Compose, Flow, FlowInputError, FlowModel
from flowlib.coupling import AdditiveCoupling, AffineCoupling, Coupling, Scaling, half_mask
from flowlib.distributions import StandardNormal
from flowlib.linear import InvertibleLinearLU
from flowlib.nets import MLP
from flowlib.permutations import Permutation
from flowlib.planar import Planar, Radial
from flowlib.transformers import Additive, Affine

__all__ = [
    "nice", "realnvp", "glow", "nice_vector", "realnvp_vector", "glow_vector", "planar_flow", "radial_flow",
]


def _is_image_shape(shape: object) -> bool:
    return isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 3


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
    - ``coupling=`` is deprecated and ignored: the layer chooses how to separate.

    The defaults (12 couplings of 2 x 64 ReLU MLPs, 53k parameters for d = 2) are the best
    configuration found by ``benchmarks/toy_kl.py``: with Adam at lr 5e-3 (warm-up, cosine
    decay), KL(data || model) of 0.033 / 0.005 / 0.074 nats on eight Gaussians / two moons /
    checkerboard after 120 s of one CPU core, measured with the masked couplings of earlier
    versions (55k parameters; the sliced ones train faster per step, benchmarks/RESULTS.md).

    >>> sum(p.numel() for p in realnvp_vector(2).parameters())
    53068
    """
    renamed(deprecated, _OLD_COUPLING, "realnvp")
    d = _vector_dim(dim, "realnvp")
    couplings = integer(couplings, "couplings", "realnvp")
    choice(mixing, "mixing", ("none", "permutation", "linear"), "realnvp")
    g = torch.Generator().manual_seed(int(seed))
    flows: list[Flow] = [ActNorm(d)] if actnorm else []
    for k in range(couplings):
        if k > 0 and mixing == "permutation" and d > 2:
            flows.append(Permutation(torch.randperm(d, generator=g)))
        elif k > 0 and mixing == "linear":
            flows.append(InvertibleLinearLU(d, generator=g))
        mask = half_mask(d, k % 2, kind="alternate")
        net = MLP(*Coupling.conditioner_sizes(mask, Affine), hidden=hidden, layers=layers,
                  activation=activation)
        flows.append(AffineCoupling(mask, net, clamp=clamp))
        if actnorm:
            flows.append(ActNorm(d))
    return FlowModel(Compose(flows), StandardNormal(d))


def planar_flow(dim: int | Sequence[int], layers: int = 8, enforce_invertibility: bool = True) -> FlowModel:
    """``layers`` planar flows; train with ``model.sample_and_log_prob(n)`` (reverse KL).

    The layers are defined generatively, so sampling and its log-density are closed form;
    ``model.log_prob(x)`` of given data works too, through the numerical inverse.
    """
    d = _vector_dim(dim, "planar_flow")
    layers = integer(layers, "layers", "planar_flow")
    flows = [Planar(d, enforce_invertibility=enforce_invertibility) for _ in range(layers)]
    return FlowModel(Compose(flows), StandardNormal(d))


def radial_flow(dim: int | Sequence[int], layers: int = 8) -> FlowModel:
    """``layers`` radial flows; closed form in both directions (see :class:`~flowlib.planar.Radial`)."""
    d = _vector_dim(dim, "radial_flow")
    layers = integer(layers, "layers", "radial_flow")
    return FlowModel(Compose([Radial(d) for _ in range(layers)]), StandardNormal(d))


def glow_vector(dim: int | Sequence[int], couplings: int = 12, hidden: int = 64, layers: int = 2,
                **kwargs: object) -> FlowModel:
    """A Glow-style flow for vectors: ActNorm -> learned invertible linear map (LU) -> affine
    coupling, repeated (Kingma & Dhariwal, 2018, with the 1x1 convolution acting on the whole
    vector). The same as ``realnvp_vector(..., mixing="linear")``.
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
    see :func:`flowlib.image_models.nice_image`)."""
    return _dispatch("nice", nice_vector, shape, kwargs)


def realnvp(shape: int | Sequence[int], **kwargs: object) -> FlowModel:
    """RealNVP for vectors (``shape`` = d, see :func:`realnvp_vector`) or images (``shape`` =
    (C, H, W), see :func:`flowlib.image_models.realnvp_image`)."""
    return _dispatch("realnvp", realnvp_vector, shape, kwargs)


def glow(shape: int | Sequence[int], **kwargs: object) -> FlowModel:
    """Glow for vectors (``shape`` = d, see :func:`glow_vector`) or images (``shape`` = (C, H, W),
    see :func:`flowlib.image_models.glow_image`)."""
    return _dispatch("glow", glow_vector, shape, kwargs)
