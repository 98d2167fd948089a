"""The data of a run: checked once at the door, then visited in a deterministic, resumable order.

A tensor is visited in an order that is a pure function of (seed, epoch), so the position in the
data is two numbers, the epoch and the samples drawn in it, which the run's state stores: a
resumed run draws exactly the batches the uninterrupted one would have drawn. A DataLoader's
iterator has no such position; a resumed epoch skips the batches already seen, which restarts at
the same place only if the loader's order is itself reproducible.

A conditional model p(x | c) trains on pairs: the data is ``(x, context)``, two tensors with a row
each per sample (visited in the same order), or a loader of ``(x, context, ...)`` batches; every
batch is then a :class:`Pair`. An unconditional model takes x alone (a loader's labels are dropped).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from flowlib._checks import FlowInputError
from flowlib.core import check_data

__all__ = ["derive_seed", "Pair", "TensorBatches", "LoaderBatches", "batches_of", "check_source",
           "eval_batches", "first", "place", "size"]


class Pair(NamedTuple):
    """A batch (or a data set) of samples x with their contexts c: what a conditional model reads."""

    x: Tensor
    context: Tensor

    def to(self, *args: Any, **kwargs: Any) -> Pair:
        """Both tensors moved (and a floating-point context cast) as ``Tensor.to`` would the data."""
        x = self.x.to(*args, **kwargs)
        c = self.context.to(*args, **kwargs) if self.context.is_floating_point() else \
            self.context.to(device=x.device, non_blocking=kwargs.get("non_blocking", False))
        return Pair(x, c)


def size(batch: Tensor | Pair) -> int:
    """The number of samples of a batch."""
    return int((batch.x if isinstance(batch, Pair) else batch).shape[0])


def as_pair(data: Any) -> Pair | None:
    """``(x, context)`` given as a Pair, tuple or list of two tensors, else None."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return Pair(*data)
    return None


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

    def __init__(self, x: Tensor | Pair, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.data = x
        x = x.x if isinstance(x, Pair) else x
        self.x, self.seed, self.rank, self.world = x, seed, rank, world
        self.per_rank = x.shape[0] // world
        if self.per_rank < 1:
            raise FlowInputError(f"fit: {x.shape[0]} training samples cannot be shared by {world} processes")
        self.batch_size = min(batch_size, self.per_rank)
        self.steps_per_epoch: int | None = self.per_rank // self.batch_size

    def epoch(self, epoch: int, start: int) -> Iterator[Tensor | Pair]:
        """The batches of ``epoch`` after the first ``start`` samples (of this process's share)."""
        g = torch.Generator().manual_seed(derive_seed(self.seed, epoch))
        order = torch.randperm(self.x.shape[0], generator=g)[self.rank::self.world][: self.per_rank]
        order = order.to(self.x.device)
        b = self.batch_size
        for i in range(start // b, self.steps_per_epoch or 0):
            rows = order[i * b:(i + 1) * b]
            if isinstance(self.data, Pair):
                yield Pair(self.x[rows], self.data.context[rows.to(self.data.context.device)])
            else:
                yield self.x[rows]


class LoaderBatches:
    """Mini-batches from a DataLoader (or any iterable of tensors or of (tensor, label, ...) tuples).

    The sampler's ``set_epoch`` is called each epoch when it has one (``DistributedSampler``).
    Batches that live on the CPU are checked as they come (cheap there; on a GPU it would
    synchronise every step).
    """

    def __init__(self, loader: Iterable, event_shape: tuple[int, ...] | None, paired: bool = False) -> None:
        self.loader = loader
        self.event_shape = event_shape
        self.paired = paired
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
            where = f"fit: batch {i} of epoch {epoch} of train_data"
            x = pair_of(batch, where) if self.paired else first(batch)
            data = x.x if isinstance(x, Pair) else x
            if data.device.type == "cpu":
                check(data, self.event_shape, where)
            yield x


def batches_of(data: Any, batch_size: int, seed: int, rank: int, world: int,
               event_shape: tuple[int, ...] | None, paired: bool = False) -> TensorBatches | LoaderBatches:
    """The batch source for ``data``: a tensor's (or a pair's) seeded order, or the loader as it is."""
    pair = as_pair(data) if paired else None
    if isinstance(data, Tensor) or pair is not None:
        return TensorBatches(pair if pair is not None else data, batch_size, seed, rank, world)
    return LoaderBatches(data, event_shape, paired)


def pair_of(batch: Any, where: str) -> Pair:
    """A loader's batch (x, context, ...) as a Pair, checked to have a context row per sample."""
    pair = as_pair(batch[:2]) if isinstance(batch, (list, tuple)) else None
    if pair is None:
        raise FlowInputError(f"{where}: a conditional model trains on (x, context) batches, got "
                             f"{type(batch).__name__}; e.g. DataLoader(TensorDataset(x, labels))")
    if pair.context.dim() < 1 or pair.context.shape[0] != pair.x.shape[0]:
        raise FlowInputError(f"{where}: {pair.x.shape[0]} samples but a context of shape "
                             f"{tuple(pair.context.shape)} (one row per sample expected)")
    return pair


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


def check_source(data: Any, event_shape: tuple[int, ...] | None, where: str, paired: bool = False) -> None:
    """A whole tensor (or pair), or a loader's first batch, checked before any training starts.

    ``paired``: the model is conditional and needs (x, context); an unconditional model refuses
    a pair of tensors (it would otherwise be read as a loader of two batches).
    """
    pair = as_pair(data)
    if paired and (isinstance(data, Tensor) or pair is not None):
        if pair is None:
            raise FlowInputError(f"{where}: the model is conditional (p(x | c)): pass (x, context), two "
                                 f"tensors with a row per sample, or a loader of (x, context) batches")
        pair_of(pair, where)
        check(pair.x, event_shape, where)
        if pair.context.is_floating_point() and not bool(torch.isfinite(pair.context).all()):
            raise FlowInputError(f"{where}: expected finite contexts, found NaN or inf values")
        return
    if pair is not None and pair.x.shape[1:] != pair.context.shape[1:]:
        # Two tensors of different kinds: data and labels, not a list of two batches.
        raise FlowInputError(f"{where}: got a pair of tensors (x, context?) but the model is not conditional "
                             f"(no layer reads a context); pass x alone")
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
        x = pair_of(batch, f"{where} (first batch)").x if paired else first(batch)
        check(x, event_shape, f"{where} (first batch)")
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


def eval_batches(data: Any, batch_size: int, rank: int, world: int, name: str = "the evaluation data",
                 paired: bool = False) -> Iterator[Tensor | Pair]:
    """Validation or test batches: this process's share of a tensor (or pair) in order, or the loader."""
    pair = as_pair(data) if paired else None
    if pair is not None:
        x, c = pair.x[rank::world], pair.context[rank::world]
        for i in range(0, x.shape[0], batch_size):
            yield Pair(x[i:i + batch_size], c[i:i + batch_size])
    elif isinstance(data, Tensor):
        mine = data[rank::world]
        for i in range(0, mine.shape[0], batch_size):
            yield mine[i:i + batch_size]
    else:
        for i, batch in enumerate(data):
            x = pair_of(batch, f"fit: batch {i} of {name}") if paired else first(batch)
            if size(x) == 0:
                raise FlowInputError(f"fit: batch {i} of {name} is empty (0 samples); "
                                     "every batch needs at least one sample: check the loader's dataset")
            yield x


def place(data: Any, device: torch.device) -> Any:
    """A tensor under 2 GiB copied to the GPU once, which saves a host-to-device copy per batch."""
    if isinstance(data, Pair):
        return Pair(place(data.x, device), place(data.context, device))
    if isinstance(data, Tensor) and device.type == "cuda" and data.device != device \
            and data.element_size() * data.nelement() < 2**31:
        return data.to(device)
    return data
