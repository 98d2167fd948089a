"""The layer contract, composition, the inverse wrapper and the model (flow + base).

Every layer maps data to latent in ``forward`` and back in ``inverse``::

    z, logdet = flow.forward(x)    # logdet = log|det dz/dx|, shape (batch,)
    x, logdet = flow.inverse(z)    # logdet = log|det dx/dz| = -forward's logdet

A model puts a base density p_Z on the latent side, and the change of variables gives

    log p_X(x) = log p_Z(f(x)) + log|det df/dx|.

The contract follows nflows (Durkan et al., 2020); the model is also a
``torch.distributions.Distribution`` in the spirit of zuko (Rozet et al., 2022), so it
drops into code that expects one.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from flowlib._checks import FlowInputError, checking_inputs, integer
from flowlib._doors import check_data, check_temperature, model_context
from flowlib._modules import placement

__all__ = ["Flow", "Compose", "Inverse", "FlowModel", "FlowInputError", "sum_except_batch", "positions",
           "apply", "check_data", "check_temperature"]


class Flow(nn.Module):
    """An invertible map with a tractable log-determinant.

    Subclasses implement ``forward(x) -> (z, logdet)`` (data to latent, the normalizing
    direction) and ``inverse(z) -> (x, logdet)`` (latent to data, the generative
    direction). ``logdet`` has shape ``(batch,)``.

    ``event_shape`` is the shape of one sample without the batch dimension, e.g. ``(2,)``
    for points in the plane or ``(1, 8, 8)`` for an 8x8 grey image; ``None`` means "any
    shape" (elementwise layers).

    >>> class Shift(Flow):
    ...     def forward(self, x):
    ...         return x + 1, x.new_zeros(x.shape[0])
    ...     def inverse(self, z):
    ...         return z - 1, z.new_zeros(z.shape[0])
    >>> Shift()(torch.zeros(1, 1))
    (tensor([[1.]]), tensor([0.]))
    """

    #: True when ``forward`` (data -> latent) has no closed form and is solved numerically (planar).
    numerical_forward: ClassVar[bool] = False
    #: True when ``inverse`` (latent -> data) has no closed form (MixtureLogisticCDF).
    numerical_inverse: ClassVar[bool] = False
    #: True for a layer that reads a context (see :mod:`flowlib.conditional`): it is called
    #: ``layer(x, context)`` and ``layer.inverse(z, context)``; every other layer takes x alone.
    takes_context: bool = False

    def __init__(self, event_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        self.event_shape: tuple[int, ...] | None = (None if event_shape is None
                                                    else tuple(map(int, event_shape)))

    # -- the contract ----------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- helpers shared by every layer ------------------------------------------------
    def check_tensor(self, x: Tensor, direction: str = "forward") -> None:
        """Check that ``x`` is a floating-point tensor (the part of every layer's check that is shared)."""
        name = type(self).__name__
        if not isinstance(x, Tensor):
            raise FlowInputError(f"{name}.{direction}: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise FlowInputError(f"{name}.{direction}: expected a floating-point tensor, got dtype {x.dtype}")

    def check_input(self, x: Tensor, direction: str = "forward") -> None:
        """Check the tensor's shape against ``event_shape``: metadata only, no GPU sync."""
        self.check_tensor(x, direction)
        name = type(self).__name__
        if self.event_shape is None:
            if x.dim() < 2:
                raise FlowInputError(f"{name}.{direction}: expected a batch of shape (batch, ...), "
                                     f"got shape {tuple(x.shape)}")
            return
        want = (-1, *self.event_shape)
        if x.dim() != len(want) or tuple(x.shape[1:]) != self.event_shape:
            shown = "(batch, " + ", ".join(str(s) for s in self.event_shape) + ")"
            raise FlowInputError(f"{name}.{direction}: expected input of shape {shown}, got {tuple(x.shape)}")

    def extra_repr(self) -> str:
        return "" if self.event_shape is None else f"event_shape={self.event_shape}"


def positions(x: Tensor) -> int:
    """How many times a per-channel map acts on one sample: H * W for images, 1 for vectors.

    A map applied to the channel vector at every pixel (ActNorm, a 1x1 convolution) has a
    block-diagonal Jacobian with this many equal blocks, so its log-determinant is this many
    times the one of a single block.

    >>> positions(torch.zeros(2, 3, 4, 5)), positions(torch.zeros(2, 3))
    (20, 1)
    """
    return math.prod(x.shape[2:])


def apply(flow: Flow, x: Tensor, context: Tensor | None = None,
          inverse: bool = False) -> tuple[Tensor, Tensor]:
    """``flow(x)`` or ``flow.inverse(x)``, with the context for a layer that takes one.

    The one place where the two kinds of layer meet: a composition hands the context to its
    conditional layers only, so an unconditional layer never needs a ``context`` argument.
    """
    if flow.takes_context:
        return flow.inverse(x, context) if inverse else flow(x, context)
    return flow.inverse(x) if inverse else flow(x)


def sum_except_batch(t: Tensor) -> Tensor:
    """Sum every dimension but the first: per-element log-derivatives -> one logdet per sample.

    The row length is given, not inferred (``-1``), so an empty batch (0, ...) sums to shape (0,).
    """
    return t.reshape(t.shape[0], math.prod(t.shape[1:])).sum(dim=1)


class Compose(Flow):
    """The composition f = f_K o ... o f_1, with log|det df/dx| = sum_k log|det df_k/dx_{k-1}|.

    ``forward`` applies the layers in order (data -> latent); ``inverse`` in reverse order. A
    ``context`` goes to the layers that take one (:func:`apply`); the others never see it.

    >>> from flowlib.elementwise import Affine
    >>> f = Affine(2); _ = f.log_scale.data.fill_(1.0)
    >>> Compose(f, f)(torch.zeros(3, 2))[1].tolist(), Compose(f, Inverse(f))(torch.ones(1, 2))[0].tolist()
    ([4.0, 4.0, 4.0], [[1.0, 1.0]])
    """

    def __init__(self, *flows: Flow | Iterable[Flow]) -> None:
        if len(flows) == 1 and not isinstance(flows[0], Flow):
            flows = tuple(flows[0])
        if not flows:
            raise FlowInputError("Compose: expected at least one flow, got none")
        for i, f in enumerate(flows):
            if not isinstance(f, Flow):
                raise FlowInputError(f"Compose: item {i} is a {type(f).__name__}, expected a Flow")
        first = next((f.event_shape for f in flows if f.event_shape is not None), None)
        super().__init__(first)
        self.flows = nn.ModuleList(flows)

    def check_input(self, x: Tensor, direction: str = "forward") -> None:
        # Each layer checks its own input; the first one in the direction of travel
        # reports a wrong shape with its own name.
        return None

    @property
    def takes_context(self) -> bool:  # type: ignore[override]
        """Whether some layer reads a context."""
        return any(f.takes_context for f in self.flows)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for f in self.flows:
            x, ld = apply(f, x, context)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for f in reversed(self.flows):
            z, ld = apply(f, z, context, inverse=True)
            logdet = logdet + ld
        return z, logdet

    def forward_steps(self, x: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """Every intermediate value x_0 = x, x_1, ..., x_K = z (for layer-by-layer pictures)."""
        out = [x]
        for f in self.flows:
            x, _ = apply(f, x, context)
            out.append(x)
        return out

    def inverse_steps(self, z: Tensor, context: Tensor | None = None) -> list[Tensor]:
        """Every intermediate value from z back to x, in generative order."""
        out = [z]
        for f in reversed(self.flows):
            z, _ = apply(f, z, context, inverse=True)
            out.append(z)
        return out

    def __len__(self) -> int:
        return len(self.flows)

    def __getitem__(self, i: int) -> Flow:
        return self.flows[i]


class Inverse(Flow):
    """Swap a flow's directions: ``Inverse(f).forward == f.inverse``.

    Useful to train a flow defined in the generative direction (planar, radial) as a
    density model, or to turn a data -> latent layer into a latent -> data one.

    >>> from flowlib.elementwise import Affine
    >>> layer = Affine(1); _ = layer.shift.data.fill_(3.0)
    >>> Inverse(layer)(torch.tensor([[3.0]]))[0].tolist()   # runs layer.inverse: x = z - 3
    [[0.0]]
    """

    def __init__(self, flow: Flow) -> None:
        if not isinstance(flow, Flow):
            raise FlowInputError(f"Inverse: expected a Flow, got {type(flow).__name__}")
        super().__init__(flow.event_shape)
        self.flow = flow

    def check_input(self, x: Tensor, direction: str = "forward") -> None:
        return None

    @property
    def takes_context(self) -> bool:  # type: ignore[override]
        return self.flow.takes_context

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return apply(self.flow, x, context, inverse=True)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return apply(self.flow, z, context)


class FlowModel(nn.Module, Distribution):
    """A normalizing flow: a bijection ``flow`` (data -> latent) and a base density on z.

    log p_X(x) = log p_Z(f(x)) + log|det df/dx|               (change of variables)

    Sampling draws z ~ N(0, T^2 I) (``temperature`` T, Kingma & Dhariwal 2018) from the
    base and returns x = f^{-1}(z). The model is an ``nn.Module`` (parameters, ``.to``,
    state dicts) and a ``torch.distributions.Distribution`` (``log_prob``, ``sample``,
    ``rsample``), so it can be used wherever either is expected.

    A flow with conditional layers makes a conditional model p(x | c) (:mod:`flowlib.conditional`):
    every door then takes ``context=``, one per sample or one for all, of shape
    ``(batch, *context_shape)``; ``context_encoder`` (e.g. :class:`~flowlib.conditional.OneHot`
    for class labels) turns it into what the layers read, once, at the door.

    >>> from flowlib.distributions import StandardNormal
    >>> from flowlib.elementwise import Affine
    >>> model = FlowModel(Affine(2), StandardNormal(2))    # an untrained Affine: the identity
    >>> round(model.log_prob(torch.zeros(1, 2)).item(), 4)  # log N(0; 0, I) = -log(2 pi)
    -1.8379
    """

    has_rsample = True
    arg_constraints: ClassVar[dict] = {}
    support = constraints.real
    #: The unit of :meth:`loss`: what :func:`flowlib.fit` minimises and reports, read, never guessed.
    loss_unit: ClassVar[str] = "nats"

    def __init__(self, flow: Flow, base: nn.Module, validate: bool = True,
                 context_encoder: nn.Module | None = None,
                 context_shape: Sequence[int] | None = None) -> None:
        nn.Module.__init__(self)
        if not isinstance(flow, Flow):
            raise FlowInputError(f"FlowModel: expected a Flow as 'flow', got {type(flow).__name__}")
        event_shape = tuple(getattr(base, "event_shape", ()))
        if not event_shape:
            raise FlowInputError("FlowModel: the base distribution must have an event_shape")
        Distribution.__init__(self, batch_shape=torch.Size(), event_shape=torch.Size(event_shape),
                              validate_args=False)
        self.flow = flow
        self.base = base
        self.validate = validate
        if context_encoder is not None and not callable(context_encoder):
            raise FlowInputError(f"FlowModel: context_encoder must be a module (e.g. OneHot(10)), got "
                                 f"{type(context_encoder).__name__}")
        self.context_encoder = context_encoder
        if context_shape is None:
            context_shape = getattr(context_encoder, "context_shape", None)
        #: The shape of one raw context (None: any); () for class labels.
        self.context_shape = None if context_shape is None else tuple(int(s) for s in context_shape)

    # nn.Module and Distribution both define __repr__; the module's is the useful one.
    __repr__ = nn.Module.__repr__

    @property
    def device(self) -> torch.device:
        """The device of the model's tensors (see :func:`flowlib._modules.placement`)."""
        return placement(self)[0]

    @property
    def dim(self) -> int:
        """Number of scalar dimensions of one sample (for bits per dimension)."""
        return math.prod(self.event_shape)

    @property
    def conditional(self) -> bool:
        """Whether the model is p(x | c): some layer of its flow reads a context."""
        return self.flow.takes_context

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """z, log|det df/dx| for data x and an ENCODED context (no validation; use log_prob at the door)."""
        return apply(self.flow, x, context)

    def _context(self, context: object, n: int, who: str) -> Tensor | None:
        """The context at a door, one encoded one per sample (:func:`flowlib._doors.model_context`)."""
        return model_context(self, context, n, who)

    @property
    def checks_inputs(self) -> bool:
        """Whether data is checked at the door: ``validate``, except inside
        :func:`flowlib._checks.inputs_checked` (code that checked its data once, such as ``fit``)."""
        return self.validate and checking_inputs()

    def log_prob(self, x: Tensor, context: object = None) -> Tensor:
        """log p_X(x) = log p_Z(f(x)) + log|det df/dx| (given c if conditional), one value per sample."""
        who = f"{type(self).__name__}.log_prob"
        if self.checks_inputs:
            self._check_data(x, who)
        z, logdet = apply(self.flow, x, self._context(context, x.shape[0], who))
        return self.base.log_prob(z) + logdet

    def _check_data(self, x: Tensor, where: str) -> None:
        """:func:`check_data` against this model's event shape, device and dtype."""
        device, dtype = placement(self)
        check_data(x, tuple(self.event_shape), device, where, dtype=dtype)

    def loss(self, x: Tensor, context: object = None) -> Tensor:
        """What training minimises, one value per sample: -log p_X(x), in nats (``loss_unit``)."""
        # Without a context, log_prob(x) alone: a subclass may override it with that signature.
        return -(self.log_prob(x) if context is None else self.log_prob(x, context))

    def _shape(self, sample_shape: int | Sequence[int] | torch.Size, who: str) -> tuple[int, ...]:
        """The sample shape as a tuple of ints >= 0; NumPy integers are accepted (``np.int64(3)``)."""
        if isinstance(sample_shape, (numbers.Integral, str)) or not isinstance(sample_shape, Iterable):
            return (integer(sample_shape, "the number of samples", who, minimum=0),)
        return tuple(integer(s, "sample_shape", who, minimum=0) for s in sample_shape)

    def _temperature(self, temperature: float, who: str) -> float:
        """:func:`check_temperature` against this model's dtype."""
        return check_temperature(temperature, who, placement(self)[1])

    def rsample(self, sample_shape: int | Sequence[int] | torch.Size = torch.Size(),
                temperature: float = 1.0, context: object = None) -> Tensor:
        """Differentiable samples x = f^{-1}(z), z ~ N(0, T^2 I): shape sample_shape + event_shape.

        A conditional model takes one context per sample (n = prod(sample_shape) of them) or one for all.
        """
        who = f"{type(self).__name__}.rsample"
        shape = self._shape(sample_shape, who)
        temperature = self._temperature(temperature, who)
        n = math.prod(shape) if shape else 1
        c = self._context(context, n, who)
        z = self.base.sample(n, temperature=temperature)
        x, _ = apply(self.flow, z, c, inverse=True)
        return x.reshape(*shape, *self.event_shape)

    def sample(self, sample_shape: int | Sequence[int] | torch.Size = torch.Size(),
               temperature: float = 1.0, context: object = None) -> Tensor:
        """Samples without gradients; ``temperature`` T scales the base's spread (T=0: the mode).

        ``sample_shape`` is an int (NumPy integers too) or a sequence of them, each >= 0 (0 gives
        an empty batch). T is refused where it would overflow the model's dtype (see ``rsample``).
        """
        who = f"{type(self).__name__}.sample"
        sample_shape = self._shape(sample_shape, who)
        temperature = self._temperature(temperature, who)
        with torch.no_grad():
            return self.rsample(sample_shape, temperature=temperature, context=context)

    def sample_and_log_prob(self, n: int, temperature: float = 1.0,
                            context: object = None) -> tuple[Tensor, Tensor]:
        """Differentiable samples and their log-density under the model (T = 1), in one pass.

        log p_X(x) = log p_Z(z) - log|det dx/dz|: the generative direction only, which is
        what reverse-KL training (e.g. planar flows on energies) needs.
        """
        who = f"{type(self).__name__}.sample_and_log_prob"
        n = integer(n, "n", who, minimum=0)
        c = self._context(context, n, who)
        z = self.base.sample(n, temperature=self._temperature(temperature, who))
        log_pz = self.base.log_prob(z)
        x, logdet = apply(self.flow, z, c, inverse=True)
        return x, log_pz - logdet

    def decode(self, z: Tensor, context: object = None) -> Tensor:
        """The generative map x = f^{-1}(z; c) (used for interpolation in latent space)."""
        return apply(self.flow, z, self._context(context, z.shape[0], f"{type(self).__name__}.decode"),
                     inverse=True)[0]

    def encode(self, x: Tensor, context: object = None) -> Tensor:
        """The normalizing map z = f(x; c)."""
        return apply(self.flow, x, self._context(context, x.shape[0], f"{type(self).__name__}.encode"))[0]
