"""The layers under test, written out by hand: one :class:`LayerCase` per layer class.

The library keeps no list of its layers (subclassing :class:`flowlib.Flow` registers nothing);
the test-suite owns this one. Each case gives

- ``make(generator)``: a small instance with a random, NON-identity initialisation drawn from
  the seeded ``generator``, and a matching batch (an identity map would prove nothing);
- ``identity()`` (optional): the layer as its constructor leaves it when that is the identity
  (zero weights, zero-initialised conditioner), with a batch: z == x and logdet == 0;
- the flags the harness needs: ``changes_shape`` (the latent's shape differs from the input's),
  ``inputs`` (how the property test draws its batches: ``"normal"``, ``"unit"`` for maps of
  [0, 1], ``"like_example"`` to resample the example's own rows), ``tails`` (a scale far out in
  the tails where the round trip and the logdet must still hold), ``tol`` (the round trip's
  absolute tolerance).

``tests/test_layers_autograd.py`` checks every case against autograd and also checks that this
list covers every public :class:`~flowlib.Flow` subclass defined in flowlib: a new layer without
a case here fails the suite. Other tests take their examples from :func:`example`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from flowlib.actnorm import ActNorm
from flowlib.core import Compose, Flow, Inverse
from flowlib.dequantize import LogitPreprocess
from flowlib.elementwise import Affine, MixtureLogisticCDF, SinhArcsinh
from flowlib.linear import InvertibleLinear, InvertibleLinearLU
from flowlib.multiscale import GaussianSplitPrior, MultiScale, Squeeze
from flowlib.permutations import Permutation, RandomPermutation, ReversePermutation
from flowlib.planar import Planar, Radial
from flowlib.reversible import MemorySavingCompose

Factory = Callable[[torch.Generator], tuple[Flow, Tensor]]


@dataclass(frozen=True)
class LayerCase:
    """One layer class under test, its example factory and what the harness must know of it."""

    cls: type[Flow]
    make: Factory
    identity: Callable[[], tuple[Flow, Tensor]] | None = None
    changes_shape: bool = False
    inputs: str = "normal"
    tails: float | None = None
    tol: float = 1e-5
    label: str = ""  #: the test id when a class has several cases (the conditional ones)

    @property
    def name(self) -> str:
        return self.label or self.cls.__name__


CASES: list[LayerCase] = []

#: Public Flow subclasses of flowlib that are bases for others, not layers of their own.
BASES: set[type[Flow]] = {Flow}


def case(cls: type[Flow], **flags: object) -> Callable[[Factory], Factory]:
    """Decorator: add ``make`` to :data:`CASES` as the example factory of ``cls``."""

    def add(make: Factory) -> Factory:
        CASES.append(LayerCase(cls, make, **flags))
        return make

    return add


def example(cls: type[Flow], generator: torch.Generator | None = None) -> tuple[Flow, Tensor]:
    """The example of ``cls`` (its first case), from ``generator`` (seed 1234 if None)."""
    g = torch.Generator().manual_seed(1234) if generator is None else generator
    for c in CASES:
        if c.cls is cls:
            return c.make(g)
    raise KeyError(f"tests/layer_cases.py has no case for {cls.__name__}")


def perturb(module: nn.Module, generator: torch.Generator, scale: float = 0.3) -> nn.Module:
    """Overwrite every parameter of ``module`` with ``scale`` * N(0, 1) (leave zero init)."""
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(scale * torch.randn(p.shape, generator=generator))
    return module


def randn(generator: torch.Generator, *shape: int) -> Tensor:
    """N(0, 1) of ``shape`` (a scalar when no size is given) drawn from ``generator``."""
    return torch.randn(shape, generator=generator)


# -- elementwise maps ------------------------------------------------------------------------

@case(Affine, identity=lambda: (Affine(3), torch.randn(4, 3)), tails=1e3)
def affine(g: torch.Generator) -> tuple[Flow, Tensor]:
    f = Affine(3)
    with torch.no_grad():
        f.log_scale.copy_(0.5 * randn(g, 3))
        f.shift.copy_(randn(g, 3))
    return f, randn(g, 6, 3)


@case(SinhArcsinh, identity=lambda: (SinhArcsinh(2), torch.randn(4, 2)), tails=1e3)
def sinh_arcsinh(g: torch.Generator) -> tuple[Flow, Tensor]:
    f = SinhArcsinh(2)
    with torch.no_grad():
        f.epsilon.copy_(0.5 * randn(g, 2))
        f.log_delta.copy_(0.3 * randn(g, 2))
    return f, randn(g, 5, 2)


@case(MixtureLogisticCDF, tails=30.0, tol=1e-4)
def mixture_logistic_cdf(g: torch.Generator) -> tuple[Flow, Tensor]:
    f = MixtureLogisticCDF(2, components=3)
    with torch.no_grad():
        f.logits.copy_(0.5 * randn(g, 2, 3))
        f.loc.add_(0.5 * randn(g, 2, 3))
        f.log_scale.copy_(0.3 * randn(g, 2, 3) - 0.2)
    return f, randn(g, 5, 2)


@case(LogitPreprocess, inputs="unit")
def logit_preprocess(g: torch.Generator) -> tuple[Flow, Tensor]:
    return LogitPreprocess(0.05), torch.rand(4, 1, 3, 3, generator=g) * 0.98 + 0.01


# -- planar and radial flows (generative direction) -----------------------------------------

def _planar_identity() -> tuple[Flow, Tensor]:
    # Raw mode with u = 0: x = z + 0 * tanh(.), the identity (the reparameterised u_hat is not 0).
    f = Planar(3, enforce_invertibility=False)
    with torch.no_grad():
        f.u.zero_()
    return f, torch.randn(4, 3)


@case(Planar, identity=_planar_identity, tails=1e3)
def planar(g: torch.Generator) -> tuple[Flow, Tensor]:
    f = Planar(3)
    with torch.no_grad():
        f.w.copy_(randn(g, 3))
        f.u.copy_(randn(g, 3))
        f.b.copy_(0.5 * randn(g))
    return f, randn(g, 5, 3)


def _radial_identity() -> tuple[Flow, Tensor]:
    # beta = -alpha + softplus(beta_raw) = 0 when beta_raw = alpha_raw.
    f = Radial(3)
    with torch.no_grad():
        f.beta_raw.copy_(f.alpha_raw)
    return f, torch.randn(4, 3)


@case(Radial, identity=_radial_identity, tails=1e3)
def radial(g: torch.Generator) -> tuple[Flow, Tensor]:
    f = Radial(3)
    with torch.no_grad():
        f.z0.copy_(0.5 * randn(g, 3))
        f.alpha_raw.copy_(0.3 * randn(g))
        f.beta_raw.copy_(0.5 + 0.3 * randn(g))
    return f, randn(g, 5, 3)


# -- permutations, normalisation, linear maps -----------------------------------------------

@case(Permutation, identity=lambda: (Permutation(torch.arange(4)), torch.randn(3, 4)))
def permutation(g: torch.Generator) -> tuple[Flow, Tensor]:
    return Permutation(torch.tensor([2, 0, 3, 1])), randn(g, 5, 4)


@case(ReversePermutation)
def reverse_permutation(g: torch.Generator) -> tuple[Flow, Tensor]:
    return ReversePermutation(5), randn(g, 4, 5)


@case(RandomPermutation)
def random_permutation(g: torch.Generator) -> tuple[Flow, Tensor]:
    return RandomPermutation(6, seed=3), randn(g, 4, 6)


@case(ActNorm, identity=lambda: (ActNorm(3).eval(), torch.randn(4, 3)))
def actnorm(g: torch.Generator) -> tuple[Flow, Tensor]:
    f = ActNorm(3)
    # Initialise on shifted, scaled data so that the map is far from the identity.
    f.train()
    f(2.0 + 3.0 * randn(g, 16, 3))
    return f, randn(g, 5, 3)


@case(InvertibleLinear)
def invertible_linear(g: torch.Generator) -> tuple[Flow, Tensor]:
    f = InvertibleLinear(4, generator=g)
    with torch.no_grad():
        # Leave the rotation group, so that the logdet is not zero and really tested.
        f.weight.add_(0.3 * randn(g, 4, 4))
    return f, randn(g, 3, 4, 3, 2)


@case(InvertibleLinearLU)
def invertible_linear_lu(g: torch.Generator) -> tuple[Flow, Tensor]:
    f = InvertibleLinearLU(4, generator=g)
    with torch.no_grad():
        f.lower.add_(0.3 * randn(g, 4, 4))
        f.upper.add_(0.3 * randn(g, 4, 4))
        f.log_s.add_(0.3 * randn(g, 4))
    return f, randn(g, 3, 4, 2, 3)


# -- multi-scale pieces ----------------------------------------------------------------------

@case(Squeeze, changes_shape=True)
def squeeze(g: torch.Generator) -> tuple[Flow, Tensor]:
    return Squeeze(2), randn(g, 3, 2, 4, 2)


@case(GaussianSplitPrior, identity=lambda: (GaussianSplitPrior(4), torch.randn(2, 4, 3, 3)))
def gaussian_split_prior(g: torch.Generator) -> tuple[Flow, Tensor]:
    return perturb(GaussianSplitPrior(4), g), randn(g, 3, 4, 3, 3)


@case(MultiScale)
def multiscale(g: torch.Generator) -> tuple[Flow, Tensor]:
    a, b = invertible_linear_lu(g)[0], invertible_linear(g)[0]
    b8 = InvertibleLinear(8, generator=g)
    with torch.no_grad():
        b8.weight.add_(0.3 * randn(g, 8, 8))
    f = MultiScale((1, 4, 4), [[a, b], [b8]], split_prior=True)
    perturb(f.priors, g)
    return f, randn(g, 3, 1, 4, 4)


# -- compositions ----------------------------------------------------------------------------

def _identities() -> tuple[Flow, Tensor]:
    return Compose(Affine(3), SinhArcsinh(3)), torch.randn(4, 3)


@case(Compose, identity=_identities)
def compose(g: torch.Generator) -> tuple[Flow, Tensor]:
    a, x = affine(g)
    b, _ = affine(g)
    return Compose(a, ReversePermutation(x.shape[1]), b), x


@case(Inverse, identity=lambda: (Inverse(SinhArcsinh(2)), torch.randn(4, 2)), tails=1e3)
def inverse(g: torch.Generator) -> tuple[Flow, Tensor]:
    f, x = sinh_arcsinh(g)
    return Inverse(f), x


@case(MemorySavingCompose, identity=lambda: (MemorySavingCompose(*_identities()[0].flows), torch.randn(4, 3)))
def memory_saving_compose(g: torch.Generator) -> tuple[Flow, Tensor]:
    a, x = affine(g)
    s = SinhArcsinh(3)
    with torch.no_grad():
        s.epsilon.copy_(0.5 * randn(g, 3))
        s.log_delta.copy_(0.3 * randn(g, 3))
    b, _ = affine(g)
    return MemorySavingCompose(a, s, ReversePermutation(3), b), x


# ============================================================================================
# Coupling cases (the coupling engineer's section: cases for the coupling layers and their
# transformers go here, at the end of the file; keep this marker).
# ============================================================================================

from flowlib.convnets import ResNetConditioner  # noqa: E402
from flowlib.coupling import (  # noqa: E402
    AdditiveCoupling,
    AffineCoupling,
    Coupling,
    Scaling,
    channel_mask,
    checkerboard_mask,
    half_mask,
)
from flowlib.nets import MLP  # noqa: E402
from flowlib.transformers import Additive  # noqa: E402
from flowlib.transformers import Affine as AffineTransformer  # noqa: E402


def _mlp(n_in: int, n_out: int, g: torch.Generator | None) -> MLP:
    net = MLP(n_in, n_out, hidden=16, layers=1)
    if g is not None:
        with torch.no_grad():  # the last layer starts at zero: perturb it so the map moves
            net.last.weight.copy_(0.5 * torch.randn(net.last.weight.shape, generator=g))
            net.last.bias.copy_(0.5 * torch.randn(net.last.bias.shape, generator=g))
    return net


def _resnet(n_in: int, n_out: int, g: torch.Generator | None) -> nn.Module:
    net = ResNetConditioner(n_in, n_out, hidden=4, blocks=1)
    return net if g is None else perturb(net, g)  # the output convolution starts at zero


@case(Scaling, identity=lambda: (Scaling(3), torch.randn(4, 3)))
def scaling(g: torch.Generator) -> tuple[Flow, Tensor]:
    f = Scaling(3)
    with torch.no_grad():
        f.log_scale.copy_(0.5 * randn(g, 3))
    return f, randn(g, 4, 3)


def _checkerboard(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    # A checkerboard cannot be sliced: the layer multiplies by its mask.
    mask = checkerboard_mask(2, 4, 4, 1)
    layer = Coupling(mask, _resnet(*Coupling.conditioner_sizes(mask, AffineTransformer), g),
                     AffineTransformer(clamp=2.0))
    assert not layer.sliced
    return layer, torch.randn(3, 2, 4, 4, generator=g)


@case(Coupling, identity=lambda: _checkerboard(None), tails=1e2)
def coupling_masked(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _checkerboard(g)


def _alternate(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    mask = half_mask(5, 0, kind="alternate")  # kept {0, 2, 4}: sliced by gathering (not a block)
    layer = AdditiveCoupling(mask, _mlp(*Coupling.conditioner_sizes(mask, Additive), g))
    assert layer.sliced
    return layer, torch.randn(6, 5, generator=g)


@case(AdditiveCoupling, identity=lambda: _alternate(None), tails=1e2)
def additive_coupling(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _alternate(g)


def _channels(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    # Parity 1 keeps the LAST 2 of 3 channels: contiguous slices with an odd split. (clamp=None,
    # the additive masked and the vector-half layers: tests/test_coupling.py, same checks.)
    mask = channel_mask(3, 2, 2, 1)
    layer = AffineCoupling(mask, _resnet(*Coupling.conditioner_sizes(mask, AffineTransformer), g))
    assert layer.sliced
    return layer, torch.randn(4, 3, 2, 2, generator=g)


@case(AffineCoupling, identity=lambda: _channels(None))
def affine_coupling(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _channels(g)


# -- autoregressive layers (MADE conditioner); the spline transformer's own corner cases are in
# tests/test_splines.py ------------------------------------------------------------------------

from flowlib.autoregressive import MADE, InverseAutoregressive, MaskedAutoregressive  # noqa: E402
from flowlib.splines import RationalQuadraticSpline  # noqa: E402


def _made(features: int, params: int, g: torch.Generator | None, order: list[int]) -> MADE:
    made = MADE(features, params, hidden=12, layers=2, order=order)
    if g is not None:
        perturb(made, g)  # the last layer starts at zero
    return made


def _maf_spline(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    spline = RationalQuadraticSpline(bins=5, bound=3.0)
    layer = MaskedAutoregressive(_made(4, spline.params, g, [2, 0, 3, 1]), spline)
    return layer, torch.randn(5, 4, generator=g)


@case(MaskedAutoregressive, identity=lambda: _maf_spline(None), tails=1e2)
def masked_autoregressive(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _maf_spline(g)


def _iaf_affine(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    transformer = AffineTransformer(clamp=2.0)
    layer = InverseAutoregressive(_made(3, transformer.params, g, [1, 2, 0]), transformer)
    return layer, torch.randn(5, 3, generator=g)


@case(InverseAutoregressive, identity=lambda: _iaf_affine(None), tails=1e2)
def inverse_autoregressive(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _iaf_affine(g)


# -- the transformer autoregressive flow on image patches ---------------------------------------

from flowlib.tarflow import TransformerAutoregressive  # noqa: E402


def _tarflow(g: torch.Generator | None) -> tuple[Flow, Tensor]:
    layer = TransformerAutoregressive((2, 4, 4), patch=2, width=8, layers=1, heads=2, reverse=True)
    if g is not None:
        perturb(layer, g)  # the output head starts at zero
    return layer, torch.randn(3, 2, 4, 4, generator=g)


@case(TransformerAutoregressive, identity=lambda: _tarflow(None), tails=1e2)
def transformer_autoregressive(g: torch.Generator) -> tuple[Flow, Tensor]:
    return _tarflow(g)
