"""The one coupling structure (a mask, a conditioner, a transformer) and NICE's scaling.

A binary mask m of the event shape separates the coordinates: where m = 1 they are *kept*
(x_A: they pass unchanged and feed the conditioner), where m = 0 they are *transformed* (x_B),
elementwise, by a :mod:`~flowlib.transformers` transformer whose parameters h the conditioner
computes from the kept part (Dinh et al., 2015; 2017; Papamakarios et al., 2021, section 3.1):

    z_A = x_A,    z_B = tau(x_B; h),  h = NN(x_A),    log|det dz/dx| = sum_B log|tau'(x_B; h)|

The Jacobian is triangular after reordering, so its log-determinant is that sum, and the
inverse x_B = tau^-1(z_B; NN(z_A)) needs the conditioner only in the forward direction.

:class:`Coupling` is that structure, once. How it separates x_A from x_B it reads off the mask:

- *slice*, when the mask is constant over each channel (images) or is a vector mask, and keeps
  some entries along dim 1 and moves the others: x_A and x_B are taken out along dim 1 (narrow
  views for contiguous halves, ``index_select`` otherwise), the conditioner maps |A| channels to
  ``params`` x |B| (Glow's couplings; RealNVP's channel-wise ones);
- *mask* otherwise (checkerboards): the conditioner reads m*x and returns ``params`` x C
  channels, and the mask selects the result, as NICE and RealNVP write it.

Both compute the same family of maps; slicing costs less (no zeros fed to or computed by the
conditioner). :meth:`Coupling.conditioner_sizes` says which sizes a mask needs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from flowlib._checks import FlowInputError, integer, number
from flowlib._checks import event_shape as _event_shape
from flowlib.conditional import context_input
from flowlib.core import Flow, sum_except_batch
from flowlib.masks import channel_mask, checkerboard_mask, half_mask
from flowlib.transformers import Additive, Affine, Transformer, soft_clamp

# The masks live in flowlib.masks; they are re-exported here, beside the structure that reads them.
__all__ = [
    "half_mask",
    "checkerboard_mask",
    "channel_mask",
    "soft_clamp",
    "Coupling",
    "AdditiveCoupling",
    "AffineCoupling",
    "Scaling",
]


# -- the coupling structure ---------------------------------------------------------------
def _mask_buffer(mask: Tensor, who: str) -> Tensor:
    if not isinstance(mask, Tensor):
        raise FlowInputError(f"{who}: expected the mask as a torch.Tensor, got {type(mask).__name__}")
    if mask.dim() < 1 or mask.numel() == 0:
        raise FlowInputError(f"{who}: expected a mask of the event shape, e.g. (dim,) or (C, H, W), "
                             f"got shape {tuple(mask.shape)}")
    mask = mask.detach().to(device="cpu", dtype=torch.get_default_dtype())
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise FlowInputError(f"{who}: expected a binary mask of 0s and 1s, got other values")
    return mask.clone()


def _slices(mask: Tensor) -> tuple[Tensor, Tensor] | None:
    """(kept, moved) indices along dim 1 when the mask can be sliced, else None.

    It can when it is constant over each entry of dim 1 (a channel of an image, a coordinate of
    a vector) and keeps some entries and moves the others: a checkerboard varies inside a
    channel, an all-ones or all-zeros mask leaves nothing to condition on or to transform.
    """
    flat = mask.reshape(mask.shape[0], -1)
    if not bool((flat == flat[:, :1]).all()):
        return None
    keep = flat[:, 0] > 0.5
    kept, moved = torch.nonzero(keep).flatten(), torch.nonzero(~keep).flatten()
    return (kept, moved) if kept.numel() and moved.numel() else None


def _block(index: Tensor) -> tuple[int, int] | None:
    """(start, length) when the indices are one contiguous run, else None."""
    start, length = int(index[0]), int(index.numel())
    return (start, length) if bool((index == torch.arange(start, start + length)).all()) else None


def _params(transformer: Transformer | type[Transformer], who: str) -> int:
    ok = isinstance(transformer, Transformer) or (
        isinstance(transformer, type) and issubclass(transformer, Transformer))
    if not ok:
        raise FlowInputError(f"{who}: expected a flowlib.transformers.Transformer (e.g. Affine()), "
                             f"got {type(transformer).__name__}")
    return int(transformer.params)


class Coupling(Flow):
    """One coupling layer: a mask (the structure), a conditioner and an elementwise transformer.

        h = conditioner(x_A),   z_A = x_A,   z_B = tau(x_B; h),   log|det dz/dx| = sum_B log|tau'|

    ``mask`` (1 = kept, 0 = transformed) has the event shape, (dim,) or (C, H, W); the layer
    slices along dim 1 or multiplies by the mask, whichever the mask allows (see the module
    docstring), and :meth:`conditioner_sizes` gives the conditioner's (input, output) sizes
    along dim 1 for it. ``transformer`` is a :class:`~flowlib.transformers.Transformer`.
    Zero-initialise the conditioner's last layer (every flowlib network does) and the layer
    starts as the identity.

    State dict: ``mask`` and ``conditioner.*`` (the transformers hold no weights).

    ``context_features`` k > 0 makes the layer conditional (:mod:`flowlib.conditional`): it is
    called ``layer(x, context)`` and its conditioner reads ``cat([x_A, context_map(c, x_A)])``,
    k more entries along dim 1 (``conditioner_sizes(mask, transformer, k)``).

    >>> from flowlib.nets import MLP
    >>> from flowlib.transformers import Affine
    >>> mask = half_mask(4, 0)                       # keeps x_0, x_1: the layer slices
    >>> sizes = Coupling.conditioner_sizes(mask, Affine)
    >>> sizes
    (2, 4)
    >>> layer = Coupling(mask, MLP(*sizes), Affine(clamp=2.0))
    >>> x = torch.randn(3, 4)
    >>> z, logdet = layer(x)                       # zero last layer: the identity
    >>> layer.sliced, torch.equal(z, x), logdet.tolist()
    (True, True, [0.0, 0.0, 0.0])
    """

    def __init__(self, mask: Tensor, conditioner: nn.Module, transformer: Transformer,
                 context_features: int = 0) -> None:
        who = type(self).__name__
        context_features = integer(context_features, "context_features", who, minimum=0)
        mask = _mask_buffer(mask, who)
        params = _params(transformer, who)
        if isinstance(transformer, type):
            raise FlowInputError(f"{who}: expected a transformer instance, e.g. Affine(), got the class "
                                 f"{transformer.__name__}")
        if not callable(conditioner):
            raise FlowInputError(f"{who}: expected a callable conditioner (an nn.Module), got "
                                 f"{type(conditioner).__name__}")
        super().__init__(tuple(mask.shape))
        self.register_buffer("mask", mask)
        self.conditioner = conditioner
        self.transformer = transformer
        self.context_features = context_features
        self.takes_context = context_features > 0
        # What follows is derived from the mask: not part of the state dict.
        slices = _slices(mask)
        self.sliced = slices is not None
        if slices is not None:
            kept, moved = slices
            self.kept_size, self.moved_size = int(kept.numel()), int(moved.numel())
            # Contiguous halves (channel masks, d = 2) are narrowed views: no gather, no copy.
            self._kept_block, self._moved_block = _block(kept), _block(moved)
            self._contiguous = self._kept_block is not None and self._moved_block is not None
            self.register_buffer("kept_index", kept, persistent=False)
            self.register_buffer("moved_index", moved, persistent=False)
            self.register_buffer("join_index", torch.argsort(torch.cat([kept, moved])), persistent=False)
        else:
            self.kept_size, self.moved_size = int(mask.sum()), int(mask.numel() - mask.sum())
            self.register_buffer("keep", mask.bool(), persistent=False)
            # h is zeroed on the kept entries (as NICE and RealNVP write it): the transformer then
            # does nothing there whose result is thrown away, so it cannot overflow there either.
            self.register_buffer("free_h", (1 - mask).repeat(params, *[1] * (mask.dim() - 1)),
                                 persistent=False)

    @staticmethod
    def conditioner_sizes(mask: Tensor, transformer: Transformer | type[Transformer],
                          context_features: int = 0) -> tuple[int, int]:
        """(in, out): the conditioner's sizes along dim 1 for a coupling with this mask.

        (|A|, params |B|) when the coupling slices, (C, params C) when it multiplies by the mask
        (C = ``mask.shape[0]``: channels of an image, coordinates of a vector); a conditional
        layer's conditioner reads ``context_features`` more.

        >>> from flowlib.transformers import Additive, Affine
        >>> Coupling.conditioner_sizes(channel_mask(5, 4, 4, 0), Affine)
        (2, 6)
        >>> Coupling.conditioner_sizes(checkerboard_mask(1, 4, 4, 0), Additive())
        (1, 1)
        """
        mask = _mask_buffer(mask, "Coupling.conditioner_sizes")
        params = _params(transformer, "Coupling.conditioner_sizes")
        k = integer(context_features, "context_features", "Coupling.conditioner_sizes", minimum=0)
        slices = _slices(mask)
        if slices is None:
            return int(mask.shape[0]) + k, params * int(mask.shape[0])
        return int(slices[0].numel()) + k, params * int(slices[1].numel())

    # -- slicing --------------------------------------------------------------------------
    def slice(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(x_A, x_B): the kept and the transformed entries along dim 1 (sliced layers only)."""
        if self._contiguous:
            (ka, kn), (ma, mn) = self._kept_block, self._moved_block
            return x.narrow(1, ka, kn), x.narrow(1, ma, mn)
        return x.index_select(1, self.kept_index), x.index_select(1, self.moved_index)

    def join(self, kept: Tensor, moved: Tensor) -> Tensor:
        """The inverse of :meth:`slice`."""
        if self._contiguous:
            return torch.cat([kept, moved] if self._kept_block[0] == 0 else [moved, kept], dim=1)
        return torch.cat([kept, moved], dim=1).index_select(1, self.join_index)

    # -- the contract ---------------------------------------------------------------------
    def _h(self, kept: Tensor, n: int, context: Tensor | None) -> Tensor:
        """The conditioner's output, checked: (batch, params * n, *rest)."""
        if self.takes_context:
            c = context_input(context, kept, self.context_features, type(self).__name__)
            h = self.conditioner(torch.cat([kept, c], dim=1))
        else:
            h = self.conditioner(kept)
        p = self.transformer.params
        want = (kept.shape[0], p * n, *kept.shape[2:])
        if not isinstance(h, Tensor) or tuple(h.shape) != want:
            got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
            more = f" (and {self.context_features} of context)" if self.takes_context else ""
            how = (f"slices: it reads the {self.kept_size} kept entries along dim 1{more} and must return "
                   f"{p} x {n} (for the {n} transformed ones)" if self.sliced else
                   f"multiplies by its mask: it reads all {n} entries along dim 1 (m*x){more} and must "
                   f"return {p} x {n}")
            raise FlowInputError(
                f"{type(self).__name__}: the layer {how}, {type(self.transformer).__name__} taking "
                f"{p} per coordinate; expected the conditioner's output of shape {want}, got {got} "
                f"(Coupling.conditioner_sizes(mask, transformer) gives the sizes)")
        return h

    def _couple(self, x: Tensor, tau, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if self.sliced:
            kept, moved = self.slice(x)
            y, log_derivative = tau(moved, self._h(kept, self.moved_size, context))
            return self.join(kept, y), sum_except_batch(log_derivative)
        h = self._h(self.mask * x, x.shape[1], context) * self.free_h
        y, log_derivative = tau(x, h)
        return torch.where(self.keep, x, y), sum_except_batch(log_derivative.masked_fill(self.keep, 0.0))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        return self._couple(x, self.transformer.forward, context)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        return self._couple(z, self.transformer.inverse, context)

    def recompute_from_output(self, z: Tensor) -> tuple[tuple[Tensor, Tensor], Tensor, Tensor]:
        """For memory-saving backprop: the input from the output and the forward again, with ONE
        conditioner call (sliced layers without context only).

        The kept half is the same on both sides, so the conditioner's output h(x_A) = h(z_A)
        serves to undo the moved half, x_B = tau^{-1}(z_B; h), and to redo the forward with
        gradients, z_B = tau(x_B; h): the generic recomputation (inverse, then forward) would
        evaluate the conditioner twice. Returns the leaves (x_A, x_B), which require grad,
        the recomputed output join(x_A, tau(x_B; h)) and its log-determinant, both attached to
        the graph of h; :meth:`join` assembles the leaves' gradients into the input's.
        """
        if not self.sliced or self.takes_context:
            raise FlowInputError(f"{type(self).__name__}.recompute_from_output: only for sliced layers "
                                 f"without context")
        self.check_input(z, "recompute_from_output")
        kept, moved_z = self.slice(z.detach())
        kept = kept.contiguous().requires_grad_(True)
        h = self._h(kept, self.moved_size, None)
        with torch.no_grad():
            moved_x, _ = self.transformer.inverse(moved_z, h)
        moved_x = moved_x.requires_grad_(True)
        y, log_derivative = self.transformer.forward(moved_x, h)
        return (kept, moved_x), self.join(kept, y), sum_except_batch(log_derivative)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        key = prefix + "mask"
        if key not in state_dict:
            # Sliced couplings saved before the mask was stored (flowlib < 0.2): the mask they
            # were built with is this one. (load_state_dict works on its own copy of the dict.)
            state_dict[key] = self.mask
        elif tuple(state_dict[key].shape) == tuple(self.mask.shape) and not torch.equal(
                state_dict[key].to(self.mask), self.mask):
            error_msgs.append(f"{prefix}mask: the stored mask differs from the one this "
                              f"{type(self).__name__} was built with; the mask fixes the layer's "
                              f"structure (and its conditioner's sizes): build it with the stored mask")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        how = "sliced" if self.sliced else "masked"
        context = f", context_features={self.context_features}" if self.takes_context else ""
        return f"{super().extra_repr()}, {how}: kept={self.kept_size}, transformed={self.moved_size}{context}"


class AdditiveCoupling(Coupling):
    """NICE's additive coupling (Dinh et al., 2015): ``Coupling(mask, conditioner, Additive())``.

        z_A = x_A,   z_B = x_B + t(x_A),   log|det dz/dx| = 0 (volume preserving)

    The conditioner returns the shift t: |B| entries along dim 1 when the layer slices, C when
    it multiplies by the mask (see :meth:`Coupling.conditioner_sizes`).

    >>> from flowlib.nets import MLP
    >>> mask = half_mask(4, 0)
    >>> layer = AdditiveCoupling(mask, MLP(*Coupling.conditioner_sizes(mask, Additive())))
    >>> _ = [p.data.add_(0.1 * torch.randn_like(p)) for p in layer.parameters()]
    >>> x = torch.randn(3, 4)
    >>> z, logdet = layer(x)
    >>> torch.equal(z[:, :2], x[:, :2]), logdet.tolist()   # x_A passes unchanged; volume kept
    (True, [0.0, 0.0, 0.0])
    """

    def __init__(self, mask: Tensor, conditioner: nn.Module, context_features: int = 0) -> None:
        super().__init__(mask, conditioner, Additive(), context_features)


class AffineCoupling(Coupling):
    """RealNVP's affine coupling (Dinh et al., 2017): ``Coupling(mask, conditioner, Affine(clamp))``.

        (s_raw, t) = conditioner(x_A).chunk(2, dim=1),   s = soft_clamp(s_raw, clamp)
        z_A = x_A,   z_B = x_B exp(s) + t,               log|det dz/dx| = sum s

    The conditioner returns log-scales then shifts: 2|B| entries along dim 1 when the layer
    slices, 2C when it multiplies by the mask. ``clamp`` bounds |s| < clamp (see
    :func:`~flowlib.transformers.soft_clamp`); ``None`` turns the clamp off.

    >>> from flowlib.nets import MLP
    >>> mask = half_mask(4, 1)
    >>> layer = AffineCoupling(mask, MLP(*Coupling.conditioner_sizes(mask, Affine)), clamp=2.0)
    >>> _ = [p.data.add_(0.1 * torch.randn_like(p)) for p in layer.parameters()]
    >>> x = torch.randn(3, 4)
    >>> z, logdet = layer(x)
    >>> x_back, logdet_back = layer.inverse(z)
    >>> torch.allclose(x_back, x, atol=1e-5), torch.allclose(logdet_back, -logdet, atol=1e-5)
    (True, True)
    """

    def __init__(self, mask: Tensor, conditioner: nn.Module, clamp: float | None = 2.0,
                 context_features: int = 0) -> None:
        if clamp is not None:
            clamp = number(clamp, "clamp", "AffineCoupling", minimum=0.0, strict=True)
        super().__init__(mask, conditioner, Affine(clamp), context_features)

    @property
    def clamp(self) -> float | None:
        """The soft clamp's bound c on the log-scales (None: no clamp)."""
        return self.transformer.clamp


# -- NICE's last layer --------------------------------------------------------------------
class Scaling(Flow):
    """NICE's diagonal scaling (Dinh et al., 2015): z = x * exp(s), log|det dz/dx| = sum s.

    Additive couplings preserve volume; this last layer lets the model change it, one
    learned scale per dimension (``s`` has the event shape; it starts at 0, the identity).

    >>> layer = Scaling(2)
    >>> _ = layer.log_scale.data.copy_(torch.tensor([0.0, 1.0]))
    >>> z, logdet = layer(torch.ones(1, 2))
    >>> [round(v, 4) for v in z[0].tolist()], logdet.tolist()
    ([1.0, 2.7183], [1.0])
    """

    def __init__(self, event_shape: int | Sequence[int]) -> None:
        shape = _event_shape(event_shape, "Scaling")
        super().__init__(shape)
        self.log_scale = nn.Parameter(torch.zeros(shape))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(x, "forward")
        return x * torch.exp(self.log_scale), self.log_scale.sum().expand(x.shape[0])

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        self.check_input(z, "inverse")
        return z * torch.exp(-self.log_scale), (-self.log_scale.sum()).expand(z.shape[0])
