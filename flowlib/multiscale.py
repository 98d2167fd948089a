"""The multi-scale architecture of RealNVP and Glow: squeeze, flow steps, factor out half.

Dinh et al. (2017, section 3.6) process an image at several scales. At each scale the image
is *squeezed* (every 2x2 block of pixels becomes 4 channels: (C, H, W) -> (4C, H/2, W/2)),
transformed by a few flow steps (``depth`` of them, Glow's K), and then half of the channels
are *factored out* (the *split*): they are final latent variables and only the other half
goes on to the next, coarser scale. This
saves computation and gives the latent a coarse-to-fine structure.

Glow (Kingma & Dhariwal, 2018) gives each factored-out half z2 a *learned conditional prior*
N(mu(z1), sigma(z1)^2) computed from the kept half z1. Here that prior is written as one more
bijection, :class:`GaussianSplitPrior`,

    eps2 = (z2 - mu(z1)) * exp(-log_sigma(z1)),        log|det| = -sum log_sigma(z1),

so that a standard-normal density on eps2 *is* the learned prior on z2, and everything stays
within the layer contract. In a class-conditional Glow the prior also reads the context,
N(mu(z1, c), sigma(z1, c)^2) (``context_features``, see :mod:`flowlib.conditional`).
Sampling at temperature T draws every eps ~ N(0, T^2), which scales
the split priors too; T = 0 gives mu(z1) at every scale (the mode, deterministically).

:class:`MultiScale` returns a latent of the same shape as its input: the factored-out parts
are un-squeezed back into place, a fixed volume-preserving rearrangement. So it passes the
generic layer tests and plugs into ``FlowModel`` with a ``StandardNormal((C, H, W))`` base;
:meth:`MultiScale.split_latents` recovers the per-scale latents.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from flowlib._checks import event_shape as _event_shape
from flowlib._checks import integer, number, renamed
from flowlib.conditional import context_input
from flowlib.convnets import ZeroConv2d
from flowlib.core import Compose, Flow, FlowInputError, apply, sum_except_batch

__all__ = ["squeeze", "unsqueeze", "Squeeze", "GaussianSplitPrior", "MultiScale"]


def squeeze(x: Tensor, factor: int = 2) -> Tensor:
    """Space to depth: (B, C, H, W) -> (B, C*f*f, H/f, W/f); channel c*f*f + i*f + j holds pixel (i, j).

    >>> x = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> squeeze(x).shape, squeeze(x)[0, :, 0, 0].tolist()     # the 2x2 block at the top left
    (torch.Size([1, 4, 2, 2]), [0.0, 1.0, 4.0, 5.0])
    >>> torch.equal(unsqueeze(squeeze(x)), x)
    True
    """
    b, c, h, w = x.shape
    x = x.reshape(b, c, h // factor, factor, w // factor, factor)
    return x.permute(0, 1, 3, 5, 2, 4).reshape(b, c * factor * factor, h // factor, w // factor)


def unsqueeze(z: Tensor, factor: int = 2) -> Tensor:
    """Depth to space, the inverse of :func:`squeeze`."""
    b, c, h, w = z.shape
    z = z.reshape(b, c // (factor * factor), factor, factor, h, w)
    return z.permute(0, 1, 4, 2, 5, 3).reshape(b, c // (factor * factor), h * factor, w * factor)


class Squeeze(Flow):
    """Space to depth, (C, H, W) -> (f^2 C, H/f, W/f) (Dinh et al., 2017): a permutation, logdet 0.

    Changes the shape, so H and W must be divisible by the factor f.

    >>> z, logdet = Squeeze()(torch.randn(3, 1, 8, 8))
    >>> z.shape, logdet.tolist()
    (torch.Size([3, 4, 4, 4]), [0.0, 0.0, 0.0])
    """

    def __init__(self, factor: int = 2) -> None:
        factor = integer(factor, "factor", "Squeeze", minimum=2)
        super().__init__(None)
        self.factor = factor

    def check_input(self, x: Tensor, direction: str = "forward") -> None:
        name = type(self).__name__
        f = self.factor
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() != 4:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise FlowInputError(f"{name}.{direction}: expected a float image batch "
                                 f"(batch, channels, height, width), got {got}")
        if direction == "forward" and (x.shape[2] % f or x.shape[3] % f):
            raise FlowInputError(f"{name}.forward: expected height and width divisible by {f}, "
                                 f"got shape {tuple(x.shape)}")
        if direction == "inverse" and x.shape[1] % (f * f):
            raise FlowInputError(f"{name}.inverse: expected channels divisible by {f * f}, "
                                 f"got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        return squeeze(x, self.factor), x.new_zeros(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        return unsqueeze(z, self.factor), z.new_zeros(z.shape[0])

    def extra_repr(self) -> str:
        return f"factor={self.factor}"


class GaussianSplitPrior(Flow):
    """Glow's learned prior for the factored-out half, written as a bijection.

    The input (B, C, H, W) is split along channels into z1 (first C/2, kept unchanged) and
    z2 (last C/2). A zero-initialised convolution of z1 gives mu and a raw log-scale h,

        log_sigma = b * tanh(h / b)               (a soft bound, b = ``bound``, against NaNs)
        eps2 = (z2 - mu) * exp(-log_sigma),       log|det d(z1, eps2)/d(z1, z2)| = -sum log_sigma,

    so N(eps2; 0, I) = N(z2; mu(z1), sigma(z1)^2) |d eps2/d z2|: a standard normal on eps2 is
    the conditional prior p(z2 | z1) (Kingma & Dhariwal, 2018). At initialisation mu = 0 and
    sigma = 1: the map is the identity and the prior is the standard normal of RealNVP.
    With ``context_features`` k > 0 the convolution also reads the context's k channels
    (:func:`~flowlib.conditional.context_map`), and the layer is called ``prior(x, context)``.

    >>> prior = GaussianSplitPrior(4)          # at initialisation mu = 0, sigma = 1: the identity
    >>> x = torch.randn(2, 4, 3, 3)
    >>> y, logdet = prior(x)
    >>> torch.equal(y, x), bool((logdet == 0).all())
    (True, True)
    """

    def __init__(self, channels: int, bound: float = 5.0, context_features: int = 0) -> None:
        if integer(channels, "channels", "GaussianSplitPrior", minimum=2) % 2:
            raise FlowInputError(f"GaussianSplitPrior: channels must be an even integer >= 2, "
                                 f"got {channels!r}")
        bound = number(bound, "bound", "GaussianSplitPrior", minimum=0.0, strict=True)
        super().__init__(None)
        self.channels = channels
        self.bound = float(bound)
        self.context_features = integer(context_features, "context_features", "GaussianSplitPrior", minimum=0)
        self.takes_context = self.context_features > 0
        self.net = ZeroConv2d(channels // 2 + self.context_features, channels, 3)

    def check_input(self, x: Tensor, direction: str = "forward") -> None:
        ok = isinstance(x, Tensor) and x.is_floating_point() and x.dim() == 4
        if not ok or x.shape[1] != self.channels:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise FlowInputError(f"{type(self).__name__}.{direction}: expected a float tensor of shape "
                                 f"(batch, {self.channels}, height, width), got {got}")

    def prior_params(self, z1: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """mu and log_sigma of the conditional prior p(z2 | z1) (or p(z2 | z1, c))."""
        if self.takes_context:
            c = context_input(context, z1, self.context_features, type(self).__name__)
            z1 = torch.cat([z1, c], dim=1)
        mu, h = self.net(z1).chunk(2, dim=1)
        return mu, self.bound * torch.tanh(h / self.bound)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        z1, z2 = x.chunk(2, dim=1)
        mu, log_sigma = self.prior_params(z1, context)
        eps2 = (z2 - mu) * torch.exp(-log_sigma)
        return torch.cat([z1, eps2], dim=1), -sum_except_batch(log_sigma)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        z1, eps2 = z.chunk(2, dim=1)
        mu, log_sigma = self.prior_params(z1, context)
        z2 = mu + torch.exp(log_sigma) * eps2
        return torch.cat([z1, z2], dim=1), sum_except_batch(log_sigma)

    def extra_repr(self) -> str:
        context = f", context_features={self.context_features}" if self.takes_context else ""
        return f"channels={self.channels}, bound={self.bound}{context}"


def _image_shape(shape: Sequence[int], who: str) -> tuple[int, int, int]:
    shape = _event_shape(shape, who)
    if len(shape) != 3:
        raise FlowInputError(f"{who}: expected an image shape (channels, height, width), got {shape!r}")
    return shape  # type: ignore[return-value]


class MultiScale(Flow):
    """The multi-scale flow of RealNVP / Glow: per scale squeeze, flow steps, factor out half.

    For scales l = 0 .. L-1, on h_0 = x:

        h = squeeze(h_l)                  (C_l, H_l, W_l) -> (4 C_l, H_l/2, W_l/2)
        h = flows[l](h)                   the flow steps of scale l (Glow: K = depth of them)
        if l < L-1:  (h_{l+1}, eps_l) = split(prior_l(h))   keep the first half, factor out the rest

    ``flows[l]`` (a flow, or a list of flows composed in order) acts on shape
    ``MultiScale.scale_shapes(event_shape, L)[l]``; with ``split_prior=True`` (Glow)
    ``prior_l`` is a :class:`GaussianSplitPrior`, with ``False`` (RealNVP) the factored-out half
    goes to the base density unchanged. The latent is assembled back to the input's shape by
    un-squeezing, so ``forward`` maps (B, C, H, W) to (B, C, H, W) and log|det| = sum of the
    flows' and priors' logdets (squeezes add 0). The per-scale flows are kept in ``self.flows``
    (the name in every saved state dict: ``flows.<scale>.*``; a state dict of the older layout,
    ``steps.<scale>.*``, still loads).

    >>> MultiScale.scale_shapes((1, 28, 28), 2)
    [(4, 14, 14), (8, 7, 7)]
    """

    def __init__(self, event_shape: Sequence[int], flows: Sequence[Flow | Sequence[Flow]] | None = None,
                 split_prior: bool = True, context_features: Sequence[int] | int = 0,
                 **deprecated: object) -> None:
        flows = renamed(deprecated, {"steps": "flows"}, "MultiScale").get("flows", flows)
        c, h, w = _image_shape(event_shape, "MultiScale")
        if flows is None or isinstance(flows, Flow) or len(flows) < 1:
            raise FlowInputError("MultiScale: flows must be a list with one flow (or list of flows) "
                                 "per scale")
        shapes = self.scale_shapes((c, h, w), len(flows))
        super().__init__((c, h, w))
        per_scale = []
        for scale, f in enumerate(flows):
            try:
                per_scale.append(f if isinstance(f, Flow) else Compose(list(f)))
            except FlowInputError as err:
                raise FlowInputError(f"MultiScale: flows[{scale}] is not a flow or list of flows: "
                                     f"{err}") from err
        self.flows = torch.nn.ModuleList(per_scale)
        self.split_prior = bool(split_prior)
        # The split priors' context channels, one per split (an int: the same for all).
        k = ([context_features] * (len(shapes) - 1) if isinstance(context_features, int)
             else list(context_features))
        if len(k) != len(shapes) - 1 or (not split_prior and any(k)):
            raise FlowInputError(f"MultiScale: context_features gives the {len(shapes) - 1} split priors' "
                                 f"context channels (an int or one per split, and split_prior=True), got "
                                 f"{context_features!r}")
        self.priors = torch.nn.ModuleList(
            [GaussianSplitPrior(s[0], context_features=ks) for s, ks in zip(shapes[:-1], k, strict=True)]
            if split_prior else []
        )

    @property
    def takes_context(self) -> bool:  # type: ignore[override]
        """Whether a per-scale flow or a split prior reads a context."""
        return any(f.takes_context for f in [*self.flows, *self.priors])

    @property
    def scales(self) -> int:
        """L, the number of scales."""
        return len(self.flows)

    @property
    def steps(self) -> torch.nn.ModuleList:
        """Deprecated name of :attr:`flows`, the per-scale flows (``steps`` now means optimiser steps)."""
        warnings.warn("MultiScale.steps is deprecated, use MultiScale.flows (the per-scale flows)",
                      DeprecationWarning, stacklevel=2)
        return self.flows

    def __setattr__(self, name: str, value: object) -> None:
        if name == "steps":  # nn.Module would register a module under the old name, beside flows
            raise AttributeError("MultiScale.steps is read-only and deprecated: the per-scale flows "
                                 "are MultiScale.flows")
        super().__setattr__(name, value)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # State dicts written before the per-scale flows were called ``flows`` (fit checkpoints,
        # files of users) keep them under ``steps.<scale>.*``: the same tensors, renamed here.
        # (load_state_dict works on its own copy of the dict; a key present under both names
        # stays, and is reported as unexpected.)
        old, new = prefix + "steps.", prefix + "flows."
        for key in [k for k in state_dict if k.startswith(old)]:
            if new + key[len(old):] not in state_dict:
                state_dict[new + key[len(old):]] = state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    @property
    def levels(self) -> int:
        """Deprecated spelling of :attr:`scales`."""
        warnings.warn("MultiScale.levels is deprecated, use MultiScale.scales", DeprecationWarning,
                      stacklevel=2)
        return self.scales

    @staticmethod
    def scale_shapes(event_shape: Sequence[int], scales: int) -> list[tuple[int, int, int]]:
        """The shape (4 C_l, H/2^(l+1), W/2^(l+1)) that the flow steps of each scale act on."""
        c, h, w = _image_shape(event_shape, "MultiScale.scale_shapes")
        scales = integer(scales, "scales", "MultiScale.scale_shapes")
        if h % 2**scales or w % 2**scales:
            raise FlowInputError(f"MultiScale: {scales} scales squeeze by 2 each, so height and width must "
                                 f"be divisible by {2**scales}; got shape {(c, h, w)}")
        shapes = []
        for _ in range(scales):
            c, h, w = 4 * c, h // 2, w // 2
            shapes.append((c, h, w))
            c //= 2  # half of the channels goes on to the next scale
        return shapes

    @staticmethod
    def level_shapes(event_shape: Sequence[int], levels: int) -> list[tuple[int, int, int]]:
        """Deprecated spelling of :meth:`scale_shapes`."""
        warnings.warn("MultiScale.level_shapes is deprecated, use MultiScale.scale_shapes",
                      DeprecationWarning, stacklevel=2)
        return MultiScale.scale_shapes(event_shape, levels)

    # -- the contract ------------------------------------------------------------------
    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        logdet = x.new_zeros(x.shape[0])
        factored = []
        h = x
        for scale, flow in enumerate(self.flows):
            h, ld = apply(flow, squeeze(h), context)
            logdet = logdet + ld
            if scale < self.scales - 1:
                if self.split_prior:
                    h, ld = apply(self.priors[scale], h, context)
                    logdet = logdet + ld
                h, eps = h.chunk(2, dim=1)
                factored.append(eps)
        return self._assemble(h, factored), logdet

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        h, factored = self._disassemble(z)
        logdet = z.new_zeros(z.shape[0])
        for scale in reversed(range(self.scales)):
            if scale < self.scales - 1:
                h = torch.cat([h, factored[scale]], dim=1)
                if self.split_prior:
                    h, ld = apply(self.priors[scale], h, context, inverse=True)
                    logdet = logdet + ld
            h, ld = apply(self.flows[scale], h, context, inverse=True)
            logdet = logdet + ld
            h = unsqueeze(h)
        return h, logdet

    # -- the latent's layout -----------------------------------------------------------
    def _assemble(self, top: Tensor, factored: list[Tensor]) -> Tensor:
        # Each scale undoes its own squeeze, coarsest first: the top scale's output alone, every
        # finer one after putting its factored-out half back beside the kept half.
        z = unsqueeze(top)
        for eps in reversed(factored):
            z = unsqueeze(torch.cat([z, eps], dim=1))
        return z

    def _disassemble(self, z: Tensor) -> tuple[Tensor, list[Tensor]]:
        factored = []
        h = z
        for _ in range(self.scales - 1):
            h, eps = squeeze(h).chunk(2, dim=1)
            factored.append(eps)
        return squeeze(h), factored

    def split_latents(self, z: Tensor) -> list[Tensor]:
        """The per-scale latents [eps_0, ..., eps_{L-2}, top] (finest first) of a latent ``z``."""
        self.check_input(z, "split_latents")
        top, factored = self._disassemble(z)
        return [*factored, top]

    def merge_latents(self, latents: Sequence[Tensor]) -> Tensor:
        """The inverse of :meth:`split_latents`: one latent of the input's shape."""
        if len(latents) != self.scales:
            raise FlowInputError(
                f"MultiScale.merge_latents: expected {self.scales} tensors, got {len(latents)}"
            )
        return self._assemble(latents[-1], list(latents[:-1]))

    def extra_repr(self) -> str:
        return f"event_shape={self.event_shape}, scales={self.scales}, split_prior={self.split_prior}"
