"""What every part of flowlib asks of a module, written once: where it lives, and how to
evaluate it without changing it.

- :func:`placement`: the device and dtype a model's inputs must have, read from its first
  floating-point tensor (parameters, then buffers). A bound method such as
  ``model.log_prob`` is traced back to its module.
- :func:`evaluating`: run code in evaluation mode and without gradients, then give every
  submodule back its own training flag. Evaluation mode matters: in training mode an
  uninitialised ActNorm would initialise itself on whatever it is shown, and dropout would
  add noise to a figure.
- :func:`training`: the same in training mode, for a data-dependent initialisation on one
  batch (ActNorm) that leaves every flag as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["owner", "placement", "evaluating", "training"]


def owner(obj: object) -> object:
    """The module behind a bound method such as ``model.log_prob``, else ``obj`` itself."""
    module = getattr(obj, "__self__", None)
    return module if isinstance(module, nn.Module) else obj


def placement(obj: object) -> tuple[torch.device, torch.dtype]:
    """``(device, dtype)`` of ``obj``'s first floating-point tensor.

    A module without floating-point tensors lives on the device of its first tensor with the
    default dtype; anything that is not a module (a plain function) on the CPU.

    >>> placement(nn.Linear(2, 2).double())
    (device(type='cpu'), torch.float64)
    """
    module = owner(obj)
    if isinstance(module, nn.Module):
        tensors = (*module.parameters(), *module.buffers())
        for t in tensors:
            if t.is_floating_point():
                return t.device, t.dtype
        for t in tensors:
            return t.device, torch.get_default_dtype()
    return torch.device("cpu"), torch.get_default_dtype()


@contextmanager
def evaluating(obj: object, grad: bool = False) -> Iterator[None]:
    """Evaluation mode (and ``torch.no_grad()`` unless ``grad``), then every flag restored.

    The flags are restored one submodule at a time, not with ``model.train(mode)``, so a model
    that was partly in evaluation mode (a frozen encoder, say) stays exactly as it was.

    >>> net = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    >>> with evaluating(net):
    ...     net.training
    False
    >>> net.training
    True
    """
    with _in_mode(obj, False, grad):
        yield


@contextmanager
def training(obj: object, grad: bool = False) -> Iterator[None]:
    """Training mode (and ``torch.no_grad()`` unless ``grad``), then every flag restored.

    For a data-dependent initialisation on one batch (ActNorm initialises itself in training
    mode) that must leave the model's flags as they were.

    >>> net = nn.Dropout().eval()
    >>> with training(net):
    ...     net.training
    True
    >>> net.training
    False
    """
    with _in_mode(obj, True, grad):
        yield


@contextmanager
def _in_mode(obj: object, mode: bool, grad: bool) -> Iterator[None]:
    module = owner(obj)
    flags = [(m, m.training) for m in module.modules()] if isinstance(module, nn.Module) else []
    if any(was != mode for _, was in flags):
        module.train(mode)  # through train(), so modules that clear a cache on a mode change do so
    try:
        if grad:
            yield
        else:
            with torch.no_grad():
                yield
    finally:
        for m, was in flags:
            m.training = was
