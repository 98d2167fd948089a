"""Coupling layers that split the input by slicing instead of masking: the fast form.

:class:`~flowlib.coupling.AffineCoupling` writes the split x = (x_A, x_B) with a mask m: the
conditioner reads the whole masked input m*x and returns parameters for every coordinate, of
which the kept half are multiplied by zero. Whenever the mask is the same at every pixel, i.e.
a split of the channels of an image (Glow; RealNVP's channel-wise couplings) or of the
coordinates of a vector, the two halves can be taken out as tensors of their own:

    x_A = x[:, A],   x_B = x[:, B],   (s_raw, t) = NN(x_A),   s = soft_clamp(s_raw)
    z_A = x_A,       z_B = x_B * exp(s) + t,                  log|det dz/dx| = sum s
    x_B = (z_B - t) * exp(-s)

(Dinh et al., 2017, eq. 4-5; Glow's couplings are written this way, Kingma & Dhariwal, 2018).
It is the same family of maps as the masked layer. The
conditioner now maps |A| channels to 2|B| instead of C to 2C, so its first and last
convolutions cost half as much, and no multiplication by the mask is left.
``benchmarks/throughput.py`` measures the difference. Checkerboard masks vary from pixel to
pixel and cannot be sliced: they stay with the masked classes.

The constructors take the same mask as the masked layers, so a model can switch between the
two forms by changing the class name (and the conditioner's channel counts).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from flowlib.core import Flow, FlowInputError, sum_except_batch
from flowlib.coupling import (
    AdditiveCoupling,
    AffineCoupling,
    _check_conditioner,
    _mask_buffer,
    half_mask,
    soft_clamp,
)

__all__ = [
    "can_split", "split_sizes", "AdditiveSplitCoupling", "AffineSplitCoupling", "split_from_masked",
    "split_couplings",
]


def _along_dim1(mask: Tensor) -> Tensor | None:
    """The mask's value per entry along dim 1 (channel or coordinate), or None when an image mask
    is not the same at every pixel of a channel (a checkerboard)."""
    flat = mask.reshape(mask.shape[0], -1)
    return flat[:, 0] if bool((flat == flat[:, :1]).all()) else None


def can_split(mask: Tensor) -> bool:
    """Whether a coupling with this mask can slice: one value per channel, some kept, some moved."""
    per_entry = _along_dim1(mask)
    return per_entry is not None and 0 < int((per_entry > 0.5).sum()) < per_entry.numel()


def _split_indices(mask: Tensor, who: str) -> tuple[Tensor, Tensor]:
    """The indices along dim 1 kept (mask 1) and moved (mask 0) by a mask that can be sliced."""
    per_entry = _along_dim1(_mask_buffer(mask, who))
    if per_entry is None:
        raise FlowInputError(
            f"{who}: expected a mask that is constant over each channel (e.g. channel_mask); a "
            f"checkerboard mask cannot be sliced: use AffineCoupling / AdditiveCoupling for it"
        )
    keep = per_entry > 0.5
    kept = torch.nonzero(keep).flatten()
    moved = torch.nonzero(~keep).flatten()
    if kept.numel() == 0 or moved.numel() == 0:
        raise FlowInputError(f"{who}: the mask must keep some entries along dim 1 and move the others, "
                             f"got {int(kept.numel())} kept and {int(moved.numel())} moved")
    return kept, moved


def split_sizes(mask: Tensor) -> tuple[int, int]:
    """(|A|, |B|): how many channels (or coordinates) a mask keeps and how many it transforms.

    The conditioner of a split coupling maps |A| channels to |B| (additive) or 2|B| (affine).
    """
    kept, moved = _split_indices(mask, "split_sizes")
    return int(kept.numel()), int(moved.numel())


def _block(index: Tensor) -> tuple[int, int] | None:
    """(start, length) when the indices are one contiguous run, else None."""
    start, length = int(index[0]), int(index.numel())
    return (start, length) if bool((index == torch.arange(start, start + length)).all()) else None


class _SplitCoupling(Flow):
    """Shared plumbing: split along dim 1 into (x_A, x_B) and join back, by slices when possible."""

    abstract = True

    def __init__(self, mask: Tensor, conditioner: nn.Module, who: str) -> None:
        _check_conditioner(conditioner, who)
        kept, moved = _split_indices(mask, who)
        super().__init__(tuple(mask.shape))
        self.conditioner = conditioner
        self.kept_size, self.moved_size = int(kept.numel()), int(moved.numel())
        # Contiguous halves (channel masks, d = 2) are narrowed views: no gather, no copy.
        self._kept_block, self._moved_block = _block(kept), _block(moved)
        self._contiguous = self._kept_block is not None and self._moved_block is not None
        # Derived from the mask given to the constructor: not part of the state dict.
        self.register_buffer("kept_index", kept, persistent=False)
        self.register_buffer("moved_index", moved, persistent=False)
        self.register_buffer("join_index", torch.argsort(torch.cat([kept, moved])), persistent=False)

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x_A, x_B): the kept and the transformed entries along dim 1."""
        if self._contiguous:
            (ka, kn), (ma, mn) = self._kept_block, self._moved_block
            return x.narrow(1, ka, kn), x.narrow(1, ma, mn)
        return x.index_select(1, self.kept_index), x.index_select(1, self.moved_index)

    def join(self, kept: Tensor, moved: Tensor) -> Tensor:
        """The inverse of :meth:`split`."""
        if self._contiguous:
            first_kept = self._kept_block[0] == 0
            return torch.cat([kept, moved] if first_kept else [moved, kept], dim=1)
        return torch.cat([kept, moved], dim=1).index_select(1, self.join_index)

    def _conditioner_output(self, kept: Tensor, factor: int, who: str) -> Tensor:
        h = self.conditioner(kept)
        want = (kept.shape[0], factor * self.moved_size, *kept.shape[2:])
        if tuple(h.shape) != want:
            what = "the shift" if factor == 1 else "log-scale and shift"
            raise FlowInputError(
                f"{who}: the conditioner must map {self.kept_size} kept to {factor * self.moved_size} "
                f"channels ({what} of the {self.moved_size} transformed ones), expected output shape "
                f"{want}, got {tuple(h.shape)}"
            )
        return h

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, kept={self.kept_size}, transformed={self.moved_size}"


