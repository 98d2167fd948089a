"""The state of a training run as one value: what a checkpoint saves and a resume restores.

:class:`History` holds the curves in one representation (columns of equal length, one row per
optimizer step, and the validation figures with their steps); :class:`FitResult
<flowlib.train.result.FitResult>` reads its ``losses``, ``lrs``, ``val`` ... from it, and a
checkpoint stores it as tensors through :meth:`History.to_dict`.

:class:`RunState` is everything a run needs to continue *exactly* where it stopped: the step,
the epoch and the position inside it (counted in samples drawn by this process), the data
seed, the training seconds so far, the history, the best validation figure and its weights,
and, captured when it is saved, the model's weights, the optimizer's and gradient scaler's
states and every process's random-generator states. The learning-rate schedule has no state
of its own: it is a function of the step and of the training time, both stored here.

``RunState.from_dict(state.to_dict()) == state`` for every state (tensors compared exactly).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

import torch
from torch import Tensor, nn

from flowlib._checks import FlowInputError

__all__ = ["History", "RunState", "FORMAT", "same"]

#: The checkpoint format; version 1 kept the history in three representations and counted the
#: position in the epoch in batches.
FORMAT = "flowlib.fit/2"


@dataclass
class History:
    """The curves of a run: per step ``losses``, ``lrs``, ``grad_norms``; ``val`` at ``val_steps``.

    Step ``k`` (1-based, the step counter after the update) is row ``k - 1``.

    >>> h = History(); h.add_step(loss=1.5, lr=1e-3, grad_norm=2.0); h.add_validation(1, 1.25)
    >>> History.from_dict(h.to_dict()) == h
    True
    """

    losses: list[float] = field(default_factory=list)  #: training figure of each step
    lrs: list[float] = field(default_factory=list)  #: learning rate used at each step
    grad_norms: list[float] = field(default_factory=list)  #: gradient norm before clipping
    val_steps: list[int] = field(default_factory=list)  #: steps after which validation ran
    val: list[float] = field(default_factory=list)  #: validation figure at those steps

    def add_step(self, loss: float, lr: float, grad_norm: float) -> None:
        self.losses.append(loss)
        self.lrs.append(lr)
        self.grad_norms.append(grad_norm)

    def add_validation(self, step: int, value: float) -> None:
        self.val_steps.append(step)
        self.val.append(value)

    def to_dict(self) -> dict[str, Tensor]:
        """Compact tensors (float64 holds every Python float exactly)."""
        out = {name: torch.tensor(getattr(self, name), dtype=torch.float64)
               for name in ("losses", "lrs", "grad_norms", "val")}
        out["val_steps"] = torch.tensor(self.val_steps, dtype=torch.int64)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Tensor]) -> History:
        return cls(losses=d["losses"].tolist(), lrs=d["lrs"].tolist(), grad_norms=d["grad_norms"].tolist(),
                   val_steps=[int(s) for s in d["val_steps"].tolist()], val=d["val"].tolist())


@dataclass(eq=False)
class RunState:
    """Where a run stands. The loop advances the counters; :meth:`capture` adds the rest to save.

    >>> s = RunState(step=5, epoch=1, epoch_samples=128, data_seed=7)
    >>> RunState.from_dict(s.to_dict()) == s
    True
    """

    step: int = 0  #: optimizer steps done
    epoch: int = 0  #: the current pass over the training data (0-based)
    epoch_samples: int = 0  #: samples this process has drawn in the current epoch
    data_seed: int = 0  #: the seed of the data order (one for all processes)
    seconds: float = 0.0  #: training seconds, summed over resumed runs (at capture)
    history: History = field(default_factory=History, repr=False)
    best_val: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  #: validations since the best one (early stopping)
    best_weights: dict[str, Tensor] | None = field(default=None, repr=False)
    model: dict[str, Tensor] | None = field(default=None, repr=False)  #: the weights after ``step``
    optimizer: dict[str, Any] | None = field(default=None, repr=False)
    scaler: dict[str, Any] | None = field(default=None, repr=False)
    rng: list[dict[str, Any]] = field(default_factory=list, repr=False)  #: one generator state per process
    world_size: int = 1

    def capture(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                rng: list[dict[str, Any]], seconds: float, world_size: int) -> RunState:
        """This state with the live objects' states added: the value a checkpoint saves.

        The tensors are the live ones (no copy): save the result at once.
        """
        return replace(self, model=model.state_dict(), optimizer=optimizer.state_dict(),
                       scaler=scaler.state_dict() if scaler is not None else None, rng=rng,
                       seconds=seconds, world_size=world_size)

    def restore(self, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: Any,
                device: torch.device, where: str) -> RunState:
        """Load the captured states into the live objects; return the state without them.

        The random generators are not touched here: the caller restores them
        (:func:`~flowlib.train.checkpoint.set_rng_state` of :meth:`rng_of` its rank) as the very
        last thing, so nothing draws a number the uninterrupted run did not draw at this point.
        """
        try:
            model.load_state_dict(self.model or {})
            optimizer.load_state_dict(self.optimizer or {})
        except (RuntimeError, ValueError, KeyError) as err:
            raise FlowInputError(f"{where} does not match this model or optimizer ({err}). "
                                 "Pass resume=False to start over, or delete the file.") from err
        if scaler is not None and self.scaler:
            scaler.load_state_dict(self.scaler)
        best = None if self.best_weights is None else {k: v.to(device) for k, v in self.best_weights.items()}
        return replace(self, best_weights=best, model=None, optimizer=None, scaler=None, rng=[])

    def rng_of(self, rank: int) -> dict[str, Any] | None:
        """The generator state saved by process ``rank`` (rank 0's if the run had fewer processes)."""
        if not self.rng:
            return None
        return self.rng[rank] if rank < len(self.rng) else self.rng[0]

    def to_dict(self) -> dict[str, Any]:
        """Plain containers and tensors only, loadable with ``torch.load(weights_only=True)``."""
        return {
            "format": FORMAT, "step": self.step, "epoch": self.epoch, "epoch_samples": self.epoch_samples,
            "data_seed": self.data_seed, "seconds": self.seconds, "history": self.history.to_dict(),
            "best": {"value": self.best_val, "step": self.best_step, "bad_evals": self.bad_evals,
                     "model": self.best_weights},
            "model": self.model, "optimizer": self.optimizer, "scaler": self.scaler, "rng": self.rng,
            "world_size": self.world_size,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunState:
        best = d["best"]
        return cls(step=int(d["step"]), epoch=int(d["epoch"]), epoch_samples=int(d["epoch_samples"]),
                   data_seed=int(d["data_seed"]), seconds=float(d["seconds"]),
                   history=History.from_dict(d["history"]), best_val=best["value"], best_step=best["step"],
                   bad_evals=int(best["bad_evals"]), best_weights=best["model"], model=d["model"],
                   optimizer=d["optimizer"], scaler=d["scaler"], rng=list(d["rng"]),
                   world_size=int(d["world_size"]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, RunState) and same(self, other)


def same(a: Any, b: Any) -> bool:
    """Exact equality through dataclasses, dicts, lists and tensors (dtype, shape and values).

    >>> same({"w": torch.ones(2)}, {"w": torch.ones(2)}), same(torch.ones(2), torch.ones(2).double())
    (True, False)
    """
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a.cpu(), b.cpu()))
    if is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(same(x, y) for x, y in zip(a, b, strict=True)))
    return bool(a == b) and type(a) is type(b)
