"""Training a flow: :func:`fit`, one loop for every lecture, in a package of one concern a file.

- :mod:`~flowlib.train.loop`: :func:`fit` and its step (validation, early stopping, the NaN guard);
- :mod:`~flowlib.train.config`: the options, one frozen :class:`FitConfig` checked at the door;
- :mod:`~flowlib.train.state`: the run's state as one value, :class:`RunState` and its
  :class:`History`, saved and restored whole;
- :mod:`~flowlib.train.objective`: what is minimised, read from the model (``loss``,
  ``loss_unit``), never guessed;
- :mod:`~flowlib.train.result`: :class:`FitResult` and :class:`TrainingError`;
- :mod:`~flowlib.train.checkpoint`: atomic, weights-only checkpoints with a checksum of their
  tensors, and random-generator states;
- :mod:`~flowlib.train.lock`: one run per checkpoint path (:class:`CheckpointInUse` for a second);
- :mod:`~flowlib.train.resume`: a resume continues the same experiment (options compared,
  ``resume_changes``, epochs counted in samples);
- :mod:`~flowlib.train.evaluation`: validation (a non-finite figure stops the run), the result;
- :mod:`~flowlib.train.schedule`, :mod:`~flowlib.train.batches`, :mod:`~flowlib.train.runtime`,
  :mod:`~flowlib.train.ddp`: the learning-rate curve, the resumable data order, the device and
  precision, DistributedDataParallel.

Example::

    result = fit(model, x_train, val_data=x_val, seconds=120, checkpoint="runs/moons.pt")
    result.best_val, result.losses[-1], result.unit
"""

from __future__ import annotations

from flowlib.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from flowlib.train.config import FitConfig
from flowlib.train.lock import CheckpointInUse
from flowlib.train.loop import fit
from flowlib.train.result import FitResult, TrainingError
from flowlib.train.state import History, RunState

__all__ = ["fit", "FitResult", "TrainingError", "CheckpointInUse", "FitConfig", "RunState", "History",
           "save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]
