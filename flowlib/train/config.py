"""The configuration of a training run: one frozen value, checked once at :func:`fit`'s door.

:class:`FitConfig` declares every option of :func:`~flowlib.train.fit` once (its name, type,
default and check); ``fit(model, x, steps=500, lr=1e-3)`` builds it with
:meth:`FitConfig.build`, which refuses unknown options by name. Its values are plain Python
values (no tensors, devices or paths), so :meth:`FitConfig.to_dict` goes into a checkpoint as it
is and :meth:`FitConfig.from_dict` reads it back; a resume can then compare the two.

:class:`Plan` is what follows from a configuration once the data is known (the number of
batches in an epoch): the step budget, the warm-up length, the validation and checkpoint
periods.

>>> c = FitConfig.build(steps=100, lr=3e-3)
>>> FitConfig.from_dict(c.to_dict()) == c
True
>>> c.plan(steps_per_epoch=40)
Plan(total_steps=100, warmup_steps=10, eval_every=40, checkpoint_every=40)
"""

from __future__ import annotations

import difflib
import os
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from flowlib._checks import FlowInputError, choice, flag, integer, number

__all__ = ["FitConfig", "Plan"]

_WHO = "fit"
# Spellings of amp accepted at the door, each mapped to the one stored.
_AMP = {True: "auto", "auto": "auto", "bf16": "bf16", "bfloat16": "bf16", "fp16": "fp16", "float16": "fp16",
        False: "off", None: "off", "off": "off", "no": "off", "fp32": "off", "float32": "off"}


@dataclass(frozen=True)
class FitConfig:
    """Every option of :func:`~flowlib.train.fit`, checked and in plain values (see fit's docstring)."""

    # budget: at least one; training stops at the first reached, counted over resumes
    epochs: int | None = None
    steps: int | None = None  #: optimizer steps
    seconds: float | None = None  #: training seconds (wall clock)
    # data
    batch_size: int = 256
    eval_batch_size: int | None = None  #: default 4 * batch_size
    seed: int | None = None
    # optimisation
    lr: float = 1e-3
    warmup_steps: int | None = None  #: default min(100, 10 % of the step budget)
    schedule: str = "cosine"  #: "cosine" or "constant" after the warm-up
    weight_decay: float = 0.0
    clip_grad_norm: float | None = 10.0  #: in the gradient of the model's loss_unit
    amp: str = "auto"  #: "auto", "bf16", "fp16" or "off" (CUDA only)
    fused: bool | str = "auto"
    channels_last: bool = False
    # validation and checkpoints
    eval_every: int | None = None
    early_stopping_patience: int | None = None
    restore_best: bool = True
    checkpoint: str | None = None
    checkpoint_every: int | None = None
    resume: bool = True
    # where and how
    device: str = "auto"
    distributed: bool | str = "auto"
    progress: bool = True

    def __post_init__(self) -> None:
        # Each check once, here; the stored value is the normalised one (frozen: object.__setattr__).
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        for name in ("epochs", "steps", "batch_size", "eval_batch_size", "eval_every", "checkpoint_every",
                     "early_stopping_patience"):
            if getattr(self, name) is not None:
                put(name, integer(getattr(self, name), name, _WHO))
        if self.epochs is None and self.steps is None and self.seconds is None:
            raise FlowInputError("fit: give a budget: epochs=..., steps=... or seconds=...")
        if self.seconds is not None:
            put("seconds", number(self.seconds, "seconds", _WHO, minimum=0.0, strict=True))
        if self.warmup_steps is not None:
            put("warmup_steps", integer(self.warmup_steps, "warmup_steps", _WHO, minimum=0))
        if self.seed is not None:
            put("seed", integer(self.seed, "seed", _WHO, minimum=None))
        put("lr", number(self.lr, "lr", _WHO, minimum=0.0, strict=True))
        put("weight_decay", number(self.weight_decay, "weight_decay", _WHO, minimum=0.0))
        if self.clip_grad_norm is not None:
            put("clip_grad_norm", number(self.clip_grad_norm, "clip_grad_norm", _WHO, minimum=0.0,
                                         strict=True))
        choice(self.schedule, "schedule", ("cosine", "constant"), _WHO)
        if not isinstance(self.amp, (bool, str, type(None))) or self.amp not in _AMP:
            raise FlowInputError(f"fit: amp must be 'auto', 'bf16', 'fp16' or False, got {self.amp!r}")
        put("amp", _AMP[self.amp])
        choice(self.fused, "fused", ("auto", True, False), _WHO)
        choice(self.distributed, "distributed", ("auto", True, False), _WHO)
        for name in ("channels_last", "restore_best", "resume", "progress"):
            flag(getattr(self, name), name, _WHO)
        if self.checkpoint is not None:
            if not isinstance(self.checkpoint, (str, os.PathLike)):
                raise FlowInputError(f"fit: checkpoint must be a file path or None, got {self.checkpoint!r}")
            put("checkpoint", os.fspath(self.checkpoint))
        if not isinstance(self.device, (str, torch.device)):
            raise FlowInputError(f"fit: device must be 'auto' or a torch device, got {self.device!r}")
        if str(self.device) != "auto":
            try:
                put("device", str(torch.device(self.device)))
            except (RuntimeError, ValueError) as err:
                raise FlowInputError(f"fit: device must be 'auto' or a torch device, got {self.device!r}") \
                    from err

    @classmethod
    def build(cls, base: FitConfig | None = None, **options: Any) -> FitConfig:
        """``base`` (or the defaults) with ``options`` replaced; an unknown option is refused by name."""
        names = [f.name for f in fields(cls)]
        for key in options:
            if key not in names:
                near = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {near[0]!r}?)" if near else ""
                raise FlowInputError(f"fit: unknown option {key!r}{hint}; the options are {', '.join(names)}")
        values = base.to_dict() if base is not None else {}
        return cls(**{**values, **options})

    def to_dict(self) -> dict[str, Any]:
        """Plain values (str, int, float, bool, None) only: safe in a weights_only checkpoint."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FitConfig:
        return cls.build(**d)

    def plan(self, steps_per_epoch: int | None, epochs_end: int | None = None) -> Plan:
        """The step budget and the periods, once the number of batches per epoch is known (None: unknown).

        ``epochs_end``: the step where the epochs budget ends when it is not ``epochs *
        steps_per_epoch`` (a resume with another batch size; epochs are counted in samples).
        """
        spe = steps_per_epoch
        by_epochs = epochs_end if epochs_end is not None else (self.epochs * spe if self.epochs and spe
                                                               else None)
        totals = [t for t in (self.steps, by_epochs) if t is not None]
        total = min(totals) if totals else None
        warmup = self.warmup_steps
        if warmup is None:
            # Flows with unclamped scales often blow up in their first steps without a warm-up.
            warmup = min(100, total // 10) if total else 100
        # Validate about once an epoch, but not more often than every 20 or less than every 1000 steps.
        eval_every = self.eval_every or min(max(spe or 500, 20), 1000)
        return Plan(total, warmup, eval_every, self.checkpoint_every or eval_every)


@dataclass(frozen=True)
class Plan:
    """What a configuration means for one data source."""

    total_steps: int | None  #: the step budget (from steps and epochs), None for time or unsized loaders
    warmup_steps: int
    eval_every: int
    checkpoint_every: int
