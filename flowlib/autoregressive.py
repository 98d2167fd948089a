"""The autoregressive structure: MADE's masks, MAF (density in one pass) and IAF (sampling in one).

By the chain rule of probability every density factorises in any order o of the coordinates,

    p(x) = prod_i p(x_{o_i} | x_{o_1}, ..., x_{o_{i-1}}),

and a flow can follow it: each coordinate is moved by an elementwise transformer (affine,
spline, see :mod:`flowlib.transformers`) whose parameters depend only on the coordinates before
it in the order,

    z_i = tau(x_i; h_i(x_{<i})),        log|det dz/dx| = sum_i log|tau'(x_i; h_i)|

(the Jacobian is triangular in the order o). One network computes every h_i at once if no
output h_i can see an input x_j with j at or after i: that is **MADE** (Germain et al., 2015),
an MLP whose weight matrices are multiplied by binary masks built from *degrees*. An input has
the degree of its place in the order (1..d), each hidden unit a degree m in [1, d - 1], and a
connection exists from a unit of degree m to one of degree m' when m <= m' (into hidden units)
or m < m' (into outputs, which carry the degree of the coordinate they parameterise).

The same structure can run either way round:

* :class:`MaskedAutoregressive` (MAF, Papamakarios et al., 2017) puts the data on the input
  side: the density is one pass of MADE, and sampling takes d passes (each pass fixes at least
  one more coordinate). The choice for density estimation.
* :class:`InverseAutoregressive` (IAF, Kingma et al., 2016) puts the noise on the input side:
  sampling is one pass, the density of given data takes d passes. The choice for fast
  sampling and variational inference (and Parallel WaveNet's student, van den Oord et al., 2018).

A coupling is the special case with two blocks: the first half has degree 1, the second degree 2.

>>> from flowlib.transformers import Affine
>>> layer = MaskedAutoregressive(MADE(3, Affine.params, hidden=16), Affine())
>>> x = torch.randn(5, 3)
>>> z, logdet = layer(x)                     # zero last layer: the identity
>>> torch.equal(z, x), logdet.tolist()
(True, [0.0, 0.0, 0.0, 0.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from flowlib._checks import FlowInputError, integer
from flowlib.conditional import context_input
from flowlib.core import Flow, sum_except_batch
from flowlib.transformers import Transformer

__all__ = ["MaskedLinear", "made_degrees", "MADE", "MaskedAutoregressive", "InverseAutoregressive"]


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed binary ``mask`` (out, in) on every call."""

    def __init__(self, in_features: int, out_features: int, mask: Tensor, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        if tuple(mask.shape) != (out_features, in_features):
            raise FlowInputError(f"MaskedLinear: expected a mask of shape {(out_features, in_features)}, "
                                 f"got {tuple(mask.shape)}")
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.weight * self.mask, self.bias)


def _order(order: Sequence[int] | Tensor | None, features: int, who: str) -> Tensor:
    if order is None:
        return torch.arange(features)
    order = torch.as_tensor(order, dtype=torch.long).flatten()
    if order.numel() != features or not torch.equal(order.sort().values, torch.arange(features)):
        raise FlowInputError(f"{who}: expected the order as a permutation of 0..{features - 1}, "
                             f"got {order.tolist()}")
    return order


def made_degrees(order: Tensor, hidden: Sequence[int]) -> list[Tensor]:
    """MADE's degrees: the inputs', then each hidden layer's (cycling through 1..d-1, so every
    degree is present and each is used about equally; Germain et al. draw them at random).

    ``order[k]`` is the coordinate that comes k-th; coordinate i then has degree
    ``position of i + 1``.

    >>> [d.tolist() for d in made_degrees(torch.tensor([2, 0, 1]), [4])]
    [[2, 3, 1], [1, 2, 1, 2]]
    """
    d = int(order.numel())
    inputs = torch.empty(d, dtype=torch.long)
    inputs[order] = torch.arange(1, d + 1)
    degrees = [inputs]
    for width in hidden:
        # max(d - 1, 1): with d = 1 the only output sees nothing but the biases.
        degrees.append(torch.arange(width) % max(d - 1, 1) + 1)
    return degrees


