"""Convolutional conditioner networks for image flows.

A coupling layer (Dinh et al., 2015; 2017) may use any network to compute its shift and
scale from the untouched half: it is never inverted. For images a small residual network of
3x3 convolutions is the usual choice (RealNVP uses ResNets; Glow a three-layer CNN).

The last convolution starts at zero (:class:`ZeroConv2d`, Kingma & Dhariwal, 2018,
section 3.3). With zero shift and zero log-scale, every coupling is the identity at
initialisation, so a deep flow starts as the identity map: activations neither explode
nor vanish through dozens of layers, the initial log-likelihood is that of the base
density, and each layer learns to move away from the identity only as far as it helps.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from flowlib._checks import FlowInputError, choice, integer

__all__ = ["ZeroConv2d", "ResNetConditioner", "GlowConditioner"]


class ZeroConv2d(nn.Module):
    """A 'same' convolution whose weight and bias start at zero, with a learned output scale.

    y = conv(x) * exp(scale_factor * log_scale), log_scale starting at 0 (Glow's Conv2dZeros):
    the per-channel scale lets the output grow quickly once learning starts, while the
    zero weights keep the layer's output exactly zero at initialisation.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3,
                 scale_factor: float = 3.0) -> None:
        super().__init__()
        integer(in_channels, "in_channels", "ZeroConv2d")
        integer(out_channels, "out_channels", "ZeroConv2d")
        choice(kernel_size, "kernel_size", (1, 3, 5), "ZeroConv2d")
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)
        self.log_scale = nn.Parameter(torch.zeros(1, out_channels, 1, 1))
        self.scale_factor = float(scale_factor)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x) * torch.exp(self.scale_factor * self.log_scale)


class _ResidualBlock(nn.Module):
    """h + conv3x3(relu(conv3x3(relu(h)))): a pre-activation residual block (He et al., 2016).

    No batch normalisation: it would make a sample's output depend on the rest of the batch,
    and a flow's log-density would then differ between training and evaluation.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def forward(self, h: Tensor) -> Tensor:
        return h + self.net(h)


class ResNetConditioner(nn.Module):
    """3x3 conv in, ``blocks`` residual blocks of width ``hidden``, zero-initialised 3x3 conv out.

    Maps (batch, in_channels, H, W) to (batch, out_channels, H, W). Used as the conditioner of
    image couplings, with the sizes :meth:`flowlib.coupling.Coupling.conditioner_sizes` gives:
    C/2 -> 2 x C/2 for an affine coupling with a channel mask (log-scales and shifts of the
    moved half), C -> 2C with a checkerboard; the additive coupling needs half the outputs.

    >>> net = ResNetConditioner(2, 4, hidden=8, blocks=1)
    >>> out = net(torch.randn(3, 2, 5, 5))
    >>> out.shape, out.abs().max().item()      # the zero last layer: a coupling starts as the identity
    (torch.Size([3, 4, 5, 5]), 0.0)
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64, blocks: int = 2) -> None:
        super().__init__()
        integer(in_channels, "in_channels", "ResNetConditioner")
        integer(out_channels, "out_channels", "ResNetConditioner")
        integer(hidden, "hidden", "ResNetConditioner")
        integer(blocks, "blocks", "ResNetConditioner", minimum=0)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            *[_ResidualBlock(hidden) for _ in range(blocks)],
            nn.ReLU(),
            # Zero output: the coupling using this network starts as the identity (see module doc).
            ZeroConv2d(hidden, out_channels, 3),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise FlowInputError(
                f"ResNetConditioner: expected input of shape (batch, {self.in_channels}, height, width), "
                f"got {tuple(x.shape)}"
            )
        return self.net(x)


class GlowConditioner(nn.Module):
    """Glow's coupling network: conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero-initialised conv3x3.

    Kingma & Dhariwal (2018, section 3.3) use three convolutions, 3x3, 1x1 and 3x3, with ReLUs
    between them and 512 hidden channels; the last one starts at zero, so that each coupling
    starts as the identity.
    Three convolutions where a ``blocks=1`` :class:`ResNetConditioner` has four 3x3 ones: on
    MNIST-size Glows it trains about three times faster at equal ``hidden``
    (``benchmarks/throughput.py``).

    >>> net = GlowConditioner(2, 4, hidden=8)
    >>> out = net(torch.randn(3, 2, 5, 5))
    >>> out.shape, out.abs().max().item()
    (torch.Size([3, 4, 5, 5]), 0.0)
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int = 64) -> None:
        super().__init__()
        integer(in_channels, "in_channels", "GlowConditioner")
        integer(out_channels, "out_channels", "GlowConditioner")
        integer(hidden, "hidden", "GlowConditioner")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(),
            ZeroConv2d(hidden, out_channels, 3),
        )

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise FlowInputError(
                f"GlowConditioner: expected input of shape (batch, {self.in_channels}, height, width), "
                f"got {tuple(x.shape)}"
            )
        return self.net(x)
