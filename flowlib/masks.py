"""Coupling masks: which coordinates a coupling keeps (1) and which it transforms (0).

A mask has the event shape: (dim,) for vectors, (C, H, W) for images. Alternating a mask with
its complement (``parity`` 0, then 1) lets every coordinate be transformed by some layer. The
checkerboard and the channel masks are RealNVP's two image masks (Dinh et al., 2017, section
3.4); :class:`flowlib.coupling.Coupling` reads a mask to decide whether it can slice.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowlib._checks import FlowInputError, choice, integer

__all__ = ["half_mask", "checkerboard_mask", "channel_mask"]


def half_mask(dim: int, parity: int = 0, kind: str = "half") -> Tensor:
    """A (dim,) mask for vectors.

    ``kind="half"`` (default): parity 0 keeps the FIRST ceil(dim/2) coordinates, parity 1
    the others. ``kind="alternate"``: parity 0 keeps the even-indexed coordinates, parity 1
    the odd ones. The two parities are complements, so alternating them transforms every
    coordinate. (For dim = 2 both kinds coincide.)

    >>> half_mask(5, 0, kind="alternate")
    tensor([1., 0., 1., 0., 1.])
    """
    dim = integer(dim, "dim", "half_mask")
    parity = choice(integer(parity, "parity", "half_mask", minimum=0), "parity", (0, 1),
                    "half_mask")
    idx = torch.arange(dim)
    keep = idx < (dim + 1) // 2 if choice(kind, "kind", ("half", "alternate"), "half_mask") == "half" \
        else idx % 2 == 0
    keep = keep if parity == 0 else ~keep
    return keep.to(torch.get_default_dtype())


def checkerboard_mask(channels: int, height: int, width: int, parity: int = 0) -> Tensor:
    """A (C, H, W) mask equal to 1 where (row + column + parity) is even, in every channel.

    >>> checkerboard_mask(1, 2, 2, 0).flatten()
    tensor([1., 0., 0., 1.])
    """
    c, h, w = (integer(v, n, "checkerboard_mask") for v, n in
               ((channels, "channels"), (height, "height"), (width, "width")))
    parity = choice(integer(parity, "parity", "checkerboard_mask", minimum=0), "parity", (0, 1),
                    "checkerboard_mask")
    rows = torch.arange(h).unsqueeze(1)
    cols = torch.arange(w).unsqueeze(0)
    board = ((rows + cols + parity) % 2 == 0).to(torch.get_default_dtype())
    return board.expand(c, -1, -1).clone()


def channel_mask(channels: int, height: int, width: int, parity: int = 0) -> Tensor:
    """A (C, H, W) mask equal to 1 on the first C//2 channels (parity 0) or on the others (1).

    >>> channel_mask(3, 1, 1, 1).flatten()
    tensor([0., 1., 1.])
    """
    c, h, w = (integer(v, n, "channel_mask") for v, n in
               ((channels, "channels"), (height, "height"), (width, "width")))
    parity = choice(integer(parity, "parity", "channel_mask", minimum=0), "parity", (0, 1),
                    "channel_mask")
    if c < 2:
        raise FlowInputError(f"channel_mask: needs at least 2 channels to separate, got {channels}")
    keep = torch.arange(c) < c // 2
    keep = keep if parity == 0 else ~keep
    return keep.to(torch.get_default_dtype()).view(-1, 1, 1).expand(-1, h, w).clone()
