"""Conditional layers under test: every layer that reads a context, with contexts drawn for it.

The generic harness (tests/test_layers_autograd.py) calls ``layer(x)``; a conditional layer
needs ``layer(x, context)``. :class:`Conditioned` binds a bank of contexts to the layer: row i of
a batch gets context ``bank[i % len(bank)]``, a fixed function of the row's position, never of
x. So the harness's checks hold at fixed contexts (the Jacobian is taken with respect to x
only, as the density p(x | c) needs), a sample alone gets the context it gets in a batch, and
the batch-independence check still means what it says.

Each case here is a :class:`~layer_cases.LayerCase` whose ``cls`` is the conditional layer's
class; the conditional variants of Coupling, MADE layers, the split prior and the multi-scale
flow are the same classes as the unconditional cases of tests/layer_cases.py, so they live in a
list of their own, :data:`CONDITIONAL_CASES`.
"""

from __future__ import annotations

import torch
from layer_cases import LayerCase, perturb
from torch import Tensor

from flowlib.autoregressive import MADE, InverseAutoregressive, MaskedAutoregressive
from flowlib.conditional import ContextPrior, context_channels
from flowlib.convnets import ResNetConditioner
from flowlib.core import Compose, Flow
from flowlib.coupling import Coupling, channel_mask, checkerboard_mask, half_mask
from flowlib.linear import InvertibleLinearLU
from flowlib.multiscale import GaussianSplitPrior, MultiScale
from flowlib.nets import MLP
from flowlib.splines import RationalQuadraticSpline
from flowlib.tarflow import TransformerAutoregressive
from flowlib.transformers import Affine

__all__ = ["Conditioned", "CONDITIONAL_CASES"]


class Conditioned(Flow):
    """A conditional layer with a bank of contexts: ``forward(x) = layer(x, bank[rows % m])``."""

    def __init__(self, layer: Flow, bank: Tensor) -> None:
        super().__init__(layer.event_shape)
        assert layer.takes_context, f"{type(layer).__name__} does not read a context"
        self.layer = layer
        self.register_buffer("bank", bank)

    def context(self, n: int) -> Tensor:
        return self.bank[torch.arange(n, device=self.bank.device) % self.bank.shape[0]]

    def check_input(self, x: Tensor, direction: str = "forward") -> None:
        return None  # the layer checks its own input

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.layer(x, self.context(x.shape[0]))

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.layer.inverse(z, self.context(z.shape[0]))


CONDITIONAL_CASES: list[LayerCase] = []


def case(cls: type[Flow], **flags: object):
    """Decorator: add ``make`` to :data:`CONDITIONAL_CASES`, labelled ``Class[make's name]``."""
    def add(make):
        CONDITIONAL_CASES.append(LayerCase(cls, make, label=f"{cls.__name__}[{make.__name__}]", **flags))
        return make
    return add


def _vectors(g: torch.Generator | None, k: int = 3, m: int = 4) -> Tensor:
    """m context vectors of k features (one-hot rows and a continuous column mixed)."""
    gen = g if g is not None else torch.Generator().manual_seed(0)
    return torch.randn(m, k, generator=gen)