class AdditiveSplitCoupling(_SplitCoupling):
    """NICE's additive coupling by slicing (Dinh et al., 2015):

        z_A = x_A,   z_B = x_B + t(x_A),   log|det dz/dx| = 0.

    ``conditioner`` maps (batch, |A|, ...) to (batch, |B|, ...); zero-initialise its last layer
    so that the layer starts as the identity. See :func:`split_sizes` for |A| and |B|.
    """

    def __init__(self, mask: Tensor, conditioner: nn.Module) -> None:
        super().__init__(mask, conditioner, "AdditiveSplitCoupling")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        kept, moved = self.split(x)
        t = self._conditioner_output(kept, 1, "AdditiveSplitCoupling")
        return self.join(kept, moved + t), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        kept, moved = self.split(z)
        t = self._conditioner_output(kept, 1, "AdditiveSplitCoupling")
        return self.join(kept, moved - t), z.new_zeros(z.shape[0])

    @classmethod
    def example(cls, generator: torch.Generator | None = None) -> tuple[Flow, Tensor]:
        from flowlib.nets import MLP

        mask = half_mask(5, 0, kind="alternate")  # kept {0, 2, 4}: the gathered (non-slice) path
        net = MLP(3, 2, hidden=16, layers=1)
        with torch.no_grad():  # the last layer starts at zero: perturb it so the map moves
            net.last.weight.copy_(0.5 * torch.randn(net.last.weight.shape, generator=generator))
            net.last.bias.copy_(0.5 * torch.randn(net.last.bias.shape, generator=generator))
        return cls(mask, net), torch.randn(6, 5, generator=generator)


class AffineSplitCoupling(_SplitCoupling):
    """RealNVP's affine coupling by slicing (Dinh et al., 2017):

        (s_raw, t) = conditioner(x_A).chunk(2, dim=1),   s = soft_clamp(s_raw, clamp)
        z_A = x_A,   z_B = x_B * exp(s) + t,             log|det dz/dx| = sum s
        x_B = (z_B - t) * exp(-s)

    ``conditioner`` maps (batch, |A|, ...) to (batch, 2|B|, ...). ``clamp`` bounds |s| < clamp
    (see :func:`~flowlib.coupling.soft_clamp`); ``None`` turns the clamp off.
    """

    def __init__(self, mask: Tensor, conditioner: nn.Module, clamp: float | None = 2.0) -> None:
        if clamp is not None and not (float(clamp) > 0 and math.isfinite(float(clamp))):
            raise FlowInputError(
                f"AffineSplitCoupling: clamp must be a finite number > 0 or None, got {clamp}"
            )
        super().__init__(mask, conditioner, "AffineSplitCoupling")
        self.clamp = None if clamp is None else float(clamp)

    def _scale_shift(self, kept: Tensor) -> tuple[Tensor, Tensor]:
        s_raw, t = self._conditioner_output(kept, 2, "AffineSplitCoupling").chunk(2, dim=1)
        return soft_clamp(s_raw, self.clamp), t

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        kept, moved = self.split(x)
        s, t = self._scale_shift(kept)
        return self.join(kept, moved * torch.exp(s) + t), sum_except_batch(s)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        kept, moved = self.split(z)
        s, t = self._scale_shift(kept)
        return self.join(kept, (moved - t) * torch.exp(-s)), -sum_except_batch(s)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, clamp={self.clamp}"

    @classmethod
    def example(cls, generator: torch.Generator | None = None) -> tuple[Flow, Tensor]:
        from flowlib.convnets import ResNetConditioner
        from flowlib.coupling import channel_mask

        # Parity 1 keeps the LAST 2 of 3 channels: the sliced path with an odd split.
        net = ResNetConditioner(2, 2, hidden=4, blocks=1)
        with torch.no_grad():  # the output convolution starts at zero: perturb it
            for p in net.parameters():
                p.copy_(0.3 * torch.randn(p.shape, generator=generator))
        return cls(channel_mask(3, 2, 2, 1), net), torch.randn(4, 3, 2, 2, generator=generator)


