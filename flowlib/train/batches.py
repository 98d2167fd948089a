"""The data of a run: checked once at the door, then visited in a deterministic, resumable order.

A tensor is visited in an order that is a pure function of (seed, epoch), so the position in the
data is two numbers, the epoch and the samples drawn in it, which the run's state stores: a
resumed run draws exactly the batches the uninterrupted one would have drawn. A DataLoader's
iterator has no such position; a resumed epoch skips the batches already seen, which restarts at
the same place only if the loader's order is itself reproducible.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from flowlib._checks import FlowInputError
from flowlib.core import check_data

__all__ = ["derive_seed", "TensorBatches", "LoaderBatches", "batches_of", "check_source", "eval_batches",
           "first", "place"]


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from several integers (NumPy's SeedSequence hashing).

    >>> derive_seed(0, 1) == derive_seed(0, 1) != derive_seed(1, 0)
    True
    """
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class TensorBatches:
    """Mini-batches of a tensor in an order that is a pure function of (seed, epoch).

    Each epoch draws a permutation from a generator seeded with (seed, epoch). Under DDP each of
    the ``world`` processes takes an equal, disjoint share of the same permutation (every
    ``world``-th index, as ``DistributedSampler`` does); the last incomplete batch is dropped so
    that every step sees a full batch on every process.
    """

    def __init__(self, x: Tensor, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.x, self.seed, self.rank, self.world = x, seed, rank, world
        self.per_rank = x.shape[0] // world
        if self.per_rank < 1:
            raise FlowInputError(f"fit: {x.shape[0]} training samples cannot be shared by {world} processes")
        self.batch_size = min(batch_size, self.per_rank)
        self.steps_per_epoch: int | None = self.per_rank // self.batch_size

    def epoch(self, epoch: int, start: int) -> Iterator[Tensor]:
        """The batches of ``epoch`` after the first ``start`` samples (of this process's share)."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        order = torch.randperm(self.x.shape[0], generator=g)[self.rank::self.world][: self.per_rank]
        order = order.to(self.x.device)
        b = self.batch_size
        for i in range(start // b, self.steps_per_epoch or 0):
            yield self.x[order[i * b:(i + 1) * b]]


class LoaderBatches:
    """Mini-batches from a DataLoader (or any iterable of tensors or of (tensor, label, ...) tuples).

    The sampler's ``set_epoch`` is called each epoch when it has one (``DistributedSampler``).
    Batches that live on the CPU are checked as they come (cheap there; on a GPU it would
    synchronise every step).
    """

    def __init__(self, loader: Iterable, event_shape: tuple[int, ...] | None) -> None:
        self.loader = loader
        self.event_shape = event_shape
        try:
            self.steps_per_epoch: int | None = len(loader)  # type: ignore[arg-type]
        except TypeError:
            self.steps_per_epoch = None

    def epoch(self, epoch: int, start: int) -> Iterator[Tensor]:
        """The batches of ``epoch`` after the first ``start`` samples."""
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        # Resuming mid-epoch: the uninterrupted run drew the loader's seeds from torch's generator
        # at the start of the epoch, before the checkpoint's state was taken; drawing them again
        # now would shift every later random number.
        saved = torch.get_rng_state() if start > 0 else None
        batches = iter(self.loader)
        samples = seen = 0
        while samples < start:
            batch = next(batches, None)
            if batch is None:
                break
            samples += first(batch).shape[0]
            seen += 1
        if saved is not None:
            torch.set_rng_state(saved)
        for i, batch in enumerate(batches, start=seen):
            x = first(batch)
            if x.device.type == "cpu":
                check(x, self.event_shape, f"fit: batch {i} of epoch {epoch} of train_data")
            yield x


def batches_of(data: Any, batch_size: int, seed: int, rank: int, world: int,
               event_shape: tuple[int, ...] | None) -> TensorBatches | LoaderBatches:
    """The batch source for ``data``: a tensor's seeded order, or the loader as it is."""
    if isinstance(data, Tensor):
        return TensorBatches(data, batch_size, seed, rank, world)
    return LoaderBatches(data, event_shape)


def first(batch: Any) -> Tensor:
    """The data of a batch: the tensor itself, or the first item of (x, y, ...)."""
    if isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise FlowInputError(f"fit: a batch must be a tensor or a (tensor, ...) tuple, "
                             f"got {type(batch).__name__}")
    return batch


def check(x: Tensor, event_shape: tuple[int, ...] | None, where: str) -> None:
    """Shape, dtype and finiteness (:func:`flowlib.core.check_data`), for models with or without a shape."""
    if isinstance(x, Tensor) and x.dim() >= 1 and x.shape[0] == 0:
        # A model would fail deep inside (a reshape of 0 elements), far from the cause.
        raise FlowInputError(f"{where} is empty (0 samples, shape {tuple(x.shape)}); every batch needs at "
                             "least one sample: check the loader's dataset, sampler or filter")
    if event_shape is not None:
        check_data(x, event_shape, x.device, where)
        return
    if not isinstance(x, Tensor):
        raise FlowInputError(f"{where}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 2:
        raise FlowInputError(f"{where}: expected a batch of shape (batch, ...), got {tuple(x.shape)}")
    if not x.is_floating_point():
        raise FlowInputError(f"{where}: expected a floating-point tensor, got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise FlowInputError(f"{where}: expected finite data, found NaN or inf values")


def check_source(data: Any, event_shape: tuple[int, ...] | None, where: str) -> None:
    """A whole tensor, or a loader's first batch, checked before any training starts."""
    if isinstance(data, Tensor):
        if data.dim() >= 1 and data.shape[0] == 0:
            raise FlowInputError(f"{where}: the data is empty")
        check(data, event_shape, where)
    elif _plain_values(data):
        # Iterating a list of numbers (or an array) would give numbers, not batches.
        raise FlowInputError(f"{where} is a {type(data).__name__} of values; expected a torch.Tensor of "
                             "shape (batch, ...) or a DataLoader: convert it with "
                             "torch.as_tensor(data, dtype=torch.float32)")
    elif isinstance(data, Iterable):
        try:
            batch = next(iter(data))
        except StopIteration:
            raise FlowInputError(f"{where}: the data loader yields no batches") from None
        check(first(batch), event_shape, f"{where} (first batch)")
    else:
        raise FlowInputError(f"{where}: expected a tensor or a DataLoader, got {type(data).__name__}")


def _plain_values(data: Any) -> bool:
    """A list, tuple or NumPy array of numbers (not an iterable of batch tensors)."""
    if isinstance(data, np.ndarray):
        return True
    if isinstance(data, (list, tuple)) and data:
        item = data[0]
        return not isinstance(item[0] if isinstance(item, (list, tuple)) and item else item, Tensor)
    return False


def eval_batches(data: Any, batch_size: int, rank: int, world: int, name: str = "the evaluation data"
                 ) -> Iterator[Tensor]:
    """Validation or test batches: this process's share of a tensor in order, or the whole loader."""
    if isinstance(data, Tensor):
        mine = data[rank::world]
        for i in range(0, mine.shape[0], batch_size):
            yield mine[i:i + batch_size]
    else:
        for i, batch in enumerate(data):
            x = first(batch)
            if x.dim() >= 1 and x.shape[0] == 0:
                raise FlowInputError(f"fit: batch {i} of {name} is empty (0 samples); "
                                     "every batch needs at least one sample: check the loader's dataset")
            yield x


def place(data: Any, device: torch.device) -> Any:
    """A tensor under 2 GiB copied to the GPU once, which saves a host-to-device copy per batch."""
    if isinstance(data, Tensor) and device.type == "cuda" and data.device != device \
            and data.element_size() * data.nelement() < 2**31:
        return data.to(device)
    return data
