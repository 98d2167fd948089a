"""Where and how a run computes: the device, mixed precision, the optimizer, the clock, Ctrl-C.

:func:`prepare` makes a :class:`Runtime` once, from the configuration: it moves the model to
its device (and to ``channels_last`` if asked), builds AdamW (one fused kernel where it can)
and, for fp16, the gradient scaler. Nothing in it changes after that.
"""

from __future__ import annotations

import random
import signal
import threading
import time
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowlib._checks import FlowInputError
from flowlib._modules import placement
from flowlib.train.batches import Pair, derive_seed
from flowlib.train.config import FitConfig
from flowlib.train.ddp import Dist, broadcast_int

__all__ = ["Runtime", "prepare", "check_device", "resolve_device", "resolve_amp", "Clock", "StopOnInterrupt",
           "seed_everything"]


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype  #: the dtype batches are cast to: the model's
    amp_dtype: torch.dtype | None  #: autocast dtype, None for full precision
    memory_format: torch.memory_format | None
    optimizer: torch.optim.Optimizer
    scaler: Any  #: a GradScaler for fp16, else None

    def to_device(self, x: Tensor | Pair) -> Tensor | Pair:
        if isinstance(x, Pair):  # the context too: a float one cast like the data, labels kept integer
            return Pair(self.to_device(x.x), x.to(device=self.device, dtype=self.dtype).context)
        x = x.to(device=self.device, dtype=self.dtype, non_blocking=True)
        if self.memory_format is not None and x.dim() == 4:
            x = x.contiguous(memory_format=self.memory_format)
        return x

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                              enabled=self.amp_dtype is not None)

    @property
    def amp_name(self) -> str | None:
        return None if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", "")


def prepare(model: nn.Module, config: FitConfig, d: Dist) -> Runtime:
    """Move ``model`` to its device and build the optimizer (the model is moved in place, as ``.to``)."""
    device = resolve_device(config.device, d)
    amp_dtype = resolve_amp(config.amp, device)
    memory_format = torch.channels_last if config.channels_last else None
    if memory_format is not None:
        model.to(device, memory_format=memory_format)
    else:
        model.to(device)
    # One kernel for the whole update instead of torch's Python loop over the parameters.
    fused = _fused_ok(model, device, config.fused)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  fused=True if fused else None)
    # fp16 overflows where bf16 does not: scale the loss, skip steps with inf gradients.
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    return Runtime(device, placement(model)[1], amp_dtype, memory_format, optimizer, scaler)


def check_device(device: str) -> None:
    """A device this machine has, checked at fit's door (torch's own error is an AssertionError)."""
    if device == "auto":
        return
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise FlowInputError(f"fit: device={device!r} but CUDA is not available here "
                                 "(torch.cuda.is_available() is False); use device='auto' (CUDA when "
                                 "present, else the CPU) or 'cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise FlowInputError(f"fit: device={device!r} but this machine has {torch.cuda.device_count()} "
                                 "CUDA device(s); use device='cuda' or 'auto'")
    elif dev.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise FlowInputError(f"fit: device={device!r} but MPS is not available here; use device='auto' or "
                             "'cpu'")


def resolve_device(device: str, d: Dist) -> torch.device:
    """``"auto"``: CUDA if available (this process's GPU under DDP), else the CPU."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", d.local_rank if d.on else torch.cuda.current_device())
    return dev


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. Mixed precision is for CUDA only."""
    if amp == "off":
        return None
    if device.type != "cuda":
        if amp != "auto":
            warnings.warn(f"fit: amp={amp!r} ignored on {device.type}: mixed precision is used on CUDA only",
                          stacklevel=4)
        return None
    if amp == "fp16":
        return torch.float16
    if amp == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def _fused_ok(model: nn.Module, device: torch.device, fused: bool | str) -> bool:
    """Whether AdamW can run as one fused kernel: floating-point parameters on a CPU or CUDA."""
    if fused is False:
        return False
    params = [p for p in model.parameters() if p.requires_grad]
    ok = bool(params) and device.type in ("cpu", "cuda") and all(
        p.is_floating_point() and p.device.type == device.type for p in params)
    if fused is True and not ok:
        raise FlowInputError(f"fit: fused=True needs floating-point parameters on a CPU or CUDA device, "
                             f"got the model on {device}")
    return ok


class Clock:
    """Training seconds: those of earlier (resumed) calls plus this call's since it started."""

    def __init__(self, before: float = 0.0) -> None:
        self.before, self.t0 = before, time.perf_counter()

    def __call__(self) -> float:
        return self.before + (time.perf_counter() - self.t0)


class StopOnInterrupt:
    """The first Ctrl-C (or a notebook's stop button) ends training after the current step.

    The loop then saves a consistent checkpoint and returns normally, so a later call with
    ``resume=True`` continues exactly there. A second Ctrl-C interrupts at once. Only in the main
    thread (where Python delivers signals) and not under DDP, where torchrun manages the
    signals of its workers.
    """

    def __init__(self, active: bool) -> None:
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StopOnInterrupt:
        if self.active:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self._previous)


def seed_everything(seed: int | None, d: Dist) -> int:
    """Seed torch, NumPy's global generator and ``random``; return the data order's seed.

    With ``seed=None`` the generators are left as they are and the data seed is drawn from
    torch's, so ``torch.manual_seed`` alone makes a run reproducible. Under DDP every process
    gets its own stream (noise, dropout) and rank 0's data seed (one shared order).
    """
    if seed is not None:
        s = derive_seed(seed, d.rank) if d.on else seed
        torch.manual_seed(s)
        np.random.seed(s % 2**32)  # noqa: NPY002  (the global generator user code draws from)
        random.seed(s)
        data_seed = seed
    else:
        data_seed = int(torch.randint(0, 2**62, (1,)).item())
    return broadcast_int(data_seed, d)
