"""The learning rate of each step: a linear warm-up, then a cosine decay (or a constant).

    lr(step) = lr * w(step) * c(progress),   w = min(1, (step + 1) / warmup_steps),
    c = (1 + cos(pi * progress)) / 2  ("cosine", Loshchilov & Hutter, 2017)  or 1 ("constant"),

where ``progress`` in [0, 1] is how far the run is through its budget: the larger of
step / total_steps and seconds / seconds budget (epochs when neither is known). The schedule
has no state beyond the step and the training time, which the run's state stores: a resumed
run continues the same curve.

>>> lr_factor(0, 0.0, warmup_steps=10, schedule="cosine")
0.1
>>> lr_factor(50, 0.5, warmup_steps=10, schedule="cosine")
0.5
>>> lr_factor(50, 0.5, warmup_steps=10, schedule="constant")
1.0
"""

from __future__ import annotations

import math

__all__ = ["lr_factor", "progress"]


def lr_factor(step: int, progress: float, warmup_steps: int, schedule: str) -> float:
    """The multiplier of the base learning rate at ``step`` (0-based) and ``progress`` in [0, 1]."""
    # Flows with unclamped scales often blow up in their first updates without a warm-up.
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return warm
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def progress(step: int, seconds: float, epoch: int, total_steps: int | None, seconds_budget: float | None,
             epochs: int | None) -> float:
    """How far through its budget a run is, in [0, 1]: the budget nearest to its end decides.

    >>> progress(25, 1.0, 0, total_steps=100, seconds_budget=2.0, epochs=None)
    0.5
    """
    fractions = []
    if total_steps:
        fractions.append(step / total_steps)
    if seconds_budget:
        fractions.append(seconds / seconds_budget)
    if not fractions and epochs:
        fractions.append(epoch / epochs)
    return max(fractions) if fractions else 0.0
