"""Memory-saving backprop for deep flows: recompute activations from the inverse.

Plain autograd keeps every layer's input (and many intermediate values inside it) until the
backward pass, so the memory of a training step grows linearly with depth. A flow needs none
of that: each layer is a bijection, so its input can be recomputed from its output,

    x_{k-1} = f_k^{-1}(x_k),

which is the observation behind the Reversible Residual Network (Gomez et al., 2017).
:class:`MemorySavingCompose` runs the stack with gradients switched off, keeps only the final
output z = x_K, and in the backward pass walks the layers from last to first: invert one
layer to get its input, run that layer's forward again with gradients on, and backpropagate
through it alone. Saved activations are then O(1) in the depth instead of O(depth), plus one
layer's graph at a time during the backward; the price is one extra inverse and one extra
forward per layer. A sliced coupling without context pays less: its kept half is the same on
both sides, so one call of its conditioner undoes the layer and redoes it with gradients
(:meth:`~flowlib.coupling.Coupling.recompute_from_output`), one conditioner call instead of two.

Conditions (the user's responsibility; documented rather than guessed at):

- every layer must be exactly invertible in floating point to good accuracy. Round-off in
  each inverse adds up with depth, so the recomputed inputs - and hence the gradients -
  drift from plain autograd's as the stack gets deeper or the maps get steeper. Use
  :meth:`MemorySavingCompose.reconstruction_error` to measure it on your data; recomputation
  is done in the input's dtype (float64 inputs give float64 recomputation).
- the forward pass must be a deterministic function of the input and parameters: no
  dropout, no random noise, no batch statistics that update state. Dropout and BatchNorm in
  training mode are refused with :class:`~flowlib.core.FlowInputError`.
- layers with data-dependent initialisation (ActNorm) must be initialised before anything
  is recomputed. In the forward direction this happens by itself: the first gradient-free
  pass initialises them exactly as plain training would. Training through ``inverse``
  refuses uninitialised ones (run one forward pass on data first).
- a layer that is itself a composition is recomputed as one block (its own intermediate
  values exist only while its backward runs); flatten it for the largest saving.
- the backward pass is differentiable once (no gradients of gradients).

Outside training (``eval()``) or when no gradient is recorded (``torch.no_grad()``, or
nothing requires grad) the stack simply runs as a plain :class:`~flowlib.core.Compose`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from flowlib.core import Compose, Flow, FlowInputError
from flowlib.coupling import Coupling

__all__ = ["MemorySavingCompose", "memory_saving"]

# One step of the walk: a layer applied in the direction of travel, or undone.
_Step = Callable[[Tensor], tuple[Tensor, Tensor]]


class _Walk:
    """What the autograd function needs to know besides tensors (kept off the tensor inputs)."""

    def __init__(self, do: list[_Step], undo: list[_Step], params: list[list[int]],
                 all_params: list[nn.Parameter], redo: list | None = None) -> None:
        self.do = do          # step k maps x_{k-1} -> (x_k, logdet_k)
        self.undo = undo      # step k maps x_k -> x_{k-1} (its logdet is not needed)
        self.params = params  # indices into all_params of the parameters step k uses
        self.all_params = all_params
        # Step k's layer when it can undo and redo itself with one conditioner call (a sliced
        # coupling: Coupling.recompute_from_output), else None (undo, then do).
        self.redo = redo if redo is not None else [None] * len(do)


def _autocast_state(device_type: str) -> dict:
    """Keyword arguments of ``torch.autocast`` that reproduce the current autocast state."""
    try:  # torch >= 2.4 takes the device type
        enabled = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # older torch: separate CPU and CUDA functions
        if device_type == "cpu":
            enabled, dtype = torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()
        else:
            enabled, dtype = torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return {"device_type": device_type, "enabled": enabled, "dtype": dtype}


def _accumulate(grads: list[Tensor | None], indices: list[int], got: Sequence[Tensor | None]) -> None:
    """Add one layer's parameter gradients into the stack's (a module shared by layers sums)."""
    for i, g in zip(indices, got, strict=True):
        if g is not None:
            grads[i] = g if grads[i] is None else grads[i] + g


class _RecomputeFromInverse(torch.autograd.Function):
    """z, logdet of a stack, saving only z; the backward recomputes inputs from outputs.

    The parameters are inputs of the function (so autograd asks for their gradients) but are
    not saved: the layers read them from their modules when the backward re-runs them.
    """

    @staticmethod
    def forward(ctx, x: Tensor, walk: _Walk, *params: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        with torch.no_grad():
            logdet = x.new_zeros(x.shape[0])
            t = x
            for step in walk.do:
                t, ld = step(t)
                logdet = logdet + ld
        ctx.walk = walk
        ctx.x_dtype = x.dtype
        # The forward's autocast state, re-entered in the backward: the recomputed graph is
        # then the one plain autograd would have built, and a coupling's conditioner gives
        # bit-identical (s, t) from its unchanged half, which keeps the inverse exact.
        ctx.autocast = _autocast_state(x.device.type)
        ctx.save_for_backward(t)
        return t, logdet

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_z: Tensor, grad_logdet: Tensor) -> tuple[Tensor | None, ...]:
        walk: _Walk = ctx.walk
        (z,) = ctx.saved_tensors
        grads: list[Tensor | None] = [None] * len(walk.all_params)
        t = z.detach()
        for k in range(len(walk.do) - 1, -1, -1):
            mine = [walk.all_params[i] for i in walk.params[k]]
            layer = walk.redo[k]
            if layer is not None and not ctx.autocast["enabled"] and t.dtype == ctx.x_dtype:
                # One conditioner call undoes the coupling and redoes it with gradients.
                with torch.enable_grad():
                    leaves, out, ld = layer.recompute_from_output(t)
                pairs = [(o, g) for o, g in ((out, grad_z), (ld, grad_logdet)) if o.requires_grad]
                got = torch.autograd.grad([o for o, _ in pairs], [*leaves, *mine], [g for _, g in pairs],
                                          allow_unused=True)
                parts = [g if g is not None else torch.zeros_like(leaf) for g, leaf in zip(got[:2], leaves,
                                                                                          strict=True)]
                grad_z = layer.join(*parts)
                _accumulate(grads, walk.params[k], got[2:])
                t = layer.join(*(leaf.detach() for leaf in leaves))
                continue
            # Undo the layer; the result is cast to the input's dtype, since round-off in the
            # recomputed inputs is all that separates these gradients from plain autograd's.
            with torch.no_grad(), torch.autocast(**ctx.autocast):
                x_prev, _ = walk.undo[k](t)
            x_prev = x_prev.to(ctx.x_dtype).detach().requires_grad_(True)
            with torch.enable_grad(), torch.autocast(**ctx.autocast):
                out, ld = walk.do[k](x_prev)
            # The logdet of the whole stack is the sum of the layers', so every layer gets the
            # same incoming gradient for its own logdet.
            pairs = [(o, g) for o, g in ((out, grad_z), (ld, grad_logdet)) if o.requires_grad]
            got = torch.autograd.grad(
                [o for o, _ in pairs], [x_prev, *mine], [g for _, g in pairs], allow_unused=True,
            )
            grad_z = got[0] if got[0] is not None else torch.zeros_like(x_prev)
            _accumulate(grads, walk.params[k], got[1:])
            t = x_prev.detach()
        grad_x = grad_z.to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return (grad_x, None, *grads)


def _one_call(f: Flow) -> bool:
    """Whether ``f`` is a sliced coupling without context whose forward and inverse are Coupling's
    own (a subclass that overrides them would be bypassed by recompute_from_output)."""
    return (isinstance(f, Coupling) and f.sliced and not f.takes_context
            and type(f).forward is Coupling.forward and type(f).inverse is Coupling.inverse)


class MemorySavingCompose(Compose):
    """f = f_K o ... o f_1 trained with memory O(1) in K: activations recomputed from f_k^{-1}.

    The same map, logdet and parameters as :class:`~flowlib.core.Compose`
    (log|det df/dx| = sum_k log|det df_k/dx_{k-1}|); only what autograd keeps differs.
    During training the forward keeps z alone and the backward recomputes
    x_{k-1} = f_k^{-1}(x_k) layer by layer (Gomez et al., 2017), giving the gradients of
    z and logdet with respect to x and every parameter. ``inverse`` (latent -> data, as used
    by sampling-based training) works the same way with the roles of the directions swapped.
    See the module docstring for the conditions: exact invertibility (errors grow with
    depth), no randomness, ActNorm initialised beforehand.

    Set ``memory_saving = False`` on an instance to fall back to plain autograd, and
    ``one_call_couplings = False`` to recompute sliced couplings the generic way too (inverse,
    then forward: two conditioner calls; for comparisons).

    >>> from flowlib.models import realnvp_vector
    >>> plain = realnvp_vector(2, couplings=4, hidden=8).flow
    >>> saving = memory_saving(plain)          # shares the layers and parameters
    >>> x = torch.randn(6, 2)
    >>> z1, ld1 = plain(x)
    >>> z2, ld2 = saving(x)
    >>> torch.allclose(z1, z2), torch.allclose(ld1, ld2)
    (True, True)
    """

    def __init__(self, *flows: Flow | Iterable[Flow]) -> None:
        super().__init__(*flows)
        self.memory_saving = True
        self.one_call_couplings = True

    # -- when to recompute -------------------------------------------------------------
    def _recompute(self, t: Tensor, inverse: bool = False) -> bool:
        """Recompute only while training with gradients recorded; otherwise run plainly."""
        if not (self.memory_saving and self.training and torch.is_grad_enabled()):
            return False
        if not (t.requires_grad or any(p.requires_grad for p in self.parameters())):
            return False
        self._refuse_unsafe(inverse)
        return True

    def _refuse_unsafe(self, inverse: bool) -> None:
        # Metadata only (module types and Python flags): never reads tensor values.
        for name, m in self.named_modules():
            if not m.training:
                continue
            if inverse and getattr(m, "is_initialized", True) is False:
                # The backward of the inverse direction re-runs each layer's forward to undo
                # it, and an uninitialised ActNorm would initialise itself there, on latent
                # values and in the middle of backprop.
                raise FlowInputError(
                    f"MemorySavingCompose.inverse: {name} ({type(m).__name__}) has data-dependent "
                    "initialisation and is not initialised yet; run one forward pass on data first"
                )
            if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
                raise FlowInputError(
                    f"MemorySavingCompose: {name} is a {type(m).__name__} in training mode; "
                    "recomputing activations needs a deterministic forward (no dropout)"
                )
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
                raise FlowInputError(
                    f"MemorySavingCompose: {name} is a {type(m).__name__} in training mode; its "
                    "running statistics would be updated again by every recomputation "
                    "(call .eval() on it or use a normalisation without running statistics)"
                )

    def _walk(self, layers: Sequence[Flow], inverse: bool) -> tuple[_Walk, list[nn.Parameter]]:
        all_params = [p for p in self.parameters() if p.requires_grad]
        index = {id(p): i for i, p in enumerate(all_params)}
        params = []
        for f in layers:
            # parameters() de-duplicates inside one layer; a module shared between layers
            # appears under each of them and its gradients are summed.
            params.append([index[id(p)] for p in f.parameters() if id(p) in index])
        redo = None  # the generic recomputation for every layer
        if inverse:
            do = [f.inverse for f in layers]
            undo = [f.forward for f in layers]
        else:
            do = [f.forward for f in layers]
            undo = [f.inverse for f in layers]
            if self.one_call_couplings:
                redo = [f if _one_call(f) else None for f in layers]
        return _Walk(do, undo, params, all_params, redo), all_params

    # -- the contract ------------------------------------------------------------------
    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self._recompute(x):
            return super().forward(x)
        walk, params = self._walk(list(self.flows), inverse=False)
        return _RecomputeFromInverse.apply(x, walk, *params)

    def inverse(self, z: Tensor) -> tuple[Tensor, Tensor]:
        if not self._recompute(z, inverse=True):
            return super().inverse(z)
        walk, params = self._walk(list(self.flows)[::-1], inverse=True)
        return _RecomputeFromInverse.apply(z, walk, *params)

    # -- diagnostics -------------------------------------------------------------------
    @torch.no_grad()
    def reconstruction_error(self, x: Tensor) -> list[float]:
        """max |x_k - recomputed x_k| for k = K-1, ..., 0, as the backward pass would see it.

        The backward recomputes each input from the previous recomputed one, so round-off
        compounds from the top of the stack down; the last entry is the error in x itself.
        Reads tensor values (a GPU synchronises): a diagnostic, not for the training loop.
        """
        steps = self.forward_steps(x)
        t = steps[-1]
        errors = []
        for k in range(len(self.flows) - 1, -1, -1):
            t, _ = self.flows[k].inverse(t)
            errors.append(float((t - steps[k]).abs().max()))
        return errors


def memory_saving(flow: Compose | Sequence[Flow]) -> MemorySavingCompose:
    """The same stack (sharing its layers and parameters) with memory-saving backprop.

    ``flow`` is a :class:`~flowlib.core.Compose` or a list of flows. Nested compositions
    are flattened so that each elementary layer is recomputed on its own; this changes
    nothing in the map, the logdet or the parameters.

    >>> from flowlib.models import realnvp_vector
    >>> flow = realnvp_vector(2, couplings=2, hidden=8).flow
    >>> type(memory_saving(flow)).__name__, len(memory_saving(flow).flows) >= len(flow.flows)
    ('MemorySavingCompose', True)
    """
    items = list(flow.flows) if isinstance(flow, Compose) else list(flow)
    flat: list[Flow] = []
    while items:
        f = items.pop(0)
        if type(f) in (Compose, MemorySavingCompose):
            items[:0] = list(f.flows)
        else:
            flat.append(f)
    return MemorySavingCompose(*flat)