def _coupling_vector(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    mask = half_mask(4, 1, kind="alternate")
    spline = RationalQuadraticSpline(bins=4, bound=3.0)
    net = MLP(*Coupling.conditioner_sizes(mask, spline, 3), hidden=16, layers=1)
    layer = Coupling(mask, net, spline, context_features=3)
    if g is not None:
        # Weights of scale 0.2, not the default 0.3: at 0.3 the conditioner, reading the context and
        # inputs of scale up to 10, makes bins that contract some points by e^-11, and a float32
        # inverse there is off by 0.07 (the map's conditioning, not an error: float64 is exact). At
        # 0.2 the strongest contraction in 3000 random batches of scale 3 is e^-10 per sample, and
        # the inverse is within 8e-5.
        perturb(layer, g, scale=0.2)
    return Conditioned(layer, _vectors(g)), torch.randn(5, 4, generator=g)


@case(Coupling, identity=lambda: _coupling_vector(None), tails=1e2)
def coupling_vector_context(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _coupling_vector(g)


def _coupling_image(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    # A checkerboard (masked) coupling on (2, 4, 4) with an IMAGE context of 1 x 8 x 8 pixels,
    # brought to 4 x 4 by space to depth (4 channels).
    mask = checkerboard_mask(2, 4, 4, 0)
    k = context_channels((1, 8, 8), (2, 4, 4))
    net = ResNetConditioner(*Coupling.conditioner_sizes(mask, Affine, k), hidden=4, blocks=1)
    layer = Coupling(mask, net, Affine(clamp=2.0), context_features=k)
    if g is not None:
        perturb(layer, g)
    gen = g if g is not None else torch.Generator().manual_seed(0)
    return Conditioned(layer, torch.rand(3, 1, 8, 8, generator=gen)), torch.randn(4, 2, 4, 4, generator=g)


@case(Coupling, identity=lambda: _coupling_image(None))
def coupling_image_context(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _coupling_image(g)


def _made(g: torch.Generator | None, params: int, order: list[int]) -> MADE:
    made = MADE(len(order), params, hidden=12, layers=2, order=order, context_features=3)
    return made if g is None else perturb(made, g)


def _maf(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    tau = Affine(clamp=2.0)
    return Conditioned(MaskedAutoregressive(_made(g, tau.params, [2, 0, 1]), tau), _vectors(g)), \
        torch.randn(5, 3, generator=g)


@case(MaskedAutoregressive, identity=lambda: _maf(None), tails=1e2)
def maf_context(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _maf(g)


def _iaf(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    spline = RationalQuadraticSpline(bins=4, bound=3.0)
    return Conditioned(InverseAutoregressive(_made(g, spline.params, [0, 2, 1]), spline), _vectors(g)), \
        torch.randn(5, 3, generator=g)


@case(InverseAutoregressive, identity=lambda: _iaf(None), tails=1e2)
def iaf_context(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _iaf(g)


def _split_prior(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    layer = GaussianSplitPrior(4, context_features=3)
    if g is not None:
        perturb(layer, g)
    return Conditioned(layer, _vectors(g)), torch.randn(3, 4, 3, 3, generator=g)


@case(GaussianSplitPrior, identity=lambda: _split_prior(None))
def split_prior_context(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _split_prior(g)


def _context_prior(g: torch.Generator | None, shape: tuple[int, ...]) -> tuple[Flow, Tensor]:
    layer = ContextPrior(shape, 3)
    if g is not None:
        perturb(layer, g, scale=0.5)
    return Conditioned(layer, _vectors(g)), torch.randn(5, *shape, generator=g)


@case(ContextPrior, identity=lambda: _context_prior(None, (3,)), tails=1e3)
def context_prior_vector(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _context_prior(g, (3,))


@case(ContextPrior, identity=lambda: _context_prior(None, (2, 2, 2)))
def context_prior_image(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _context_prior(g, (2, 2, 2))


def _multiscale(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    # Two scales on (1, 4, 4) with a class context: a conditional coupling per scale, a
    # conditional split prior, the learned top prior (Glow's class-conditional model in small).
    gen = g if g is not None else torch.Generator().manual_seed(0)
    flows = []
    for c, h, w in MultiScale.scale_shapes((1, 4, 4), 2):
        mask = channel_mask(c, h, w, 0)
        net = ResNetConditioner(*Coupling.conditioner_sizes(mask, Affine, 3), hidden=4, blocks=1)
        coupling = Coupling(mask, net, Affine(2.0), context_features=3)
        flows.append([InvertibleLinearLU(c, generator=gen), coupling])
    flows[-1].append(ContextPrior(MultiScale.scale_shapes((1, 4, 4), 2)[-1], 3))
    layer = MultiScale((1, 4, 4), [Compose(f) for f in flows], split_prior=True, context_features=3)
    if g is not None:
        perturb(layer, g, scale=0.2)
    return Conditioned(layer, torch.eye(3)), torch.randn(3, 1, 4, 4, generator=g)


@case(MultiScale)
def multiscale_context(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _multiscale(g)


def _tarflow(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    layer = TransformerAutoregressive((1, 4, 4), patch=2, width=8, layers=1, heads=2, context_features=3)
    if g is not None:
        perturb(layer, g)
    return Conditioned(layer, _vectors(g)), torch.randn(3, 1, 4, 4, generator=g)


@case(TransformerAutoregressive, identity=lambda: _tarflow(None), tails=1e2)
def tarflow_context(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _tarflow(g)
