"""What a call to :func:`fit <flowlib.train.fit>` did, and the error it raises when training fails."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

from flowlib.train.state import History

__all__ = ["FitResult", "TrainingError"]


@dataclass
class FitResult:
    """Curves, the selected model's figures and the budget used by one call to ``fit``.

    Every figure is in ``unit``, the model's ``loss_unit`` ("nats" per sample for vector flows,
    "bits/dim" for image models) or "loss" for a custom ``loss_fn``. The curves are read from
    ``history`` (one representation, that of the checkpoint) and cover the whole run, resumed
    parts included. Plot them with :func:`flowlib.viz.plot_training_curve`.
    """

    unit: str
    history: History = field(default_factory=History)
    best_val: float | None = None
    best_step: int | None = None  #: the step whose weights were selected (restored)
    test: float | None = None  #: test figure of the selected model, if test_data was given
    steps: int = 0  #: optimizer steps done, in total
    epochs: float = 0.0  #: passes over the training data (fractional), in total
    seconds: float = 0.0  #: training time, summed over resumed runs
    wall_time: float = 0.0  #: seconds this call took, evaluation and checkpoints included
    stop_reason: str = ""  #: "steps", "epochs", "seconds", "early_stopping", "interrupted" or "error"
    resumed_from: int | None = None  #: the checkpoint's step if this call resumed
    device: str = "cpu"
    amp: str | None = None
    world_size: int = 1
    checkpoint: str | None = None

    @property
    def metric(self) -> str:
        """The unit of the figures (the name plot_training_curve reads; same as ``unit``)."""
        return self.unit

    @property
    def losses(self) -> list[float]:
        """Training figure of each optimizer step."""
        return self.history.losses

    @property
    def lrs(self) -> list[float]:
        """Learning rate used at each step."""
        return self.history.lrs

    @property
    def grad_norms(self) -> list[float]:
        """Gradient norm of each step, before clipping."""
        return self.history.grad_norms

    @property
    def val_steps(self) -> list[int]:
        """Steps after which validation ran."""
        return self.history.val_steps

    @property
    def val(self) -> list[float]:
        """Validation figure at those steps."""
        return self.history.val

    def __repr__(self) -> str:
        parts = [f"steps={self.steps}", f"stop_reason={self.stop_reason!r}"]
        if self.losses:
            tail = self.losses[-min(len(self.losses), 20):]
            parts.append(f"train {self.unit}={sum(tail) / len(tail):.4f}")
        if self.best_val is not None:
            parts.append(f"best val={self.best_val:.4f} (step {self.best_step})")
        if self.test is not None:
            parts.append(f"test={self.test:.4f}")
        parts.append(f"seconds={self.seconds:.1f}")
        return "FitResult(" + ", ".join(parts) + ")"

    def plot(self, ax: Any = None) -> Any:
        """Deprecated: use ``flowlib.viz.plot_training_curve(result, ax=ax)``."""
        warnings.warn("FitResult.plot is deprecated, use flowlib.viz.plot_training_curve(result, ax=ax)",
                      DeprecationWarning, stacklevel=2)
        from flowlib.viz import plot_training_curve  # lazily: plots read results, training never needs plots

        return plot_training_curve(self, ax=ax)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN). ``step`` and the partial ``result`` are attached."""

    def __init__(self, message: str, step: int, result: FitResult | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.result = result