def split_from_masked(
    layer: AffineCoupling | AdditiveCoupling,
) -> AffineSplitCoupling | AdditiveSplitCoupling:
    """The split coupling that computes exactly the same map as a masked one.

    The masked conditioner reads m*x, whose moved entries are zero: the columns of its first
    layer that read them never matter, so they are dropped. Its output has a value for every
    entry, of which only the moved ones are used: the rows of its last layer that write the
    others are dropped too (for an affine layer, in both the log-scale and the shift half).
    Works for conditioners whose first and last weighted layers are ``nn.Linear`` or
    ``nn.Conv2d`` (:class:`~flowlib.nets.MLP`, :class:`~flowlib.nets.ConvNet`,
    :class:`~flowlib.convnets.ResNetConditioner`, :class:`~flowlib.convnets.GlowConditioner`;
    the last layer's per-channel ``log_scale`` of a :class:`~flowlib.convnets.ZeroConv2d` is
    sliced with it). Used to convert trained masked models without retraining.
    """
    from flowlib.convnets import ZeroConv2d

    if not isinstance(layer, (AffineCoupling, AdditiveCoupling)):
        raise FlowInputError(f"split_from_masked: expected an AffineCoupling or AdditiveCoupling, got "
                             f"{type(layer).__name__}")
    affine = isinstance(layer, AffineCoupling)
    who = "split_from_masked"
    kept, moved = _split_indices(layer.mask, who)
    c = int(layer.mask.shape[0])
    net = copy.deepcopy(layer.conditioner)
    weighted = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not weighted:
        raise FlowInputError(f"{who}: the conditioner has no nn.Linear / nn.Conv2d layer to slice")
    first, last = weighted[0], weighted[-1]
    n_out = 2 * c if affine else c
    if first.weight.shape[1] != c or last.weight.shape[0] != n_out:
        raise FlowInputError(f"{who}: expected a conditioner from {c} to {n_out} channels, its first layer "
                             f"reads {first.weight.shape[1]} and its last writes {last.weight.shape[0]}")
    rows = torch.cat([moved, c + moved]) if affine else moved
    rows = rows.to(last.weight.device)
    with torch.no_grad():
        if first is last:  # a single layer: slice both ways at once
            first.weight = nn.Parameter(first.weight[rows][:, kept.to(first.weight.device)].clone())
        else:
            first.weight = nn.Parameter(first.weight[:, kept.to(first.weight.device)].clone())
            last.weight = nn.Parameter(last.weight[rows].clone())
        if last.bias is not None:
            last.bias = nn.Parameter(last.bias[rows].clone())
    for m in net.modules():
        if isinstance(m, ZeroConv2d) and m.conv is last:
            m.log_scale = nn.Parameter(m.log_scale[:, rows].detach().clone())
    for m in (first, last):  # keep the modules' own bookkeeping honest (repr, shape checks)
        if isinstance(m, nn.Linear):
            m.in_features, m.out_features = m.weight.shape[1], m.weight.shape[0]
        else:
            m.in_channels, m.out_channels = m.weight.shape[1], m.weight.shape[0]
    # The conditioner classes record their sizes and check their inputs against them.
    for name, size in (("in_features", len(kept)), ("in_channels", len(kept)),
                       ("out_features", len(rows)), ("out_channels", len(rows))):
        if hasattr(net, name):
            setattr(net, name, size)
    mask = layer.mask.detach().clone()
    if affine:
        return AffineSplitCoupling(mask, net, clamp=layer.clamp).to(layer.mask.device)
    return AdditiveSplitCoupling(mask, net).to(layer.mask.device)


def split_couplings(module: nn.Module) -> int:
    """Replace, in place, every masked coupling of ``module`` that can be sliced by its split twin.

    The map is unchanged (see :func:`split_from_masked`); checkerboard couplings are left as
    they are. Returns how many layers were replaced. Typical use: load a model trained with
    ``coupling="mask"``, call this, and evaluate or sample faster, or save it in the new layout.
    """
    replaced = 0
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (AffineCoupling, AdditiveCoupling)) and can_split(child.mask):
                setattr(parent, name, split_from_masked(child))
                replaced += 1
    return replaced