def _given_degrees(degrees: Sequence[Tensor | Sequence[int]], features: int, who: str) -> list[Tensor]:
    """Check user-given MADE degrees: 1-D integer tensors, the inputs' (``features`` of them, >= 1)
    then at least one non-empty hidden layer's (>= 0)."""
    if isinstance(degrees, Tensor) or not isinstance(degrees, Sequence) or len(degrees) < 2:
        raise FlowInputError(f"{who}: degrees must be a list of the inputs' degrees and at least one "
                             f"hidden layer's, got {type(degrees).__name__}")
    out = []
    for k, deg in enumerate(degrees):
        deg = torch.as_tensor(deg)
        name = "the inputs'" if k == 0 else f"hidden layer {k}'s"
        if deg.dim() != 1 or deg.numel() == 0 or deg.dtype.is_floating_point or deg.dtype == torch.bool:
            raise FlowInputError(f"{who}: {name} degrees must be a non-empty 1-D integer tensor, got "
                                 f"shape {tuple(deg.shape)} and dtype {deg.dtype}")
        if int(deg.min()) < (1 if k == 0 else 0):
            raise FlowInputError(f"{who}: {name} degrees must be >= {1 if k == 0 else 0}, got {deg.tolist()}")
        out.append(deg.long())
    if out[0].numel() != features:
        raise FlowInputError(f"{who}: expected {features} input degrees (features={features}), "
                             f"got {out[0].numel()}")
    return out


class MADE(nn.Module):
    """Masked autoencoder for distribution estimation (Germain et al., 2015): x (n, d) -> h (n, params d).

    ``layers`` hidden layers of width ``hidden``; ``order`` (a permutation of 0..d-1, default
    0, 1, ..., d-1) is the autoregressive order; the output stacks ``params`` groups of d
    numbers along dim 1, one group after the other (the layout of every flowlib transformer),
    and output (g, i) sees only the inputs that come before coordinate i in the order. The last
    layer starts at zero, so a flow layer built on it starts as the identity.

    >>> made = MADE(3, params=2, hidden=8)
    >>> made.connectivity().int().tolist()  # may output i depend on input j?
    [[0, 0, 0], [1, 0, 0], [1, 1, 0]]
    >>> MADE(3, params=2, order=[2, 0, 1]).connectivity().int().tolist()  # x_2 first, then x_0, x_1
    [[0, 0, 1], [1, 0, 1], [0, 0, 0]]

    ``degrees`` (the inputs' degrees, then each hidden layer's) builds the masks on given degrees
    instead of :func:`made_degrees`' (``hidden``, ``layers`` and ``order`` then follow from
    them). Equal input degrees make blocks: two blocks give a coupling layer's conditioner.

    ``context_features`` k > 0 adds k context inputs of degree 0 (every hidden unit sees them, no
    output sees them directly): ``made(x, context)`` is then conditioned on c, and so is any flow
    built on it (:mod:`flowlib.conditional`).

    >>> two_blocks = [torch.tensor([1, 1, 2, 2]), torch.tensor([1, 1, 1])]
    >>> MADE(4, params=1, degrees=two_blocks).connectivity().int().tolist()
    [[0, 0, 0, 0], [0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
    """

    def __init__(self, features: int, params: int, hidden: int = 64, layers: int = 2,
                 order: Sequence[int] | Tensor | None = None,
                 activation: Callable[[], nn.Module] = nn.ReLU,
                 degrees: Sequence[Tensor | Sequence[int]] | None = None,
                 context_features: int = 0) -> None:
        super().__init__()
        who = "MADE"
        self.features = integer(features, "features", who)
        self.params = integer(params, "params", who)
        self.context_features = integer(context_features, "context_features", who, minimum=0)
        if degrees is None:
            hidden = integer(hidden, "hidden", who)
            layers = integer(layers, "layers", who)
            self.register_buffer("order", _order(order, self.features, who))
            degrees = made_degrees(self.order, [hidden] * layers)
        else:
            degrees = _given_degrees(degrees, self.features, who)
            # The order these degrees imply (ties, i.e. blocks, kept in index order).
            self.register_buffer("order", torch.sort(degrees[0], stable=True).indices)
        modules: list[nn.Module] = []
        inputs = degrees[0]
        # The context's inputs have degree 0: every hidden unit (degree >= 0) may read them.
        degrees = [torch.cat([inputs, inputs.new_zeros(self.context_features)]), *degrees[1:]]
        for before, after in zip(degrees[:-1], degrees[1:], strict=True):
            mask = after.unsqueeze(1) >= before.unsqueeze(0)
            modules += [MaskedLinear(len(before), len(after), mask), activation()]
        out_degrees = inputs.repeat(self.params)
        last = MaskedLinear(len(degrees[-1]), len(out_degrees),
                            out_degrees.unsqueeze(1) > degrees[-1].unsqueeze(0))
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)
        self.net = nn.Sequential(*modules, last)

    def connectivity(self) -> Tensor:
        """(d, d) boolean: may output coordinate i depend on input j? (the product of the masks;
        the context's columns, which every output may see, are left out)."""
        reach = None
        for module in self.net:
            if isinstance(module, MaskedLinear):
                m = module.mask > 0
                reach = m if reach is None else (m.float() @ reach.float()) > 0
        return reach[: self.features, : self.features]

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[1] != self.features:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise FlowInputError(f"MADE: expected input of shape (batch, {self.features}), got {got}")
        if self.context_features:
            x = torch.cat([x, context_input(context, x, self.context_features, "MADE")], dim=1)
        elif context is not None:
            raise FlowInputError("MADE: built without context inputs (context_features=0), got a context")
        return self.net(x)


