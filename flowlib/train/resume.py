"""A resume continues *the same* experiment, or says why it cannot.

:func:`resume` reads a run's checkpoint (its checksum verified, its weights finite), compares
the configuration it was trained with to this call's and refuses every difference the caller
did not name in ``resume_changes``: a silently different ``weight_decay`` or ``batch_size``
would give a model that no configuration describes. What may always differ:

- the budget (``epochs``, ``steps``, ``seconds``): a finished run is continued to a larger
  one; a *smaller* ``steps`` or ``epochs`` than the checkpoint has done is an error
  (:func:`check_budget`), never a silent return of a longer-trained model;
- where and how it is shown (``device``, ``distributed``, ``progress``, ``checkpoint``, ``resume``).

A named change takes effect: the optimizer's state comes from the file, its hyperparameters
(``lr``, ``weight_decay``) from this call. Epochs are counted in samples
(:func:`epochs_done`), so a resume with another ``batch_size`` still counts passes over the data.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import Any

from torch import nn

from flowlib._checks import FlowInputError
from flowlib._integrity import require_finite
from flowlib.train.batches import LoaderBatches, TensorBatches
from flowlib.train.checkpoint import load_run, set_rng_state
from flowlib.train.config import FitConfig
from flowlib.train.runtime import Runtime
from flowlib.train.state import RunState

__all__ = ["ALWAYS_FREE", "changes", "compare", "resume", "check_budget", "epochs_done", "epochs_end"]

#: Options a resume may change without naming them (the budget; where and how it is shown).
ALWAYS_FREE = frozenset({"epochs", "steps", "seconds", "device", "distributed", "progress", "checkpoint",
                         "resume"})


def changes(value: Any) -> frozenset[str]:
    """``resume_changes`` checked: option names of :class:`FitConfig` (a str, or a sequence of them)."""
    names = [f.name for f in fields(FitConfig)]
    items = (value,) if isinstance(value, str) else value
    if not isinstance(items, Iterable) or not all(isinstance(v, str) for v in items):
        raise FlowInputError(f"fit: resume_changes must be option names such as ('weight_decay', 'lr'), "
                             f"got {value!r}")
    items = tuple(items)
    for name in items:
        if name not in names:
            near = difflib.get_close_matches(name, names, n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise FlowInputError(f"fit: resume_changes names {name!r}, which is not an option of fit{hint}; "
                                 f"the options are {', '.join(names)}")
    return frozenset(items)


def compare(saved: dict[str, Any] | None, config: FitConfig, allowed: frozenset[str], where: str) -> None:
    """Raise naming every option that differs from the checkpoint's and is not ``allowed``."""
    if not isinstance(saved, dict):
        return  # a file that recorded no configuration: nothing to compare with
    now = config.to_dict()
    diff = [name for name in now if name in saved and name not in ALWAYS_FREE | allowed
            and not _equal(saved[name], now[name])]
    if not diff:
        return
    shown = "; ".join(f"{name}={saved[name]!r} there, {now[name]!r} now" for name in diff)
    raise FlowInputError(
        f"{where} was trained with other options: {shown}. Resuming would continue that run with another "
        f"experiment's settings. Pass resume_changes={tuple(diff)!r} to continue it with the new values, "
        "the checkpoint's values to continue it as it was, resume=False to start over (the file is then "
        "overwritten), or another checkpoint path.")


def _equal(a: Any, b: Any) -> bool:
    # 1 and 1.0 are the same learning rate; True and 1 are not the same option.
    return a == b and (type(a) is type(b) or not isinstance(a, bool) and not isinstance(b, bool))


def resume(path: Path, config: FitConfig, allowed: frozenset[str], model: nn.Module, rt: Runtime,
           rank: int) -> RunState:
    """The checkpoint's state loaded into ``model`` and the optimizer, after every check.

    The random generators are restored last (nothing may draw a number before the first step).
    """
    where = f"fit: checkpoint {path}"
    saved, saved_config = load_run(path, where)
    remedy = "delete it or pass resume=False to start over"
    require_finite({"model": saved.model, "best": saved.best_weights, "optimizer": saved.optimizer},
                   path, "fit", remedy)
    compare(saved_config, config, allowed, where)
    rng = saved.rng_of(rank)
    state = saved.restore(model, rt.optimizer, rt.scaler, rt.device, where)
    # optimizer.load_state_dict brings back the saved hyperparameters too; this call's are the ones
    # asked for (the same unless named in resume_changes).
    for group in rt.optimizer.param_groups:
        group["lr"], group["weight_decay"] = config.lr, config.weight_decay
    if config.seed is not None and state.data_seed != config.seed:
        warnings.warn(f"{where} was trained with seed={state.data_seed}; continuing with it, "
                      f"not {config.seed}", stacklevel=4)
    if rng is not None:
        set_rng_state(rng)
    return state


def epochs_done(state: RunState, batches: TensorBatches | LoaderBatches) -> float:
    """Passes over the data so far, counted in samples (right across a change of batch size).

    For a tensor, (completed epochs x samples per epoch + samples of this one) / samples per
    epoch: with one batch size the same float as step / steps_per_epoch, as both are the
    correctly rounded quotient of one rational number. A loader counts batches.
    """
    spe = batches.steps_per_epoch
    if isinstance(batches, TensorBatches) and spe:
        per_epoch = spe * batches.batch_size
        return (state.epoch * per_epoch + state.epoch_samples) / per_epoch
    return state.step / spe if spe else float(state.epoch)


def epochs_end(state: RunState, config: FitConfig, batches: TensorBatches | LoaderBatches) -> int | None:
    """The step at which the ``epochs`` budget ends, from where ``state`` stands (None: no such budget)."""
    spe = batches.steps_per_epoch
    if config.epochs is None or not spe:
        return None
    if not isinstance(batches, TensorBatches):
        return config.epochs * spe  # a loader's epochs are counted in its batches
    if state.epoch >= config.epochs:
        return state.step
    # The rest of this epoch (from the batch holding the saved position), then whole epochs.
    rest = spe - min(state.epoch_samples // batches.batch_size, spe)
    return state.step + rest + (config.epochs - state.epoch - 1) * spe


def check_budget(state: RunState, config: FitConfig, batches: TensorBatches | LoaderBatches,
                 path: Path) -> None:
    """A resume may not ask for less training than the checkpoint has done (it cannot be undone)."""
    where = f"fit: checkpoint {path}"
    fresh = "resume=False to train a new model for that budget (the file is then overwritten)"
    if config.steps is not None and state.step > config.steps:
        raise FlowInputError(f"{where} is at step {state.step}, past steps={config.steps}: a resume cannot "
                             f"undo training. Pass steps >= {state.step} to continue it (steps={state.step} "
                             f"returns it as it is), {fresh}, or another checkpoint path.")
    done = epochs_done(state, batches)
    if config.epochs is not None and isinstance(batches, TensorBatches) and done > config.epochs:
        raise FlowInputError(f"{where} is at epoch {round(done, 4)}, past epochs={config.epochs}: a resume "
                             f"cannot undo training. Pass a larger epochs= to continue it, {fresh}, or "
                             "another checkpoint path.")

