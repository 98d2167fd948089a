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

from flowlib._checks import FlowInputError, checking_inputs, integer, number
from flowlib._modules import placement

__all__ = ["Flow", "Compose", "Inverse", "FlowModel", "FlowInputError", "sum_except_batch", "positions",
           "check_data", "check_temperature"]


class Flow(nn.Module):
    """An invertible map with a tractable log-determinant.

    Subclasses implement ``forward(x) -> (z, logdet)`` (data to latent, the normalizing
    direction) and ``inverse(z) -> (x, logdet)`` (latent to data, the generative
    direction). ``logdet`` has shape ``(batch,)``.

    ``event_shape`` is the shape of one sample without the batch dimension, e.g. ``(2,)``
    for points in the plane or ``(1, 8, 8)`` for an 8x8 grey image; ``None`` means "any
    shape" (elementwise layers).

    Subclassing registers nothing: flowlib keeps no list of layers (the test-suite keeps its
    own, in ``tests/layer_cases.py``).

    >>> class Shift(Flow):
    ...     def forward(self, x):
    ...         return x + 1, x.new_zeros(x.shape[0])
    ...     def inverse(self, z):
    ...         return z - 1, z.new_zeros(z.shape[0])
    >>> Shift()(torch.zeros(2, 1))
    (tensor([[1.],
            [1.]]), tensor([0., 0.]))
    """

    #: True when ``forward`` (data -> latent) has no closed form and is solved numerically
    #: (the planar flow): documented behaviour of a layer, not a test flag.
    numerical_forward: ClassVar[bool] = False
    #: True when ``inverse`` (latent -> data) has no closed form (MixtureLogisticCDF).
    numerical_inverse: ClassVar[bool] = False

    def __init__(self, event_shape: Sequence[int] | None = None) -> None:
        super().__init__()
        self.event_shape: tuple[int, ...] | None = (
            None if event_shape is None else tuple(int(s) for s in event_shape)
        )

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
            raise FlowInputError(
                f"{name}.{direction}: expected a floating-point tensor, got dtype {x.dtype}"
            )

    def check_input(self, x: Tensor, direction: str = "forward") -> None:
        """Check the tensor's shape against ``event_shape``: metadata only, no GPU sync."""
        self.check_tensor(x, direction)
        name = type(self).__name__
        if self.event_shape is None:
            if x.dim() < 2:
                raise FlowInputError(
                    f"{name}.{direction}: expected a batch of shape (batch, ...), got shape {tuple(x.shape)}"
                )
            return
        want = (-1, *self.event_shape)
        if x.dim() != len(want) or tuple(x.shape[1:]) != self.event_shape:
            shown = "(batch, " + ", ".join(str(s) for s in self.event_shape) + ")"
            raise FlowInputError(
                f"{name}.{direction}: expected input of shape {shown}, got {tuple(x.shape)}"
            )

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


def sum_except_batch(t: Tensor) -> Tensor:
    """Sum every dimension but the first: per-element log-derivatives -> one logdet per sample.

    The row length is given, not inferred (``-1``), so an empty batch (0, ...) sums to shape (0,).
    """
    return t.reshape(t.shape[0], math.prod(t.shape[1:])).sum(dim=1)


class Compose(Flow):
    """The composition f = f_K o ... o f_1, with log|det df/dx| = sum_k log|det df_k/dx_{k-1}|.

    ``forward`` applies the layers in order (data -> latent); ``inverse`` in reverse order.
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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        logdet = x.new_zeros(x.shape[0])
        for f in self.flows:
            x, ld = f(x)
            logdet = logdet + ld
        return x, logdet

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        logdet = z.new_zeros(z.shape[0])
        for f in reversed(self.flows):
            z, ld = f.inverse(z)
            logdet = logdet + ld
        return z, logdet

    def forward_steps(self, x: Tensor) -> list[Tensor]:
        """Every intermediate value x_0 = x, x_1, ..., x_K = z (for layer-by-layer pictures)."""
        out = [x]
        for f in self.flows:
            x, _ = f(x)
            out.append(x)
        return out

    def inverse_steps(self, z: Tensor) -> list[Tensor]:
        """Every intermediate value from z back to x, in generative order."""
        out = [z]
        for f in reversed(self.flows):
            z, _ = f.inverse(z)
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
    """

    def __init__(self, flow: Flow) -> None:
        if not isinstance(flow, Flow):
            raise FlowInputError(f"Inverse: expected a Flow, got {type(flow).__name__}")
        super().__init__(flow.event_shape)
        self.flow = flow

    def check_input(self, x: Tensor, direction: str = "forward") -> None:
        return None

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.flow.inverse(x)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        return self.flow.forward(z)