class MaskedAutoregressive(Flow):
    """MAF's layer (Papamakarios et al., 2017): z = tau(x; MADE(x)); density one pass, sampling d.

    ``conditioner`` is a :class:`MADE` whose ``params`` equals the transformer's.

    >>> from flowlib.transformers import Affine
    >>> layer = MaskedAutoregressive(MADE(3, Affine.params, hidden=16), Affine())
    >>> _ = [p.data.add_(0.1 * torch.randn_like(p)) for p in layer.parameters()]  # not the identity
    >>> x = torch.randn(4, 3)
    >>> z, logdet = layer(x)                   # density: one pass
    >>> x_back, logdet_back = layer.inverse(z)  # sampling: one pass per coordinate
    >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(logdet_back, -logdet, atol=1e-5)
    (True, True)
    """

    def __init__(self, conditioner: MADE, transformer: Transformer) -> None:
        who = type(self).__name__
        if not isinstance(conditioner, MADE):
            raise FlowInputError(f"{who}: expected a MADE conditioner, got {type(conditioner).__name__}")
        if not isinstance(transformer, Transformer):
            raise FlowInputError(f"{who}: expected a flowlib.transformers.Transformer instance (e.g. "
                                 f"Affine()), got {type(transformer).__name__}")
        if conditioner.params != transformer.params:
            raise FlowInputError(f"{who}: the MADE returns {conditioner.params} numbers per coordinate, "
                                 f"{type(transformer).__name__} needs {transformer.params}: build "
                                 f"MADE(features, params=transformer.params)")
        super().__init__((conditioner.features,))
        self.conditioner = conditioner
        self.transformer = transformer
        # A MADE with context inputs makes the layer conditional: layer(x, context).
        self.takes_context = conditioner.context_features > 0

    def _one_pass(self, x: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """The parallel direction: every coordinate moved at once, its parameters from the input."""
        y, log_derivative = self.transformer(x, self.conditioner(x, context))
        return y, sum_except_batch(log_derivative)

    def _sequential(self, y: Tensor, context: Tensor | None) -> tuple[Tensor, Tensor]:
        """The sequential direction: d passes; after pass k the first k coordinates (in the order)
        are exact, and so are the parameters of the next one; the last pass's are all exact."""
        x = torch.zeros_like(y)
        for _ in range(self.conditioner.features):
            x, log_derivative = self.transformer.inverse(y, self.conditioner(x, context))
        return x, sum_except_batch(log_derivative)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        return self._one_pass(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        return self._sequential(z, context)


class InverseAutoregressive(MaskedAutoregressive):
    """IAF's layer (Kingma et al., 2016): x = tau(z; MADE(z)); sampling one pass, density d passes.

    The same structure as :class:`MaskedAutoregressive`, run the other way round: its
    ``inverse`` (latent -> data) is the one-pass direction, its ``forward`` the sequential one.

    >>> from flowlib.transformers import Affine
    >>> layer = InverseAutoregressive(MADE(2, Affine.params, hidden=8), Affine())
    >>> x, logdet = layer.inverse(torch.randn(5, 2))   # latent -> data in one pass
    >>> x.shape, logdet.shape
    (torch.Size([5, 2]), torch.Size([5]))
    """

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        return self._sequential(x, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        return self._one_pass(z, context)
