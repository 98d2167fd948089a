"""Masks and coupling layers: NICE's additive coupling and RealNVP's affine coupling.

A binary mask m of the event shape splits the input: where m = 1 the values pass through
unchanged and feed the conditioner network; where m = 0 they are transformed elementwise
with parameters computed from the unchanged part. The Jacobian is triangular (after
reordering), so its log-determinant is the sum of the log-scales, and the inverse needs
the conditioner only in the forward direction (Dinh et al., 2015; 2017). Because the split
is a mask rather than a slice, the same layers serve vectors (d,) and images (C, H, W).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowlib.core import Flow, FlowInputError, sum_except_batch

__all__ = [
    "half_mask",
    "checkerboard_mask",
    "channel_mask",
    "soft_clamp",
    "AdditiveCoupling",
    "AffineCoupling",
    "Scaling",
]


# -- masks (1 = passes through and conditions, 0 = transformed) ----------------------------
def _check_parity(parity: int, who: str) -> int:
    if parity not in (0, 1):
        raise FlowInputError(f"{who}: parity must be 0 or 1, got {parity}")
    return int(parity)


def _check_sizes(who: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if int(value) < 1:
            raise FlowInputError(f"{who}: {name} must be >= 1, got {value}")


def half_mask(dim: int, parity: int = 0, kind: str = "half") -> Tensor:
    """A (dim,) mask for vectors.

    ``kind="half"`` (default): parity 0 keeps the FIRST ceil(dim/2) coordinates, parity 1
    the others. ``kind="alternate"``: parity 0 keeps the even-indexed coordinates, parity 1
    the odd ones. The two parities are complements, so alternating them transforms every
    coordinate. (For dim = 2 both kinds coincide.)
    """
    _check_sizes("half_mask", dim=dim)
    parity = _check_parity(parity, "half_mask")
    idx = torch.arange(int(dim))
    if kind == "half":
        keep = idx < (int(dim) + 1) // 2
    elif kind == "alternate":
        keep = idx % 2 == 0
    else:
        raise FlowInputError(f"half_mask: kind must be 'half' or 'alternate', got {kind!r}")
    keep = keep if parity == 0 else ~keep
    return keep.to(torch.get_default_dtype())


def checkerboard_mask(channels: int, height: int, width: int, parity: int = 0) -> Tensor:
    """A (C, H, W) mask equal to 1 where (row + column + parity) is even, in every channel."""
    _check_sizes("checkerboard_mask", channels=channels, height=height, width=width)
    parity = _check_parity(parity, "checkerboard_mask")
    rows = torch.arange(int(height)).unsqueeze(1)
    cols = torch.arange(int(width)).unsqueeze(0)
    board = ((rows + cols + parity) % 2 == 0).to(torch.get_default_dtype())
    return board.expand(int(channels), -1, -1).clone()


def channel_mask(channels: int, height: int, width: int, parity: int = 0) -> Tensor:
    """A (C, H, W) mask equal to 1 on the first C//2 channels (parity 0) or on the others (1)."""
    _check_sizes("channel_mask", channels=channels, height=height, width=width)
    parity = _check_parity(parity, "channel_mask")
    if int(channels) < 2:
        raise FlowInputError(f"channel_mask: needs at least 2 channels to split, got {channels}")
    keep = torch.arange(int(channels)) < int(channels) // 2
    keep = keep if parity == 0 else ~keep
    return keep.to(torch.get_default_dtype()).view(-1, 1, 1).expand(-1, int(height), int(width)).clone()


def soft_clamp(s: Tensor, clamp: float | None = 2.0) -> Tensor:
    """(2c/pi) atan(s/c): a smooth clamp of log-scales into (-c, c); ``clamp=None``: no clamp.

    An unbounded log-scale lets one coupling multiply a coordinate by exp(50) early in
    training: the loss overflows to inf/NaN. Squashing s into (-c, c) bounds every layer's
    scale factor by exp(c) (2/pi = 0.636..., the constant used by FrEIA, Ardizzone et al.).
    atan rather than tanh: its gradient decays like 1/s^2, not exponentially, so a
    saturated unit can still be pulled back.
    """
    if clamp is None:
        return s
    return (2.0 * clamp / math.pi) * torch.atan(s / clamp)


