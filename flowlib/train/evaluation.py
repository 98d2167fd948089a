"""What fit works with, and what it measures: the run's setup, evaluation and validation, the result.

:class:`Setup` is built once by :func:`~flowlib.train.fit` and never changed (the
:class:`~flowlib.train.state.RunState` advances apart). :func:`validate` is where the best
model is chosen: a non-finite validation figure stops the run with a
:class:`~flowlib.train.result.TrainingError` naming the step, and is never compared with the
best (NaN < best is always False, so it would silently keep the first weights for ever).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowlib._checks import inputs_checked
from flowlib._modules import evaluating
from flowlib.train import ddp
from flowlib.train.batches import LoaderBatches, Pair, TensorBatches, eval_batches, size
from flowlib.train.config import FitConfig, Plan
from flowlib.train.objective import Objective
from flowlib.train.result import FitResult, TrainingError
from flowlib.train.resume import epochs_done
from flowlib.train.runtime import Runtime
from flowlib.train.state import RunState

__all__ = ["Setup", "evaluate", "validate", "result_of"]


@dataclass(frozen=True)
class Setup:
    """What a run works with, built once by :func:`_train` and never changed (the state is apart)."""

    model: nn.Module
    objective: Objective
    config: FitConfig
    plan: Plan
    rt: Runtime
    d: ddp.Dist
    batches: TensorBatches | LoaderBatches
    val_data: Any
    test_data: Any
    path: Path | None
    resumed_from: int | None
    epochs_end: int | None  #: the step where the epochs budget ends (counted in samples)

    @property
    def eval_batch_size(self) -> int:
        return self.config.eval_batch_size or 4 * self.config.batch_size

    @property
    def paired(self) -> bool:
        """Whether batches are (x, context) pairs: the model is conditional."""
        return bool(getattr(self.model, "conditional", False))


def evaluate(s: Setup, data: Any, name: str) -> float:
    """The mean figure over ``data`` in full precision and evaluation mode, averaged over processes."""
    total = torch.zeros((), dtype=torch.float64, device=s.rt.device)
    count = 0
    # A tensor was checked whole at the door; a loader's batches are checked by the model.
    checked = inputs_checked() if isinstance(data, (Tensor, Pair)) else nullcontext()
    with evaluating(s.model), checked:
        for x in eval_batches(data, s.eval_batch_size, s.d.rank, s.d.world, name, paired=s.paired):
            x = s.rt.to_device(x)
            total += s.objective.total(s.model, x)
            count += size(x)
    total_v, count_v = ddp.total(torch.stack([total, total.new_tensor(float(count))]), s.d).tolist()
    return total_v / max(count_v, 1.0)


def validate(s: Setup, state: RunState, seconds: float, saved_at: int | None) -> None:
    v = evaluate(s, s.val_data, "val_data")
    if not math.isfinite(v):
        # NaN < best is always False: compared, it would silently keep the first weights for ever.
        best = (f"the best so far is {state.best_val:.6g} at step {state.best_step}"
                if state.best_val is not None else "no earlier validation")
        on_disk = (f" The last checkpoint ({s.path}, step {saved_at}) is untouched." if s.path is not None
                   and saved_at is not None else "")
        raise TrainingError(
            f"fit: the validation figure at step {state.step} is {v}: the model gives a non-finite "
            f"figure (in {s.objective.unit}) on some validation samples. It is never compared with the best "
            f"({best}).{on_disk} "
            "Check val_data for samples far outside the training data, or try a lower learning rate "
            f"(lr={s.config.lr:g} now) or a longer warm-up.", step=state.step,
            result=result_of(s, state, seconds, "error"))
    state.history.add_validation(state.step, v)
    if state.best_val is None or v < state.best_val:
        state.best_val, state.best_step, state.bad_evals = v, state.step, 0
        state.best_weights = {k: t.detach().clone() for k, t in s.model.state_dict().items()}
    else:
        state.bad_evals += 1


def result_of(s: Setup, state: RunState, seconds: float, reason: str) -> FitResult:
    return FitResult(
        unit=s.objective.unit, history=state.history, best_val=state.best_val, best_step=state.best_step,
        steps=state.step, epochs=epochs_done(state, s.batches), seconds=seconds,
        stop_reason=reason, resumed_from=s.resumed_from, device=str(s.rt.device), amp=s.rt.amp_name,
        world_size=s.d.world, checkpoint=str(s.path) if s.path is not None else None)
