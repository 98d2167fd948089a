"""What a run minimises and in which unit it reports: read from the model, never guessed.

Every :class:`flowlib.FlowModel` states its objective: ``model.loss(x)``, one value per sample,
in ``model.loss_unit`` ("nats" for vector flows, -log p(x); "bits/dim" for image models, the
same optimum divided by D ln 2). :func:`fit <flowlib.train.fit>` minimises the batch mean of it,
reports training and validation figures in that unit, and a gradient clip therefore acts on the
gradient of that figure. ``loss_fn(model, x) -> scalar`` replaces it (unit "loss").

A conditional model's batches are pairs (:class:`~flowlib.train.batches.Pair`): its figure is
``model.loss(x, context)``, and a ``loss_fn`` receives the pair as its batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import Tensor, nn

from flowlib._checks import FlowInputError
from flowlib.train.batches import Pair, size

__all__ = ["Objective", "LossModule"]

LossFn = Callable[[nn.Module, Tensor], Tensor]


@dataclass(frozen=True)
class Objective:
    """The scalar to minimise for a batch, and the sum to report over an evaluation set."""

    unit: str  #: "nats", "bits/dim", ... as the model states, or "loss" for a custom loss_fn
    loss_fn: LossFn | None = None

    @classmethod
    def of(cls, model: object, loss_fn: LossFn | None) -> Objective:
        """The model's own objective, or ``loss_fn``'s; a model that states none is refused."""
        if not isinstance(model, nn.Module):
            raise FlowInputError(f"fit: expected an nn.Module to train, got {type(model).__name__}")
        if loss_fn is not None:
            if not callable(loss_fn):
                raise FlowInputError(f"fit: loss_fn must be a function (model, x) -> scalar, got {loss_fn!r}")
            return cls("loss", loss_fn)
        unit = getattr(model, "loss_unit", None)
        if not callable(getattr(model, "loss", None)) or not isinstance(unit, str):
            raise FlowInputError(
                f"fit: {type(model).__name__} does not say what training minimises: it needs a method "
                "loss(x) (one value per sample) and a loss_unit such as 'nats', as every flowlib.FlowModel "
                "has (its log_prob gives loss = -log_prob). For any other model pass "
                "loss_fn=lambda model, x: <a scalar to minimise>.")
        return cls(unit)

    @property
    def short(self) -> str:
        """The unit as the progress bar shows it."""
        return {"bits/dim": "bpd"}.get(self.unit, self.unit)

    def loss(self, model: nn.Module, x: Tensor | Pair) -> Tensor:
        """A scalar to minimise for one batch: the mean of ``model.loss(x)`` (or ``loss_fn``'s)."""
        if self.loss_fn is not None:
            return self.loss_fn(model, x)
        return (model.loss(*x) if isinstance(x, Pair) else model.loss(x)).mean()

    def total(self, model: nn.Module, x: Tensor | Pair) -> Tensor:
        """The reported figure summed over the batch in float64, so batches of any size average right."""
        n = size(x)
        if self.loss_fn is not None:
            return self.loss_fn(model, x).double() * n
        v = (model.loss(*x) if isinstance(x, Pair) else model.loss(x)).double()
        return v.sum() if v.dim() else v * n


class LossModule(nn.Module):
    """model + objective behind one ``forward``: the module DistributedDataParallel wraps.

    DDP averages gradients through hooks that its own ``forward`` arms; ``model.loss`` is not
    ``forward``, so calling it on ``ddp.module`` would bypass DDP and the processes' gradients
    would never be averaged. With the whole loss inside this ``forward``, DDP sees an ordinary
    forward pass. Without DDP the module is called directly, so both paths run the same code.
    """

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: Tensor | Pair) -> Tensor:
        return self.objective.loss(self.model, x)