def _mask_buffer(mask: Tensor, who: str) -> Tensor:
    if not isinstance(mask, Tensor):
        raise FlowInputError(f"{who}: expected the mask as a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() < 1 or mask.numel() == 0:
        raise FlowInputError(
            f"{who}: expected a mask of the event shape, e.g. (dim,) or (C, H, W), "
            f"got shape {tuple(mask.shape)}"
        )
    mask = mask.detach().to(torch.get_default_dtype())
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise FlowInputError(f"{who}: expected a binary mask of 0s and 1s, got other values")
    return mask.clone()


def _check_conditioner(conditioner: nn.Module, who: str) -> None:
    if not callable(conditioner):
        raise FlowInputError(f"{who}: expected a callable conditioner (an nn.Module), got "
                             f"{type(conditioner).__name__}")


class AdditiveCoupling(Flow):
    """NICE's additive coupling (Dinh et al., 2015):

        z = m*x + (1-m) * (x + t(m*x)),      x = m*z + (1-m) * (z - t(m*z)),

    volume preserving: log|det dz/dx| = 0. ``conditioner(m*x)`` returns t shaped like x;
    zero-initialise its last layer (e.g. :class:`flowlib.nets.MLP`) to start at identity.
    """

    def __init__(self, mask: Tensor, conditioner: nn.Module) -> None:
        mask = _mask_buffer(mask, "AdditiveCoupling")
        _check_conditioner(conditioner, "AdditiveCoupling")
        super().__init__(tuple(mask.shape))
        self.register_buffer("mask", mask)
        self.conditioner = conditioner

    def _shift(self, kept: Tensor) -> Tensor:
        t = self.conditioner(kept)
        if t.shape != kept.shape:
            raise FlowInputError(
                f"AdditiveCoupling: the conditioner must return a tensor shaped like its input "
                f"{tuple(kept.shape)}, got {tuple(t.shape)}"
            )
        return (1 - self.mask) * t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        return x + self._shift(self.mask * x), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        return z - self._shift(self.mask * z), z.new_zeros(z.shape[0])

    @classmethod
    def example(cls, generator: torch.Generator | None = None) -> tuple[Flow, Tensor]:
        from flowlib.nets import MLP

        net = MLP(4, 4, hidden=16, layers=1)
        with torch.no_grad():  # the last layer starts at zero: perturb it so the map moves
            net.last.weight.copy_(0.5 * torch.randn(net.last.weight.shape, generator=generator))
            net.last.bias.copy_(0.5 * torch.randn(net.last.bias.shape, generator=generator))
        return cls(half_mask(4, 0), net), torch.randn(5, 4, generator=generator)


class AffineCoupling(Flow):
    """RealNVP's affine coupling (Dinh et al., 2017):

        (s_raw, t) = conditioner(m*x).chunk(2, dim=1),   s = (1-m) * soft_clamp(s_raw, clamp)
        z = m*x + (1-m) * (x * exp(s) + t),               log|det dz/dx| = sum s
        x = m*z + (1-m) * ((z - t) * exp(-s))

    The conditioner returns twice the input's size along dim 1: (batch, 2d) for vectors,
    (batch, 2C, H, W) for images. ``clamp`` bounds |s| < clamp (see :func:`soft_clamp`);
    ``None`` turns the clamp off.
    """

    def __init__(self, mask: Tensor, conditioner: nn.Module, clamp: float | None = 2.0) -> None:
        mask = _mask_buffer(mask, "AffineCoupling")
        _check_conditioner(conditioner, "AffineCoupling")
        if clamp is not None and not (float(clamp) > 0 and math.isfinite(float(clamp))):
            raise FlowInputError(f"AffineCoupling: clamp must be a finite number > 0 or None, got {clamp}")
        super().__init__(tuple(mask.shape))
        self.register_buffer("mask", mask)
        self.conditioner = conditioner
        self.clamp = None if clamp is None else float(clamp)

    def _scale_shift(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        h = self.conditioner(kept)
        want = (kept.shape[0], 2 * kept.shape[1], *kept.shape[2:])
        if tuple(h.shape) != want:
            raise FlowInputError(
                f"AffineCoupling: the conditioner must return shape {want} (twice the channels: "
                f"log-scale and shift), got {tuple(h.shape)}"
            )
        s_raw, t = h.chunk(2, dim=1)
        free = 1 - self.mask
        return free * soft_clamp(s_raw, self.clamp), free * t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        s, t = self._scale_shift(self.mask * x)
        z = self.mask * x + (1 - self.mask) * (x * torch.exp(s) + t)
        return z, sum_except_batch(s)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        s, t = self._scale_shift(self.mask * z)
        x = self.mask * z + (1 - self.mask) * ((z - t) * torch.exp(-s))
        return x, -sum_except_batch(s)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, clamp={self.clamp}"

    @classmethod
    def example(cls, generator: torch.Generator | None = None) -> tuple[Flow, Tensor]:
        from flowlib.nets import MLP

        net = MLP(4, 8, hidden=16, layers=1)
        with torch.no_grad():  # the last layer starts at zero: perturb it so the map moves
            net.last.weight.copy_(0.5 * torch.randn(net.last.weight.shape, generator=generator))
            net.last.bias.copy_(0.5 * torch.randn(net.last.bias.shape, generator=generator))
        return cls(half_mask(4, 1), net), torch.randn(5, 4, generator=generator)


class Scaling(Flow):
    """NICE's diagonal scaling (Dinh et al., 2015): z = x * exp(s), log|det dz/dx| = sum s.

    Additive couplings preserve volume; this last layer lets the model change it, one
    learned scale per dimension (``s`` has the event shape; it starts at 0, the identity).
    """

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        if not shape or any(int(n) < 1 for n in shape):
            raise FlowInputError(
                f"Scaling: expected a dim >= 1 or an event shape of positive sizes, got {shape}"
            )
        super().__init__(shape)
        self.log_scale = nn.Parameter(torch.zeros(shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        return x * torch.exp(self.log_scale), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        return z * torch.exp(-self.log_scale), (-self.log_scale.sum()).expand(z.shape[0])

    @classmethod
    def example(cls, generator: torch.Generator | None = None) -> tuple[Flow, Tensor]:
        f = cls(3)
        with torch.no_grad():
            f.log_scale.copy_(0.5 * torch.randn(3, generator=generator))
        return f, torch.randn(4, 3, generator=generator)