def check_data(x: Tensor, event_shape: tuple[int, ...], device: torch.device, where: str,
               dtype: torch.dtype | None = None) -> None:
    """Validate data where it enters a model: shape, dtype, device and finiteness.

    With ``dtype`` (the model's), data of another floating-point dtype is refused naming both:
    torch would fail later inside a layer (``mat1 and mat2 must have the same dtype``), or,
    in purely elementwise layers, silently compute in the promoted dtype. The finiteness
    check reads the values (on a GPU this synchronises), so it is done once per call at the
    model's door, never inside a layer.
    """
    if not isinstance(x, Tensor):
        raise FlowInputError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
    want = "(batch, " + ", ".join(str(s) for s in event_shape) + ")"
    if x.dim() != len(event_shape) + 1 or tuple(x.shape[1:]) != tuple(event_shape):
        raise FlowInputError(f"{where}: expected data of shape {want}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FlowInputError(f"{where}: expected a floating-point tensor, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        cast = {torch.float32: "x.float()", torch.float64: "x.double()"}.get(dtype, f"x.to({dtype})")
        raise FlowInputError(f"{where}: the data is {x.dtype} but the model is {dtype}; cast one of them, "
                             f"e.g. {cast} (or model.to({x.dtype}))")
    if x.device.type != device.type or (
        device.index is not None and x.device.index is not None and x.device.index != device.index
    ):
        raise FlowInputError(
            f"{where}: the data is on {x.device} but the model is on {device}; "
            f"move one of them, e.g. x.to({str(device)!r})"
        )
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise FlowInputError(f"{where}: expected finite data, found {bad} NaN or inf values")


def check_temperature(temperature: float, who: str, dtype: torch.dtype) -> float:
    """A temperature T >= 0 small enough that z = T eps stays finite in ``dtype``.

    |eps| of a standard-normal draw stays below 6 in float32 (9 in float64) in practice, so T
    is bounded by the dtype's largest value / 16: above it (e.g. 3.5e38, finite in Python but
    not in float32) T eps overflows to inf and every sample comes out NaN.

    >>> check_temperature(0.7, "sample", torch.float32)
    0.7
    """
    temperature = number(temperature, "temperature", who, minimum=0.0)
    if dtype.is_floating_point and temperature > torch.finfo(dtype).max / 16:
        biggest = torch.finfo(dtype).max
        raise FlowInputError(f"{who}: temperature {temperature:.4g} overflows the model's dtype {dtype} "
                             f"(T eps must stay below {biggest:.3g}); use a temperature <= "
                             f"{biggest / 16:.3g}, or a float64 model (model.double())")
    return temperature


class FlowModel(nn.Module, Distribution):
    """A normalizing flow: a bijection ``flow`` (data -> latent) and a base density on z.

    log p_X(x) = log p_Z(f(x)) + log|det df/dx|               (change of variables)

    Sampling draws z ~ N(0, T^2 I) (``temperature`` T, Kingma & Dhariwal 2018) from the
    base and returns x = f^{-1}(z). The model is an ``nn.Module`` (parameters, ``.to``,
    state dicts) and a ``torch.distributions.Distribution`` (``log_prob``, ``sample``,
    ``rsample``), so it can be used wherever either is expected.
    """

    has_rsample = True
    arg_constraints: ClassVar[dict] = {}
    support = constraints.real
    #: The unit of :meth:`loss`: what :func:`flowlib.fit` minimises and reports, read, never guessed.
    loss_unit: ClassVar[str] = "nats"

    def __init__(self, flow: Flow, base: nn.Module, validate: bool = True) -> None:
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

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """z, log|det df/dx| for data x (no validation; use log_prob at the door)."""
        return self.flow(x)

    @property
    def checks_inputs(self) -> bool:
        """Whether data is checked at the door: ``validate``, except inside
        :func:`flowlib._checks.inputs_checked` (code that checked its data once, such as ``fit``)."""
        return self.validate and checking_inputs()

    def log_prob(self, x: Tensor) -> Tensor:
        """log p_X(x) = log p_Z(f(x)) + log|det df/dx|, one value per sample."""
        if self.checks_inputs:
            self._check_data(x, f"{type(self).__name__}.log_prob")
        z, logdet = self.flow(x)
        return self.base.log_prob(z) + logdet

    def _check_data(self, x: Tensor, where: str) -> None:
        """:func:`check_data` against this model's event shape, device and dtype."""
        device, dtype = placement(self)
        check_data(x, tuple(self.event_shape), device, where, dtype=dtype)

    def loss(self, x: Tensor) -> Tensor:
        """What training minimises, one value per sample: -log p_X(x), in nats (``loss_unit``)."""
        return -self.log_prob(x)

    def _shape(self, sample_shape: int | Sequence[int] | torch.Size, who: str) -> tuple[int, ...]:
        """The sample shape as a tuple of ints >= 0; NumPy integers are accepted (``np.int64(3)``)."""
        if isinstance(sample_shape, (numbers.Integral, str)) or not isinstance(sample_shape, Iterable):
            return (integer(sample_shape, "the number of samples", who, minimum=0),)
        return tuple(integer(s, "sample_shape", who, minimum=0) for s in sample_shape)

    def _temperature(self, temperature: float, who: str) -> float:
        """:func:`check_temperature` against this model's dtype."""
        return check_temperature(temperature, who, placement(self)[1])

    def rsample(self, sample_shape: int | Sequence[int] | torch.Size = torch.Size(),
                temperature: float = 1.0) -> Tensor:
        """Differentiable samples x = f^{-1}(z), z ~ N(0, T^2 I): shape sample_shape + event_shape."""
        who = f"{type(self).__name__}.rsample"
        shape = self._shape(sample_shape, who)
        temperature = self._temperature(temperature, who)
        n = math.prod(shape) if shape else 1
        z = self.base.sample(n, temperature=temperature)
        x, _ = self.flow.inverse(z)
        return x.reshape(*shape, *self.event_shape)

    def sample(self, sample_shape: int | Sequence[int] | torch.Size = torch.Size(),
               temperature: float = 1.0) -> Tensor:
        """Samples without gradients; ``temperature`` T scales the base's spread (T=0: the mode).

        ``sample_shape`` is an int (NumPy integers too) or a sequence of them, each >= 0 (0 gives
        an empty batch). T is refused where it would overflow the model's dtype (see ``rsample``).
        """
        who = f"{type(self).__name__}.sample"
        sample_shape = self._shape(sample_shape, who)
        temperature = self._temperature(temperature, who)
        with torch.no_grad():
            return self.rsample(sample_shape, temperature=temperature)

    def sample_and_log_prob(self, n: int, temperature: float = 1.0) -> tuple[Tensor, Tensor]:
        """Differentiable samples and their log-density under the model (T = 1), in one pass.

        log p_X(x) = log p_Z(z) - log|det dx/dz|: the generative direction only, which is
        what reverse-KL training (e.g. planar flows on energies) needs.
        """
        who = f"{type(self).__name__}.sample_and_log_prob"
        n = integer(n, "n", who, minimum=0)
        z = self.base.sample(n, temperature=self._temperature(temperature, who))
        log_pz = self.base.log_prob(z)
        x, logdet = self.flow.inverse(z)
        return x, log_pz - logdet

    def decode(self, z: Tensor) -> Tensor:
        """The generative map x = f^{-1}(z) (used for interpolation in latent space)."""
        return self.flow.inverse(z)[0]

    def encode(self, x: Tensor) -> Tensor:
        """The normalizing map z = f(x)."""
        return self.flow(x)[0]
