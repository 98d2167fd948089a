"""The checks at a model's doors: the data (shape, dtype, device, finiteness), the temperature
and the context. Written once here, used by :class:`flowlib.FlowModel`, the image models and
:func:`flowlib.fit`; :mod:`flowlib.core` re-exports the first two.
"""

from __future__ import annotations

import torch
from torch import Tensor

from flowlib._checks import FlowInputError, number
from flowlib._modules import placement

__all__ = ["check_data", "check_temperature", "check_model_context", "model_context"]


def check_data(x: Tensor, event_shape: tuple[int, ...], device: torch.device, where: str,
               dtype: torch.dtype | None = None) -> None:
    """Validate data where it enters a model: shape, dtype, device and finiteness.

    With ``dtype`` (the model's), data of another floating-point dtype is refused naming both:
    torch would fail later inside a layer (``mat1 and mat2 must have the same dtype``), or,
    in purely elementwise layers, silently compute in the promoted dtype. The finiteness
    check reads the values (on a GPU this synchronises), so it is done once per call at the
    model's door, never inside a layer.
    """
    if not isinstance(x, Tensor):
        raise FlowInputError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
    want = "(batch, " + ", ".join(str(s) for s in event_shape) + ")"
    if x.dim() != len(event_shape) + 1 or tuple(x.shape[1:]) != tuple(event_shape):
        raise FlowInputError(f"{where}: expected data of shape {want}, got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FlowInputError(f"{where}: expected a floating-point tensor, got dtype {x.dtype}")
    if dtype is not None and x.dtype != dtype:
        cast = {torch.float32: "x.float()", torch.float64: "x.double()"}.get(dtype, f"x.to({dtype})")
        raise FlowInputError(f"{where}: the data is {x.dtype} but the model is {dtype}; cast one of them, "
                             f"e.g. {cast} (or model.to({x.dtype}))")
    if x.device.type != device.type or (
        device.index is not None and x.device.index is not None and x.device.index != device.index
    ):
        raise FlowInputError(
            f"{where}: the data is on {x.device} but the model is on {device}; "
            f"move one of them, e.g. x.to({str(device)!r})"
        )
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise FlowInputError(f"{where}: expected finite data, found {bad} NaN or inf values")


def check_temperature(temperature: float, who: str, dtype: torch.dtype) -> float:
    """A temperature T >= 0 small enough that z = T eps stays finite in ``dtype``.

    |eps| of a standard-normal draw stays below 6 in float32 (9 in float64) in practice, so T
    is bounded by the dtype's largest value / 16: above it (e.g. 3.5e38, finite in Python but
    not in float32) T eps overflows to inf and every sample comes out NaN.

    >>> check_temperature(0.7, "sample", torch.float32)
    0.7
    """
    temperature = number(temperature, "temperature", who, minimum=0.0)
    if dtype.is_floating_point and temperature > torch.finfo(dtype).max / 16:
        biggest = torch.finfo(dtype).max
        raise FlowInputError(f"{who}: temperature {temperature:.4g} overflows the model's dtype {dtype} "
                             f"(T eps must stay below {biggest:.3g}); use a temperature <= "
                             f"{biggest / 16:.3g}, or a float64 model (model.double())")
    return temperature


def check_model_context(context: object, n: int, context_shape: tuple[int, ...] | None,
                        device: torch.device, where: str) -> Tensor:
    """One raw context per sample, on the model's device, as the model's door receives it.

    ``context`` is a tensor (or a number or list, made a tensor on ``device``) of shape
    ``(n, *context_shape)``, ``(1, *context_shape)`` or ``context_shape`` (the last two: one context
    for the whole batch, spread over it). ``context_shape`` None accepts any (n, ...) tensor.
    Floating-point contexts must be finite.
    """
    if context is None:
        shown = "(batch, ...)" if context_shape is None else str((-1, *context_shape)).replace("-1", "batch")
        raise FlowInputError(f"{where}: this model is conditional: pass context=... of shape {shown} "
                             f"(or one context for the whole batch)")
    if not isinstance(context, Tensor):
        try:
            context = torch.as_tensor(context, device=device)
        except (TypeError, ValueError, RuntimeError) as err:
            raise FlowInputError(f"{where}: expected the context as a tensor, got {type(context).__name__}") \
                from err
    if context.device.type != device.type:
        raise FlowInputError(f"{where}: the context is on {context.device} but the model is on {device}; "
                             f"move one of them, e.g. context.to({str(device)!r})")
    shape = tuple(context.shape)
    if context_shape is not None:
        if shape == context_shape:
            context = context.unsqueeze(0)
        elif shape[1:] != context_shape:
            want = "(batch" + "".join(f", {s}" for s in context_shape) + ")"
            raise FlowInputError(f"{where}: expected a context of shape {want} (or one of shape "
                                 f"{context_shape} for the whole batch), got {shape}")
    elif context.dim() == 0:
        context = context.unsqueeze(0)
    if context.shape[0] == 1 and n != 1:
        context = context.expand(n, *context.shape[1:])
    elif context.shape[0] != n:
        raise FlowInputError(f"{where}: expected {n} contexts (one per sample) or a single one, got "
                             f"{context.shape[0]}")
    if context.is_floating_point() and not bool(torch.isfinite(context).all()):
        raise FlowInputError(f"{where}: expected a finite context, found "
                             f"{int((~torch.isfinite(context)).sum())} NaN or inf values")
    return context


def model_context(model: object, context: object, n: int, who: str) -> Tensor | None:
    """The context at a model's door: None for an unconditional model (which refuses one), else
    one context per sample (:func:`check_model_context`), through the model's ``context_encoder``
    and in its dtype."""
    if not model.conditional:
        if context is not None:
            raise FlowInputError(f"{who}: this model is not conditional (no layer reads a context): "
                                 f"call it without context=")
        return None
    device, dtype = placement(model)
    context = check_model_context(context, n, model.context_shape, device, who)
    if model.context_encoder is not None:
        context = model.context_encoder(context)
    return context.to(dtype) if dtype.is_floating_point else context
