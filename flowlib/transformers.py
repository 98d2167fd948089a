"""Elementwise transformers: the invertible one-dimensional maps a coupling applies.

A flow layer is a *structure* times a *transformer* (Papamakarios et al., 2021, section 3):
the structure (a coupling, :class:`flowlib.coupling.Coupling`; later an autoregressive order)
decides which coordinates condition which, and a conditioner network turns the conditioning
coordinates into parameters h; the transformer then maps every transformed coordinate on its
own,

    y_i = tau(x_i; h_i),        log|dy_i/dx_i| = the elementwise log-derivative,

so the layer's log-determinant is the sum of the log-derivatives of the transformed
coordinates. A transformer holds no weights: everything it needs arrives in ``h``.

The contract, for ``n`` transformed coordinates (vectors, ``x`` of shape ``(batch, n)``) or
channels (images, ``(batch, n, H, W)``)::

    y, log_derivative = transformer(x, h)          # h: (batch, params * n, *rest)
    x, log_derivative = transformer.inverse(y, h)  # log|dx/dy| = -(forward's)

``params`` is how many numbers one coordinate needs, and ``h`` stacks them along dim 1 one
group after the other (``h.chunk(params, dim=1)``). ``log_derivative`` is shaped like ``x``.

- :class:`Additive`: y = x + t (NICE, Dinh et al., 2015), ``params = 1``.
- :class:`Affine`: y = x exp(s) + t with a soft-clamped log-scale s (RealNVP, Dinh et al.,
  2017; Glow, Kingma & Dhariwal, 2018), ``params = 2``.

h = 0 is the identity for both, so a zero-initialised conditioner starts its layer at the
identity. A monotone rational-quadratic spline (Durkan et al., 2019, 3K - 1 numbers per
coordinate) plugs in here later without touching the coupling.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import Tensor, nn

from flowlib._checks import FlowInputError, number

__all__ = ["soft_clamp", "Transformer", "Additive", "Affine"]


def soft_clamp(s: Tensor, clamp: float | None = 2.0) -> Tensor:
    """(2c/pi) atan(s/c): a smooth clamp of log-scales into (-c, c); ``clamp=None``: no clamp.

    An unbounded log-scale lets one coupling multiply a coordinate by exp(50) early in
    training: the loss overflows to inf/NaN. Squashing s into (-c, c) bounds every layer's
    scale factor by exp(c) (2/pi = 0.636..., the constant used by FrEIA, Ardizzone et al.).
    atan rather than tanh: its gradient decays like 1/s^2, not exponentially, so a
    saturated unit can still be pulled back. Its slope at 0 is 2/pi, not 1: a raw log-scale
    s_raw means the scale exp(0.64 s_raw) near 0 (trained weights carry this convention).

    >>> [round(v, 4) for v in soft_clamp(torch.tensor([-1e6, 0.0, 1e6]), 2.0).tolist()]
    [-2.0, 0.0, 2.0]
    """
    if clamp is None:
        return s
    return (2.0 * clamp / math.pi) * torch.atan(s / clamp)


class Transformer(nn.Module):
    """Base class: an invertible elementwise map y = tau(x; h) with its log-derivative.

    Subclasses set ``params`` (numbers per transformed coordinate) and implement
    ``forward(x, h) -> (y, log|dy/dx|)`` and ``inverse(y, h) -> (x, log|dx/dy|)``, both
    log-derivatives elementwise and shaped like the input.
    """

    #: How many numbers of h one transformed coordinate needs.
    params: ClassVar[int] = 0

    def parts(self, x: Tensor, h: Tensor) -> tuple[Tensor, ...]:
        """h split into its ``params`` groups, each shaped like ``x`` (checked: metadata only)."""
        want = (x.shape[0], self.params * x.shape[1], *x.shape[2:])
        if not isinstance(h, Tensor) or tuple(h.shape) != want:
            got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            raise FlowInputError(f"{type(self).__name__}: expected parameters h of shape {want} "
                                 f"({self.params} per coordinate of x {tuple(x.shape)}), got {got}")
        # In x's precision: under autocast h comes out in bfloat16, and exp(s) exp(-s) != 1 there.
        h = h.to(x.dtype)
        return h.chunk(self.params, dim=1) if self.params > 1 else (h,)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError

    def inverse(self, y: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        raise NotImplementedError


class Additive(Transformer):
    """NICE's additive transformer (Dinh et al., 2015): y = x + t, x = y - t, log|dy/dx| = 0.

    ``h`` is the shift t, shaped like x. Volume preserving: the log-derivative is a zero
    tensor expanded to x's shape (a view: no memory, nothing computed).

    >>> y, ld = Additive()(torch.zeros(1, 2), torch.tensor([[1.0, -1.0]]))
    >>> y, ld
    (tensor([[ 1., -1.]]), tensor([[0., 0.]]))
    """

    params: ClassVar[int] = 1

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        (t,) = self.parts(x, h)
        return x + t, x.new_zeros(()).expand(x.shape)

    def inverse(self, y: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        (t,) = self.parts(y, h)
        return y - t, y.new_zeros(()).expand(y.shape)


class Affine(Transformer):
    """The affine transformer of RealNVP and Glow (Dinh et al., 2017; Kingma & Dhariwal, 2018):

        (s_raw, t) = h.chunk(2, dim=1),   s = soft_clamp(s_raw, clamp)
        y = x exp(s) + t,                 log|dy/dx| = s
        x = (y - t) exp(-s),              log|dx/dy| = -s

    The log-scale comes first in h, then the shift (the layout every trained flowlib model
    uses). ``clamp`` bounds |s| < clamp (see :func:`soft_clamp`); ``None`` turns it off.
    Glow's code uses a scale sigmoid(h + 2) in (0, 1); exp(soft_clamp(h)) starts at the same
    scale 1 for h = 0 but may expand as well as contract.

    >>> y, ld = Affine(clamp=None)(torch.ones(1, 1), torch.tensor([[math.log(3.0), 1.0]]))
    >>> y, ld
    (tensor([[4.]]), tensor([[1.0986]]))
    """

    params: ClassVar[int] = 2

    def __init__(self, clamp: float | None = 2.0) -> None:
        super().__init__()
        self.clamp = None if clamp is None else number(clamp, "clamp", "Affine", minimum=0.0, strict=True)

    def scale_shift(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        """(s, t): the clamped log-scale and the shift, each shaped like x."""
        s_raw, t = self.parts(x, h)
        return soft_clamp(s_raw, self.clamp), t

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.scale_shift(x, h)
        return x * torch.exp(s) + t, s

    def inverse(self, y: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
        s, t = self.scale_shift(y, h)
        return (y - t) * torch.exp(-s), -s

    def extra_repr(self) -> str:
        return f"clamp={self.clamp}"
