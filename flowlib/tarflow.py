"""A transformer autoregressive flow on image patches, in the spirit of TarFlow (Zhai et al., 2024).

An image of shape (C, H, W) is cut into T = (H/p)(W/p) patches of p x p pixels, a sequence of
T tokens of D = C p^2 numbers each. One block is the autoregressive structure over that
sequence (see :mod:`flowlib.autoregressive`) with a causal transformer as its conditioner:

    z_t = tau(x_t; h_t(x_1, ..., x_{t-1})),       log|det dz/dx| = sum_t sum_i log|tau'(x_{t,i})|

The conditioner reads the sequence shifted by one (a zero token first), through causal
self-attention, so that h_t sees only the tokens before t; the Jacobian is block triangular and
the density is ONE pass of the transformer. Sampling inverts token by token: T passes. The
first token of a block is moved by h_1, computed from the zero token alone (a learned shift and
scale). Blocks alternate the direction of the sequence (the second reads the patches from the
last to the first), so that every token is conditioned on every other one in some block.

Zhai et al. (2024) showed that such flows, scaled up (and trained with noise augmentation and
guidance), reach image likelihoods that are state of the art among flows again; this module
keeps the structure at CPU sizes: pre-LayerNorm attention blocks, learned positional
embeddings, an affine transformer with a soft clamp, a zero-initialised output (each block
starts as the identity).

>>> block = TransformerAutoregressive((1, 4, 4), patch=2, width=16, layers=1, heads=2)
>>> x = torch.randn(3, 1, 4, 4)
>>> z, logdet = block(x)
>>> torch.equal(z, x), logdet.tolist()
(True, [0.0, 0.0, 0.0])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from flowlib._checks import FlowInputError, event_shape, flag, integer
from flowlib.conditional import ContextPrior, conditioning, context_input
from flowlib.core import Compose, Flow, sum_except_batch
from flowlib.dequantize import LogitPreprocess
from flowlib.distributions import StandardNormal
from flowlib.image_models import ImageFlowModel
from flowlib.permutations import Permutation
from flowlib.transformers import Affine, Transformer

__all__ = ["patchify", "unpatchify", "CausalTransformer", "TransformerAutoregressive", "tarflow_image"]


def patchify(x: Tensor, patch: int) -> Tensor:
    """(n, C, H, W) -> (n, T, C p^2): the p x p patches in raster order, each flattened."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 1, 3, 5)
    return x.reshape(n, (h // patch) * (w // patch), c * patch * patch)


def unpatchify(tokens: Tensor, shape: Sequence[int], patch: int) -> Tensor:
    """The inverse of :func:`patchify` for images of ``shape`` (C, H, W)."""
    c, h, w = shape
    n = tokens.shape[0]
    x = tokens.reshape(n, h // patch, w // patch, c, patch, patch).permute(0, 3, 1, 4, 2, 5)
    return x.reshape(n, c, h, w)


class _Block(nn.Module):
    """Pre-LayerNorm causal self-attention, then a two-layer MLP, both residual."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, h: Tensor) -> Tensor:
        n, t, width = h.shape
        q, k, v = self.qkv(self.norm1(h)).reshape(n, t, 3, self.heads, width // self.heads).unbind(2)
        attended = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                  is_causal=True)
        h = h + self.out(attended.transpose(1, 2).reshape(n, t, width))
        return h + self.mlp(self.norm2(h))


class CausalTransformer(nn.Module):
    """(n, T, D) tokens -> (n, T, out): output t depends on the input tokens before t only.

    The input is shifted right by one (a zero token first), so causal attention over the
    shifted sequence lets position t see tokens 1..t-1 of the original one. A context vector c
    (``context_features`` > 0) is embedded and added to every position: every output sees it.
    """

    def __init__(self, tokens: int, features: int, out_features: int, width: int = 64, layers: int = 2,
                 heads: int = 4, context_features: int = 0) -> None:
        super().__init__()
        if width % heads:
            raise FlowInputError(f"CausalTransformer: width {width} must be a multiple of heads {heads}")
        self.embed = nn.Linear(features, width)
        self.context = nn.Linear(context_features, width) if context_features else None
        self.position = nn.Parameter(torch.zeros(1, tokens, width))
        nn.init.normal_(self.position, std=0.02)
        self.blocks = nn.ModuleList(_Block(width, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, out_features)
        nn.init.zeros_(self.head.weight)  # the flow block starts as the identity
        nn.init.zeros_(self.head.bias)

    def forward(self, tokens: Tensor, context: Tensor | None = None) -> Tensor:
        shifted = F.pad(tokens, (0, 0, 1, 0))[:, :-1]
        h = self.embed(shifted) + self.position
        if self.context is not None:
            h = h + self.context(context.to(h.dtype)).unsqueeze(1)
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


class TransformerAutoregressive(Flow):
    """One TarFlow block on (C, H, W) images: patches, a causal transformer, an elementwise transformer.

    ``patch`` p (must divide H and W), ``width`` / ``layers`` / ``heads`` of the causal
    transformer, ``reverse`` reads the patches from the last to the first, ``transformer`` the
    elementwise map (default ``Affine(clamp=2.0)``). ``forward`` (density) is one pass,
    ``inverse`` (sampling) T passes. ``context_features`` k > 0: conditioned on a context vector
    (n, k), added to every position of the transformer (:mod:`flowlib.conditional`).

    >>> block = TransformerAutoregressive((1, 4, 4), patch=2, width=16, layers=1, heads=2)
    >>> _ = [p.data.add_(0.05 * torch.randn_like(p)) for p in block.parameters()]
    >>> x = torch.randn(3, 1, 4, 4)
    >>> z, logdet = block(x)                   # density: one pass over the 4 patches
    >>> x_back, _ = block.inverse(z)           # sampling: one pass per patch
    >>> torch.allclose(x_back, x, atol=1e-4)
    True
    """

    def __init__(self, shape: Sequence[int], patch: int = 2, width: int = 64, layers: int = 2, heads: int = 4,
                 reverse: bool = False, transformer: Transformer | None = None,
                 context_features: int = 0) -> None:
        who = "TransformerAutoregressive"
        shape = event_shape(shape, who)
        if len(shape) != 3:
            raise FlowInputError(f"{who}: expected an image shape (C, H, W), got {shape}")
        super().__init__(shape)
        c, h, w = shape
        self.patch = integer(patch, "patch", who)
        if h % self.patch or w % self.patch:
            raise FlowInputError(f"{who}: patch {self.patch} must divide the image's height {h} "
                                 f"and width {w}")
        self.reverse = flag(reverse, "reverse", who)
        self.transformer = Affine(clamp=2.0) if transformer is None else transformer
        if not isinstance(self.transformer, Transformer):
            raise FlowInputError(f"{who}: expected a flowlib.transformers.Transformer, got "
                                 f"{type(self.transformer).__name__}")
        self.tokens, self.features = (h // self.patch) * (w // self.patch), c * self.patch ** 2
        out = self.transformer.params * self.features
        self.context_features = integer(context_features, "context_features", who, minimum=0)
        self.takes_context = self.context_features > 0
        self.conditioner = CausalTransformer(self.tokens, self.features, out, integer(width, "width", who),
                                             integer(layers, "layers", who), integer(heads, "heads", who),
                                             self.context_features)

    def _sequence(self, x: Tensor) -> Tensor:
        tokens = patchify(x, self.patch)
        return tokens.flip(1) if self.reverse else tokens

    def _image(self, tokens: Tensor) -> Tensor:
        return unpatchify(tokens.flip(1) if self.reverse else tokens, self.event_shape, self.patch)

    def _params(self, tokens: Tensor, context: Tensor | None) -> Tensor:
        # The transformer's layout: coordinates (the D numbers of a token) along dim 1, then the
        # sequence: h of shape (n, params * D, T).
        return self.conditioner(tokens, context).transpose(1, 2)

    def _context(self, context: Tensor | None, x: Tensor) -> Tensor | None:
        if not self.takes_context:
            return None
        # Beside the flattened batch, so that the context must be vectors (batch, k): every token reads it.
        return context_input(context, x.flatten(1), self.context_features, type(self).__name__)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        tokens, c = self._sequence(x), self._context(context, x)
        z, log_derivative = self.transformer(tokens.transpose(1, 2), self._params(tokens, c))
        return self._image(z.transpose(1, 2)), sum_except_batch(log_derivative)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        c = self._context(context, z)
        target = self._sequence(z).transpose(1, 2)
        x = torch.zeros_like(target)
        # After pass t the first t tokens are exact, so are the parameters of token t + 1; the
        # last pass's parameters are all exact, and so is its log-derivative.
        for _ in range(self.tokens):
            x, log_derivative = self.transformer.inverse(target, self._params(x.transpose(1, 2), c))
        return self._image(x.transpose(1, 2)), sum_except_batch(log_derivative)

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, patch={self.patch}, tokens={self.tokens}, "
                f"features={self.features}, reverse={self.reverse}")


def tarflow_image(shape: Sequence[int], patch: int = 2, blocks: int = 4, width: int = 64, layers: int = 2,
                  heads: int = 4, grey_levels: int = 256, alpha: float = 0.05,
                  dequantization: str = "uniform", classes: int | None = None,
                  context_shape: Sequence[int] | None = None) -> ImageFlowModel:
    """A TarFlow-style image model: logit preprocessing, then ``blocks`` transformer blocks of
    alternating direction (for colour images, the channels reversed after every second block),
    and a standard normal base; ``log_prob`` takes discrete images, as every
    :class:`~flowlib.image_models.ImageFlowModel`. ``classes`` K (labels) or ``context_shape``
    (k,) (a vector): conditional, every block reads the context and a learned prior
    N(mu(c), sigma(c)^2) ends the flow (Zhai et al. condition TarFlow on the class the same way,
    through the transformer's input).

    >>> model = tarflow_image((1, 8, 8), patch=2, blocks=2, width=16, layers=1, heads=2, grey_levels=17)
    >>> model.log_prob(torch.randint(0, 17, (2, 1, 8, 8))).shape
    torch.Size([2])
    """
    who = "tarflow_image"
    shape = event_shape(shape, who)
    if len(shape) != 3:
        raise FlowInputError(f"{who}: expected an image shape (C, H, W), got {shape}")
    encoder, raw, encoded = conditioning(classes, context_shape, who)
    if encoded is not None and len(encoded) != 1:
        raise FlowInputError(f"{who}: the transformer flow takes class labels or vector contexts (k,), got "
                             f"context_shape={encoded}")
    k = encoded[0] if encoded else 0
    flows: list[Flow] = [LogitPreprocess(alpha)]
    for b in range(integer(blocks, "blocks", who)):
        flows.append(TransformerAutoregressive(shape, patch, width, layers, heads, reverse=b % 2 == 1,
                                               context_features=k))
        if b % 2 == 1 and shape[0] > 1:
            flows.append(Permutation(torch.arange(shape[0] - 1, -1, -1)))  # channels reversed
    if k:
        flows.append(ContextPrior(shape, k))
    return ImageFlowModel(Compose(flows), StandardNormal(shape), grey_levels=grey_levels,
                          dequantization=dequantization, context_encoder=encoder, context_shape=raw)
