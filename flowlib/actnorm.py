"""Activation normalisation (ActNorm), Glow's data-initialised per-channel affine layer.

Kingma & Dhariwal (2018) replace batch normalisation, whose statistics change with the
batch, by a plain affine map per channel whose parameters are merely INITIALISED from data:
after the first training batch every channel has mean 0 and variance 1, and from then on
scale and bias are ordinary trainable parameters.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from flowlib._checks import integer, number
from flowlib.core import Flow, FlowInputError, positions

__all__ = ["ActNorm", "check_initialising_batch"]


class ActNorm(Flow):
    """z = (x + bias) * exp(log_scale), per channel, for vectors (batch, C) and images (batch, C, H, W).

    log|det dz/dx| = sum_c log_scale_c for vectors and H * W * sum_c log_scale_c for images
    (the same scale acts on each of the H * W pixels).

    Data-dependent initialisation: the first ``forward`` in training mode sets
    bias = -mean and log_scale = -log(std) per channel over that batch (and pixels), so its
    output has mean 0 and unit variance. It never happens in ``inverse`` (sampling before
    training must not "initialise" on latent noise) nor in eval mode. The "initialised"
    flag is a registered buffer, so it is saved in the state dict and a loaded checkpoint
    is never re-initialised; a Python mirror of it is read in ``forward`` so that the layer
    never reads a tensor value (no GPU synchronisation).

    A degenerate first batch, where a channel holds one value only (constant or blank data),
    has no spread to divide by: -log(std + eps) would be -log(eps) = 13.8, a scale of 1e6 that
    makes every later log-density absurd. Such a channel gets a unit scale instead
    (log_scale = 0, bias = -its value: centred, not scaled; training learns the scale), with a
    RuntimeWarning naming the channels. An empty batch initialises nothing (the next one does).

    ``event_shape`` is None: any input (batch, C) or (batch, C, H, W) with the right C.

    >>> layer = ActNorm(3)
    >>> x = 5 + 2 * torch.randn(256, 3)
    >>> z, logdet = layer(x)                  # the first training batch sets bias and scale
    >>> bool(z.mean(0).abs().max() < 1e-4), bool((z.std(0) - 1).abs().max() < 1e-2)
    (True, True)
    >>> torch.allclose(layer.inverse(z)[0], x, atol=1e-4), torch.allclose(logdet, -layer.inverse(z)[1])
    (True, True)
    """

    def __init__(self, num_features: int, eps: float = 1e-6) -> None:
        num_features = integer(num_features, "num_features", "ActNorm")
        eps = number(eps, "eps", "ActNorm", minimum=0.0)
        super().__init__(None)
        self.num_features = num_features
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(self.num_features))
        self.log_scale = nn.Parameter(torch.zeros(self.num_features))
        self.register_buffer("initialized", torch.tensor(False))
        self._initialized = False

    # -- the initialised flag --------------------------------------------------------
    @property
    def is_initialized(self) -> bool:
        return self._initialized

    def mark_initialized(self, value: bool = True) -> None:
        """Set the flag (buffer and mirror) without touching the parameters."""
        self.initialized.fill_(bool(value))
        self._initialized = bool(value)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        key = prefix + "initialized"
        if key in state_dict:
            # Reading the value here is fine: loading happens once, not per batch.
            self._initialized = bool(state_dict[key])

    # -- the layer ---------------------------------------------------------------------
    def check_input(self, x: Tensor, direction: str = "forward") -> None:
        super().check_input(x, direction)
        if x.dim() not in (2, 4) or x.shape[1] != self.num_features:
            raise FlowInputError(
                f"ActNorm.{direction}: expected input of shape (batch, {self.num_features}) or "
                f"(batch, {self.num_features}, height, width), got {tuple(x.shape)}"
            )

    def _view(self, p: Tensor, x: Tensor) -> Tensor:
        return p.view(1, -1, 1, 1) if x.dim() == 4 else p.view(1, -1)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Set bias and log_scale so that this batch comes out with mean 0 and std 1 per channel."""
        self.check_input(x, "initialize")
        values = x.transpose(0, 1).reshape(self.num_features, -1)
        if values.shape[1] < 2:
            raise FlowInputError(
                f"ActNorm.initialize: needs at least 2 values per channel to estimate a variance, "
                f"got a batch of shape {tuple(x.shape)}"
            )
        mean = values.mean(dim=1)
        std = values.std(dim=1, unbiased=False)
        # Exactly one value per channel: max == min is exact, where a computed std may round to 1e-8.
        constant = values.amax(dim=1) == values.amin(dim=1)
        self.bias.copy_(-mean)
        self.log_scale.copy_(torch.where(constant, torch.zeros_like(std), -torch.log(std + self.eps)))
        self.mark_initialized(True)
        if bool(constant.any()):  # read once, at initialisation: not a per-batch synchronisation
            channels = constant.nonzero().flatten().tolist()
            shown = ", ".join(map(str, channels[:10])) + (", ..." if len(channels) > 10 else "")
            warnings.warn(
                f"ActNorm.initialize: channel{'s' if len(channels) > 1 else ''} {shown} "
                f"{'are' if len(channels) > 1 else 'is'} constant over the initialising batch of shape "
                f"{tuple(x.shape)} (std 0): there is no spread to standardise, so "
                f"{'they get' if len(channels) > 1 else 'it gets'} a unit scale (log_scale 0, only "
                f"centred). Initialise on a representative batch if this was not meant.",
                RuntimeWarning, stacklevel=3)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        if self.training and not self._initialized and x.shape[0] > 0:
            self.initialize(x)
        z = (x + self._view(self.bias, x)) * torch.exp(self._view(self.log_scale, x))
        logdet = positions(x) * self.log_scale.sum()
        return z, logdet.expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        x = z * torch.exp(-self._view(self.log_scale, z)) - self._view(self.bias, z)
        logdet = -positions(z) * self.log_scale.sum()
        return x, logdet.expand(z.shape[0])

    def extra_repr(self) -> str:
        return f"num_features={self.num_features}, initialized={self._initialized}"


def check_initialising_batch(flow: nn.Module, levels: Tensor, where: str) -> None:
    """Refuse a batch of constant images as the one that initialises ``flow``'s ActNorm layers.

    ActNorm initialises on the first batch it sees in training mode. If a channel of that
    batch of grey levels (n, C, H, W) holds a single level (blank or constant images), its only
    spread after dequantization is the noise u / K, so the scales come out several times too
    large and every later log-density is absurd (-8e5 per image on MNIST). Not a per-step cost:
    the values are read only while some ActNorm is still uninitialised.
    """
    if levels.shape[0] == 0 or not any(
            isinstance(m, ActNorm) and m.training and not m.is_initialized for m in flow.modules()):
        return
    flat = levels.transpose(0, 1).reshape(levels.shape[1], -1)
    constant = (flat.amax(dim=1) == flat.amin(dim=1)).tolist()
    if any(constant):
        c = constant.index(True)
        raise FlowInputError(
            f"{where}: this batch would initialise the model's ActNorm layers (data-dependent, on the "
            f"first batch in training mode), but channel {c} holds the single grey level "
            f"{float(flat[c, 0]):g} in all {levels.shape[0]} images (blank or constant images): ActNorm "
            f"would take the dequantization noise for the data's spread and every later log-density "
            f"would be absurd. Initialise on varied images: model.initialize(x) with a representative "
            f"batch before training, or shuffle the data")
