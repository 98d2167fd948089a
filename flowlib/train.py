"""fit(): the one training loop of the course, by maximum likelihood.

A flow is trained by minimising the negative log-likelihood of the data,

    L(theta) = -1/N sum_n log p_X(x_n; theta),

reported in bits per dimension, nll / (D ln 2), the unit image papers use (Dinh et al.,
2017; Kingma & Dhariwal, 2018). ``fit`` needs only a model with ``log_prob(x)`` (any
:class:`flowlib.FlowModel`); a model that also has ``bits_per_dim(x)`` (the image models,
which correct for dequantization) is trained and reported with that instead.

What the loop does for you, each for a reason met in practice:

- the device is chosen (CUDA if present, else CPU) and the model and batches moved there;
- the learning rate warms up linearly, then follows a cosine (or stays constant): flows
  with unclamped scales often blow up in the first steps without a warm-up;
- gradients are clipped by norm, and a NaN/inf loss or gradient stops training with a
  :class:`TrainingError` that names the step, before the bad update touches the weights;
- mixed precision (bf16, or fp16 with a gradient scaler) on CUDA only;
- checkpoints are atomic and hold everything needed to continue *exactly*: weights,
  optimizer, step, random-generator states and the position in the data order, so an
  interrupted run resumed from its checkpoint ends with the same parameters as one that
  was never interrupted (bit for bit on a CPU);
- the validation figure is tracked, the best weights kept and restored at the end, with
  optional early stopping; the test figure of the selected model is measured last;
- under ``torchrun`` it trains with PyTorch's DistributedDataParallel.

Example::

    result = fit(model, x_train, val_data=x_val, seconds=120, checkpoint="runs/moons.pt")
    result.best_val, result.losses[-1]
"""

from __future__ import annotations

import math
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from flowlib.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from flowlib.core import FlowInputError, check_data

__all__ = ["fit", "FitResult", "TrainingError"]

_FORMAT = "flowlib.fit/1"
_LN2 = math.log(2.0)


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN). ``step`` and the partial ``result`` are attached."""

    def __init__(self, message: str, step: int, result: FitResult | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.result = result


@dataclass
class FitResult:
    """What a call to :func:`fit` did: curves, the selected model's figures, the budget used.

    ``losses`` and ``val`` are in the unit named by ``metric``: ``"bits/dim"`` for models
    with a dimension, ``"nll"`` (nats per sample) otherwise, ``"loss"`` for a custom
    ``loss_fn``. They cover the whole run, resumed parts included.
    """

    metric: str
    losses: list[float] = field(default_factory=list)  #: training figure, one per optimizer step
    lrs: list[float] = field(default_factory=list)  #: learning rate used at each step
    val_steps: list[int] = field(default_factory=list)  #: steps at which validation ran
    val: list[float] = field(default_factory=list)  #: validation figure at those steps
    best_val: float | None = None
    best_step: int | None = None  #: the step whose weights were selected (restored)
    test: float | None = None  #: test figure of the selected model, if test_data was given
    steps: int = 0  #: optimizer steps done, in total
    epochs: float = 0.0  #: passes over the training data (fractional), in total
    seconds: float = 0.0  #: training time, summed over resumed runs
    wall_time: float = 0.0  #: seconds this call took, evaluation and checkpoints included
    stop_reason: str = ""  #: "steps", "epochs", "seconds", "early_stopping" or "interrupted"
    resumed_from: int | None = None  #: the checkpoint's step if this call resumed
    device: str = "cpu"
    amp: str | None = None
    world_size: int = 1
    checkpoint: str | None = None

    def __repr__(self) -> str:
        parts = [f"steps={self.steps}", f"stop_reason={self.stop_reason!r}"]
        if self.losses:
            tail = self.losses[-min(len(self.losses), 20):]
            parts.append(f"train {self.metric}={sum(tail) / len(tail):.4f}")
        if self.best_val is not None:
            parts.append(f"best val={self.best_val:.4f} (step {self.best_step})")
        if self.test is not None:
            parts.append(f"test={self.test:.4f}")
        parts.append(f"seconds={self.seconds:.1f}")
        return "FitResult(" + ", ".join(parts) + ")"

    def plot(self, ax: Any = None) -> Any:
        """The training curve and the validation points on one axis (matplotlib)."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 3.5))
        ax.plot(range(1, len(self.losses) + 1), self.losses, lw=0.8, alpha=0.7, label="train")
        if self.val:
            ax.plot(self.val_steps, self.val, "o-", ms=3, label="validation")
        ax.set_xlabel("step")
        ax.set_ylabel(self.metric)
        ax.legend()
        return ax


# -- what is minimised and what is reported ------------------------------------------------
class _Objective:
    """The loss to minimise and the figure to report, chosen from what the model offers."""

    def __init__(self, model: nn.Module, loss_fn: Callable[[nn.Module, Tensor], Tensor] | None) -> None:
        self.loss_fn = loss_fn
        self.use_bpd_method = loss_fn is None and callable(getattr(model, "bits_per_dim", None))
        self.dim = _model_dim(model)
        if loss_fn is not None:
            self.name, self.scale = "loss", 1.0
        elif self.use_bpd_method:
            self.name, self.scale = "bits/dim", 1.0
        elif self.dim is not None:
            # Minimise nats, report bits/dim: the same optimum, a scale factor apart.
            self.name, self.scale = "bits/dim", 1.0 / (self.dim * _LN2)
        else:
            self.name, self.scale = "nll", 1.0

    def loss(self, model: nn.Module, x: Tensor) -> Tensor:
        """A scalar to minimise for one batch."""
        if self.loss_fn is not None:
            return self.loss_fn(model, x)
        if self.use_bpd_method:
            return model.bits_per_dim(x).mean()
        return -model.log_prob(x).mean()

    def metric_sum(self, model: nn.Module, x: Tensor) -> Tensor:
        """The reported figure summed over the batch (so batches of any size average correctly)."""
        if self.loss_fn is not None:
            return self.loss_fn(model, x).double() * x.shape[0]
        if self.use_bpd_method:
            v = model.bits_per_dim(x).double()
            return v.sum() if v.dim() else v * x.shape[0]
        return -model.log_prob(x).double().sum() * self.scale

    @property
    def short(self) -> str:
        return {"bits/dim": "bpd"}.get(self.name, self.name)


def _model_dim(model: nn.Module) -> int | None:
    dim = getattr(model, "dim", None)
    if isinstance(dim, int) and dim > 0:
        return dim
    shape = getattr(model, "event_shape", None)
    if shape is not None and len(shape) > 0:
        return math.prod(int(s) for s in shape)
    return None


class _LossModule(nn.Module):
    """model + objective behind one ``forward``, the thing DistributedDataParallel wraps.

    DDP averages gradients through hooks that its own ``forward`` arms; ``log_prob`` is not
    ``forward``, so calling ``ddp.module.log_prob`` would bypass DDP and the ranks' gradients
    would never be averaged (and DDP would complain at the next step). Putting the whole loss
    inside this module's ``forward`` lets DDP see the computation as an ordinary forward pass.
    Without DDP the module is called directly, so both paths run the same code.
    """

    def __init__(self, model: nn.Module, objective: _Objective) -> None:
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, x: Tensor) -> Tensor:
        return self.objective.loss(self.model, x)


# -- the data: a deterministic, resumable, sharded order -----------------------------------
def _derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from several integers (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) % 2**63 for p in parts]).generate_state(2, np.uint64)[0] >> 1)


class _TensorBatches:
    """Mini-batches of a tensor in an order that is a pure function of (seed, epoch).

    Each epoch draws a permutation from a generator seeded with (seed, epoch), so the
    position in the data is just (epoch, batch index): a checkpoint that stores those two
    numbers restarts the data exactly where it stopped, which a DataLoader's iterator
    cannot. Under DDP each rank takes an equal, disjoint share of the same permutation
    (every ``world``-th index, like ``DistributedSampler``); the last incomplete batch is
    dropped so every step sees a full batch on every rank.
    """

    def __init__(self, x: Tensor, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.x, self.seed, self.rank, self.world = x, seed, rank, world
        self.per_rank = x.shape[0] // world
        if self.per_rank < 1:
            raise FlowInputError(f"fit: {x.shape[0]} training samples cannot be shared by {world} processes")
        self.batch_size = min(batch_size, self.per_rank)
        self.steps_per_epoch: int | None = self.per_rank // self.batch_size

    def epoch(self, epoch: int, start: int) -> Iterator[Tensor]:
        g = torch.Generator().manual_seed(_derive_seed(self.seed, epoch))
        order = torch.randperm(self.x.shape[0], generator=g)[self.rank::self.world][: self.per_rank]
        order = order.to(self.x.device)
        b = self.batch_size
        for i in range(start, self.steps_per_epoch):
            yield self.x[order[i * b:(i + 1) * b]]


class _LoaderBatches:
    """Mini-batches from a DataLoader (or any iterable of batches).

    A resumed epoch skips the batches already seen; the order is the same only if the
    loader's is (``shuffle=False``, a seeded generator, or a sampler with ``set_epoch``, which
    is called each epoch). For exact resumption pass a tensor instead.
    """

    def __init__(self, loader: Iterable, event_shape: tuple[int, ...] | None) -> None:
        self.loader = loader
        self.event_shape = event_shape
        try:
            self.steps_per_epoch: int | None = len(loader)  # type: ignore[arg-type]
        except TypeError:
            self.steps_per_epoch = None

    def epoch(self, epoch: int, start: int) -> Iterator[Tensor]:
        sampler = getattr(self.loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        # Resuming mid-epoch: the uninterrupted run drew the loader's seeds from torch's
        # generator at the start of the epoch, before the checkpoint's state was taken;
        # drawing them again now would shift every later random number.
        saved = torch.get_rng_state() if start > 0 else None
        batches = iter(self.loader)
        for _ in range(start):
            next(batches, None)
        if saved is not None:
            torch.set_rng_state(saved)
        for i, batch in enumerate(batches, start=start):
            x = _first(batch)
            if x.device.type == "cpu":  # cheap here; on a GPU it would synchronise every step
                _check(x, self.event_shape, f"fit: batch {i} of epoch {epoch} of train_data")
            yield x


def _first(batch: Any) -> Tensor:
    """The data of a batch: the tensor itself, or the first item of (x, y, ...)."""
    if isinstance(batch, (list, tuple)) and batch:
        batch = batch[0]
    if not isinstance(batch, Tensor):
        raise FlowInputError(
            f"fit: a batch must be a tensor or a (tensor, ...) tuple, got {type(batch).__name__}")
    return batch


def _check(x: Tensor, event_shape: tuple[int, ...] | None, where: str) -> None:
    """Shape, dtype and finiteness at the door (core.check_data), for models with or without a shape."""
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


def _check_source(data: Any, event_shape: tuple[int, ...] | None, where: str) -> None:
    if isinstance(data, Tensor):
        if data.dim() >= 1 and data.shape[0] == 0:
            raise FlowInputError(f"{where}: the data is empty")
        _check(data, event_shape, where)
    elif isinstance(data, Iterable):
        it = iter(data)
        try:
            first = next(it)
        except StopIteration:
            raise FlowInputError(f"{where}: the data loader yields no batches") from None
        _check(_first(first), event_shape, f"{where} (first batch)")
    else:
        raise FlowInputError(f"{where}: expected a tensor or a DataLoader, got {type(data).__name__}")


def _eval_batches(data: Any, batch_size: int, rank: int, world: int) -> Iterator[Tensor]:
    """Validation/test batches: a rank's share of a tensor in order, or the whole loader."""
    if isinstance(data, Tensor):
        mine = data[rank::world]
        for i in range(0, mine.shape[0], batch_size):
            yield mine[i:i + batch_size]
    else:
        for batch in data:
            yield _first(batch)


# -- devices, precision, processes -----------------------------------------------------------
@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0
    created_group: bool = False

    @property
    def on(self) -> bool:
        return self.world > 1


def _setup_distributed(distributed: bool | str, device: str | torch.device) -> _Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if distributed is False or (distributed == "auto" and world <= 1):
        return _Dist()
    import torch.distributed as dist

    if not dist.is_available():
        raise FlowInputError("fit: torch.distributed is not available in this PyTorch build")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and str(device) in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local_rank)
    created = False
    if not dist.is_initialized():
        # nccl moves CUDA tensors between GPUs; gloo is the CPU backend.
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        created = True
    return _Dist(dist.get_world_size(), dist.get_rank(), local_rank, created)


def _resolve_device(device: str | torch.device, dist_info: _Dist) -> torch.device:
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info.local_rank if dist_info.on else torch.cuda.current_device())
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", dist_info.local_rank if dist_info.on else torch.cuda.current_device())
    return dev


def _resolve_amp(amp: bool | str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype, or None for full precision. Mixed precision is for CUDA only."""
    if amp in (False, None, "off", "no", "fp32", "float32"):
        return None
    if amp not in (True, "auto", "bf16", "bfloat16", "fp16", "float16"):
        raise FlowInputError(f"fit: amp must be 'auto', 'bf16', 'fp16' or False, got {amp!r}")
    if device.type != "cuda":
        if amp not in (True, "auto"):
            warnings.warn(f"fit: amp={amp!r} ignored on {device.type}: mixed precision is used on CUDA only",
                          stacklevel=3)
        return None
    if amp in ("fp16", "float16"):
        return torch.float16
    if amp in ("bf16", "bfloat16") or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


class _StopOnInterrupt:
    """The first Ctrl-C (or a notebook's stop button) ends training after the current step.

    The loop then saves a consistent checkpoint and returns normally, so a later call with
    ``resume=True`` continues exactly there. A second Ctrl-C interrupts at once. Only in the
    main thread (where Python delivers signals) and not under DDP, where torchrun manages
    the signals of its workers.
    """

    def __init__(self, active: bool) -> None:
        self.active = active and threading.current_thread() is threading.main_thread()
        self.requested = False
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> _StopOnInterrupt:
        if self.active:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self._previous)


def _lr_factor(step: int, progress: float, warmup_steps: int, schedule: str) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to 0 over the budget (or constant)."""
    warm = min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0
    if schedule == "constant":
        return warm
    return warm * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


def _param_dtype(model: nn.Module) -> torch.dtype | None:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return None


def _to_device(x: Tensor, device: torch.device, dtype: torch.dtype | None,
               memory_format: torch.memory_format | None = None) -> Tensor:
    x = x.to(device=device, dtype=dtype or x.dtype, non_blocking=True)
    if memory_format is not None and x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)
    return x


def _fused_ok(model: nn.Module, device: torch.device, fused: bool | str) -> bool:
    """Whether AdamW can run as one fused kernel: floating-point parameters on a CPU or CUDA."""
    if fused is False:
        return False
    params = [p for p in model.parameters() if p.requires_grad]
    ok = bool(params) and device.type in ("cpu", "cuda") and all(
        p.is_floating_point() and p.device.type == device.type for p in params)
    if fused is True and not ok:
        raise FlowInputError(f"fit: fused=True needs floating-point parameters on a CPU or CUDA device, "
                             f"got the model on {device}")
    return ok


# -- the loop ------------------------------------------------------------------------------------
def fit(
    model: nn.Module,
    train_data: Tensor | Iterable,
    *,
    val_data: Tensor | Iterable | None = None,
    test_data: Tensor | Iterable | None = None,
    epochs: int | None = None,
    steps: int | None = None,
    seconds: float | None = None,
    batch_size: int = 256,
    lr: float = 1e-3,
    warmup_steps: int | None = None,
    schedule: str = "cosine",
    weight_decay: float = 0.0,
    clip_grad_norm: float | None = 10.0,
    device: str | torch.device = "auto",
    amp: bool | str | None = "auto",
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    eval_every: int | None = None,
    eval_batch_size: int | None = None,
    early_stopping_patience: int | None = None,
    restore_best: bool = True,
    progress: bool = True,
    seed: int | None = None,
    loss_fn: Callable[[nn.Module, Tensor], Tensor] | None = None,
    distributed: bool | str = "auto",
    fused: bool | str = "auto",
    channels_last: bool = False,
) -> FitResult:
    """Train ``model`` by maximum likelihood on ``train_data`` and return a :class:`FitResult`.

    Budget (give at least one; training stops at the first reached, counted over resumes):
        epochs, steps: passes over the data / optimizer steps.
        seconds: wall-clock seconds of training ("train for 120 s"). The cosine schedule then
            follows the elapsed time, so such runs are not bit-reproducible.

    Data:
        train_data, val_data, test_data: a tensor (batch, ...) or a DataLoader yielding tensors
            or (tensor, label) pairs. A tensor is visited in a seeded order that resumes
            exactly; it is moved to the GPU once if it is under 2 GiB.
        batch_size: samples per step (per process under DDP). eval_batch_size: default 4x.

    Optimisation:
        lr, weight_decay: AdamW (Adam when weight_decay=0; Loshchilov & Hutter, 2019).
        warmup_steps: linear warm-up length; default min(100, 10% of the budget's steps).
        schedule: "cosine" (to 0 at the end of the budget) or "constant" after the warm-up.
        clip_grad_norm: maximal global gradient norm (None: no clipping).
        amp: mixed precision on CUDA: "auto" (bf16 where supported, else fp16 with a
            gradient scaler), "bf16", "fp16" or False. Always off on a CPU.
        loss_fn: ``loss_fn(model, x) -> scalar`` to minimise instead of the mean NLL (or
            bits/dim); it is also the validation figure then.
        fused: AdamW as one fused kernel over all parameters: "auto" (whenever the parameters
            are floating point on a CPU or CUDA device), True (insist) or False (torch's
            per-parameter loop). Same update rule; on a CPU the loop over a flow's ~100 small
            tensors costs about 15 % of a step (benchmarks/throughput.py).
        channels_last: image models only: store convolution weights and batches as
            (N, H, W, C) in memory (``torch.channels_last``), which the CPU's convolution
            kernels prefer (+4 to +30 % images/s for a Glow in benchmarks/throughput.py).

    Validation and checkpoints:
        eval_every: validation period in steps (default: an epoch, within 20..1000); also at the end.
        early_stopping_patience: stop after this many validations without improvement.
        restore_best: load the weights with the best validation figure at the end.
        checkpoint: a file path; written atomically every ``checkpoint_every`` steps (default
            ``eval_every``) and at the end. With ``resume=True`` an existing file is loaded and
            training continues where it stopped; ``resume=False`` starts over.
        seed: seeds torch, NumPy and ``random`` and the data order; None keeps the current
            generators (a data seed is then drawn from torch's, so torch.manual_seed suffices).

    Other:
        device: "auto" (CUDA if available, else CPU), or e.g. "cpu", "cuda:0". The model is
            moved there in place.
        progress: a tqdm bar with the training and validation figure (bits/dim for flows).
        distributed: "auto" joins DistributedDataParallel when started by ``torchrun``
            (WORLD_SIZE > 1): gloo on CPU, nccl on CUDA; rank 0 writes checkpoints and shows
            the bar, figures are averaged over ranks.

    A first Ctrl-C (or the notebook's stop button) ends training after the current step and
    returns (``stop_reason="interrupted"``), saving a checkpoint if one is configured.

    Raises:
        FlowInputError: bad arguments, or data of the wrong shape/dtype or with NaN/inf.
        TrainingError: the loss or the gradients became NaN/inf; the weights in memory are
            those before the bad step and the last checkpoint on disk is left intact.
    """
    t_call = time.perf_counter()
    _check_arguments(model, epochs, steps, seconds, batch_size, lr, schedule, weight_decay,
                     clip_grad_norm, eval_every, checkpoint_every, early_stopping_patience)
    event_shape = tuple(int(s) for s in model.event_shape) if getattr(model, "event_shape", None) else None
    if event_shape == ():
        event_shape = None
    if fused not in ("auto", True, False):
        raise FlowInputError(f"fit: fused must be 'auto', True or False, got {fused!r}")
    if not isinstance(channels_last, bool):
        raise FlowInputError(f"fit: channels_last must be True or False, got {channels_last!r}")
    if channels_last and (event_shape is None or len(event_shape) != 3):
        raise FlowInputError(f"fit: channels_last=True is for image models with an event shape (C, H, W), "
                             f"got {event_shape}")

    # Validate every data source at the door, before any process group or device work.
    _check_source(train_data, event_shape, "fit: train_data")
    if val_data is not None:
        _check_source(val_data, event_shape, "fit: val_data")
    if test_data is not None:
        _check_source(test_data, event_shape, "fit: test_data")

    dist_info = _setup_distributed(distributed, device)
    try:
        run = _Run(model, event_shape, dist_info, device=device, amp=amp, lr=lr, weight_decay=weight_decay,
                   loss_fn=loss_fn, seed=seed, checkpoint=checkpoint, resume=resume, fused=fused,
                   channels_last=channels_last)
        run.prepare_data(train_data, val_data, test_data, batch_size, eval_batch_size)
        run.plan(epochs, steps, seconds, warmup_steps, schedule, clip_grad_norm, eval_every,
                 checkpoint_every, early_stopping_patience, restore_best)
        result = run.train(progress)
        result.wall_time = time.perf_counter() - t_call
        return result
    finally:
        if dist_info.created_group:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()


def _check_arguments(model: Any, epochs: Any, steps: Any, seconds: Any, batch_size: Any, lr: Any,
                     schedule: Any, weight_decay: Any, clip: Any, eval_every: Any, checkpoint_every: Any,
                     patience: Any) -> None:
    if not isinstance(model, nn.Module) or not callable(getattr(model, "log_prob", None)):
        raise FlowInputError(f"fit: expected an nn.Module with a log_prob method, got {type(model).__name__}")
    if epochs is None and steps is None and seconds is None:
        raise FlowInputError("fit: give a budget: epochs=..., steps=... or seconds=...")
    for name, v in [("epochs", epochs), ("steps", steps), ("batch_size", batch_size),
                    ("eval_every", eval_every), ("checkpoint_every", checkpoint_every),
                    ("early_stopping_patience", patience)]:
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise FlowInputError(f"fit: {name} must be a positive integer, got {v!r}")
    if seconds is not None and not (isinstance(seconds, (int, float)) and seconds > 0):
        raise FlowInputError(f"fit: seconds must be a positive number, got {seconds!r}")
    if not (isinstance(lr, (int, float)) and lr > 0 and math.isfinite(lr)):
        raise FlowInputError(f"fit: lr must be a positive number, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and weight_decay >= 0):
        raise FlowInputError(f"fit: weight_decay must be >= 0, got {weight_decay!r}")
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
        raise FlowInputError(f"fit: clip_grad_norm must be a positive number or None, got {clip!r}")
    if schedule not in ("cosine", "constant"):
        raise FlowInputError(f"fit: schedule must be 'cosine' or 'constant', got {schedule!r}")


class _Run:
    """The state of one training run: what a checkpoint saves and a resume restores."""

    def __init__(self, model: nn.Module, event_shape: tuple[int, ...] | None, dist_info: _Dist, *,
                 device: str | torch.device, amp: Any, lr: float, weight_decay: float,
                 loss_fn: Any, seed: int | None, checkpoint: Any, resume: bool, fused: bool | str = "auto",
                 channels_last: bool = False) -> None:
        self.model, self.event_shape, self.dist = model, event_shape, dist_info
        self.device = _resolve_device(device, dist_info)
        self.amp_dtype = _resolve_amp(amp, self.device)
        self.memory_format = torch.channels_last if channels_last else None
        if self.memory_format is not None:
            self.model.to(self.device, memory_format=self.memory_format)
        else:
            self.model.to(self.device)
        self.dtype = _param_dtype(model)
        self.objective = _Objective(model, loss_fn)
        self.loss_module = _LossModule(model, self.objective)
        # One kernel for the whole update instead of torch's Python loop over the parameters.
        self.fused = _fused_ok(model, self.device, fused)
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay,
                                           fused=True if self.fused else None)
        self.base_lr = lr
        self.scaler = None
        if self.amp_dtype == torch.float16:
            # fp16 overflows where bf16 does not: scale the loss, skip steps with inf gradients.
            self.scaler = torch.amp.GradScaler("cuda")
        self.checkpoint = Path(checkpoint) if checkpoint is not None else None
        self.is_main = dist_info.rank == 0

        # Counters and curves (all restored by a resume).
        self.step = self.epoch = self.pos = 0
        self.seconds_before = 0.0
        self.history: dict[str, list] = {"losses": [], "lrs": [], "val_steps": [], "val": []}
        self.best_val: float | None = None
        self.best_step: int | None = None
        self.best_state: dict[str, Tensor] | None = None
        self.bad_evals = 0
        self.resumed_from: int | None = None
        self.last_saved: int | None = None

        state = None
        if self.checkpoint is not None and resume and self.checkpoint.exists():
            state = load_checkpoint(self.checkpoint)
        if state is not None:
            self._load(state, seed)
        else:
            self.data_seed = self._fresh_seed(seed)

    # -- set-up ---------------------------------------------------------------------------
    def _fresh_seed(self, seed: int | None) -> int:
        if seed is not None:
            # Each rank its own stream (noise, dropout), one shared data order.
            s = _derive_seed(seed, self.dist.rank) if self.dist.on else seed
            torch.manual_seed(s)
            np.random.seed(s % 2**32)  # noqa: NPY002  (the global generator user code draws from)
            import random

            random.seed(s)
            data_seed = seed
        else:
            data_seed = int(torch.randint(0, 2**62, (1,)).item())
        if self.dist.on:
            import torch.distributed as dist

            t = torch.tensor([data_seed], dtype=torch.int64, device=self._comm_device)
            dist.broadcast(t, src=0)
            data_seed = int(t.item())
        return data_seed

    @property
    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def prepare_data(self, train: Any, val: Any, test: Any, batch_size: int,
                     eval_batch_size: int | None) -> None:
        def place(x: Any) -> Any:
            # One copy of a modest tensor to the GPU saves a host-to-device transfer per step.
            if isinstance(x, Tensor) and self.device.type == "cuda" and x.device != self.device \
                    and x.element_size() * x.nelement() < 2**31:
                return x.to(self.device)
            return x

        if isinstance(train, Tensor):
            self.batches: _TensorBatches | _LoaderBatches = _TensorBatches(
                place(train), batch_size, self.data_seed, self.dist.rank, self.dist.world)
        else:
            self.batches = _LoaderBatches(train, self.event_shape)
        self.val_data, self.test_data = place(val), place(test)
        self.eval_batch_size = eval_batch_size or 4 * batch_size

    def plan(self, epochs: int | None, steps: int | None, seconds: float | None, warmup_steps: int | None,
             schedule: str, clip: float | None, eval_every: int | None, checkpoint_every: int | None,
             patience: int | None, restore_best: bool) -> None:
        spe = self.batches.steps_per_epoch
        totals = [t for t in (steps, epochs * spe if epochs and spe else None) if t is not None]
        self.total_steps = min(totals) if totals else None
        self.epochs, self.steps_budget, self.seconds_budget = epochs, steps, seconds
        if warmup_steps is None:
            warmup_steps = min(100, self.total_steps // 10) if self.total_steps else 100
        self.warmup_steps, self.schedule, self.clip = int(warmup_steps), schedule, clip
        self.eval_every = eval_every or min(max(spe or 500, 20), 1000)
        self.checkpoint_every = checkpoint_every or self.eval_every
        self.patience, self.restore_best = patience, restore_best

    # -- checkpoints ------------------------------------------------------------------------
    def _state(self) -> dict[str, Any]:
        rng = [rng_state()]
        if self.dist.on:
            import torch.distributed as dist

            rng = [None] * self.dist.world
            dist.all_gather_object(rng, rng_state())
        h = self.history
        return {
            "format": _FORMAT,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            # The schedule is a pure function of (step, progress): the step is its state.
            "schedule": {"name": self.schedule, "warmup_steps": self.warmup_steps, "lr": self.base_lr,
                         "total_steps": self.total_steps},
            "step": self.step, "epoch": self.epoch, "pos": self.pos, "data_seed": self.data_seed,
            "seconds": self._elapsed(),
            "rng": rng,
            "history": {"losses": torch.tensor(h["losses"], dtype=torch.float64),
                        "lrs": torch.tensor(h["lrs"], dtype=torch.float64),
                        "val_steps": torch.tensor(h["val_steps"], dtype=torch.int64),
                        "val": torch.tensor(h["val"], dtype=torch.float64)},
            "best": {"value": self.best_val, "step": self.best_step, "bad_evals": self.bad_evals,
                     "model": self.best_state},
            "world_size": self.dist.world,
        }

    def save(self) -> None:
        if self.checkpoint is None or self.last_saved == self.step:
            return
        state = self._state()  # collective under DDP: every rank takes part
        if self.is_main:
            save_checkpoint(state, self.checkpoint)
        self.last_saved = self.step

    def _load(self, state: dict[str, Any], seed: int | None) -> None:
        where = f"fit: checkpoint {self.checkpoint}"
        if state.get("format") != _FORMAT:
            raise FlowInputError(
                f"{where} was not written by flowlib.train.fit; pass resume=False to overwrite it")
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise FlowInputError(
                f"{where} does not match this model or optimizer ({err}). "
                "Pass resume=False to start over, or delete the file."
            ) from err
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch, self.pos = int(state["step"]), int(state["epoch"]), int(state["pos"])
        self.data_seed = int(state["data_seed"])
        if seed is not None and self.data_seed != seed:
            warnings.warn(f"{where} was trained with seed={self.data_seed}; continuing with it, not {seed}",
                          stacklevel=4)
        self.seconds_before = float(state["seconds"])
        h = state["history"]
        self.history = {"losses": h["losses"].tolist(), "lrs": h["lrs"].tolist(),
                        "val_steps": [int(s) for s in h["val_steps"].tolist()], "val": h["val"].tolist()}
        best = state["best"]
        self.best_val, self.best_step, self.bad_evals = best["value"], best["step"], int(best["bad_evals"])
        self.best_state = best["model"]
        if self.best_state is not None:
            self.best_state = {k: v.to(self.device) for k, v in self.best_state.items()}
        rng = state["rng"]
        set_rng_state(rng[self.dist.rank] if self.dist.rank < len(rng) else rng[0])
        self.resumed_from = self.last_saved = self.step

    # -- pieces of a step ---------------------------------------------------------------------
    def _elapsed(self) -> float:
        return self.seconds_before + (time.perf_counter() - self._t0)

    def _progress(self) -> float:
        """How far through the budget we are, in [0, 1]: drives the cosine schedule."""
        fractions = []
        if self.total_steps:
            fractions.append(self.step / self.total_steps)
        if self.seconds_budget:
            fractions.append(self._elapsed() / self.seconds_budget)
        if not fractions and self.epochs:
            fractions.append(self.epoch / self.epochs)
        return max(fractions) if fractions else 0.0

    def _all_mean(self, t: Tensor) -> Tensor:
        if self.dist.on:
            import torch.distributed as dist

            t = t.to(self._comm_device)
            dist.all_reduce(t)
            t = t / self.dist.world
        return t

    def _train_step(self, x: Tensor, ddp: nn.Module) -> tuple[float, float, bool]:
        """One optimizer step; returns (loss, grad norm, stop requested anywhere)."""
        lr = self.base_lr * _lr_factor(self.step, self._progress(), self.warmup_steps, self.schedule)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            loss = ddp(x).float()
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        # The norm is computed even without clipping: the NaN guard needs it. With
        # max_norm=inf the gradients are multiplied by exactly 1.
        params = [p for p in self.model.parameters() if p.grad is not None]
        gnorm = torch.nn.utils.clip_grad_norm_(params, self.clip or float("inf")) if params \
            else loss.new_zeros(())
        stop = float(self._interrupt.requested or (
            self.seconds_budget is not None and self._elapsed() >= self.seconds_budget))
        # One synchronisation per step for the three figures (and one all-reduce under DDP,
        # so every rank agrees on NaNs and on stopping).
        stats = self._all_mean(torch.stack([loss.detach(), gnorm.detach().float(),
                                            loss.new_tensor(stop)]))
        loss_v, gnorm_v, stop_v = stats.tolist()
        if not math.isfinite(loss_v):
            self._fail(f"the training loss became {loss_v}", lr)
        if not math.isfinite(gnorm_v):
            if self.scaler is None:
                self._fail(f"the gradient norm became {gnorm_v} (the loss was {loss_v:.4g})", lr)
            self._skipped += 1  # fp16 overflow: the scaler skips this step and lowers its scale
            if self._skipped > 50:
                self._fail("the fp16 gradients overflowed 50 steps in a row", lr)
        else:
            self._skipped = 0
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.step += 1
        self.pos += 1
        self.history["losses"].append(loss_v * self.objective.scale)
        self.history["lrs"].append(lr)
        return loss_v * self.objective.scale, gnorm_v, stop_v > 0

    def _fail(self, what: str, lr: float) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        on_disk = ""
        if self.checkpoint is not None:
            on_disk = (f" The last checkpoint ({self.checkpoint}, step {self.last_saved}) is untouched."
                       if self.last_saved is not None else " No checkpoint had been written yet.")
        raise TrainingError(
            f"fit: at step {self.step + 1} (epoch {self.epoch}) {what}. The weights in memory are those "
            f"after step {self.step}, before the bad update.{on_disk} Try a lower learning rate "
            f"(lr={self.base_lr:g} now), a longer warm-up (warmup_steps={self.warmup_steps} now), "
            f"gradient clipping (clip_grad_norm={self.clip} now), clamping the scales of coupling "
            f"layers{', or amp=False' if self.amp_dtype is not None else ''}.",
            step=self.step + 1, result=self._result("error"),
        )

    @torch.no_grad()
    def evaluate(self, data: Any) -> float:
        """The mean figure over ``data`` in full precision, averaged over ranks."""
        was_training = self.model.training
        self.model.eval()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count = 0
        for x in _eval_batches(data, self.eval_batch_size, self.dist.rank, self.dist.world):
            x = _to_device(x, self.device, self.dtype, self.memory_format)
            total += self.objective.metric_sum(self.model, x)
            count += x.shape[0]
        self.model.train(was_training)
        stats = torch.stack([total, total.new_tensor(float(count))])
        if self.dist.on:
            import torch.distributed as dist

            stats = stats.to(self._comm_device)
            dist.all_reduce(stats)
        total_v, count_v = stats.tolist()
        return total_v / max(count_v, 1.0)

    def _validate(self) -> float:
        v = self.evaluate(self.val_data)
        self.history["val_steps"].append(self.step)
        self.history["val"].append(v)
        if self.best_val is None or v < self.best_val:
            self.best_val, self.best_step, self.bad_evals = v, self.step, 0
            self.best_state = {k: t.detach().clone() for k, t in self.model.state_dict().items()}
        else:
            self.bad_evals += 1
        return v

    def _budget_reason(self) -> str | None:
        if self.steps_budget is not None and self.step >= self.steps_budget:
            return "steps"
        spe = self.batches.steps_per_epoch
        if self.epochs is not None and spe and self.step >= self.epochs * spe:
            return "epochs"
        return None

    def _result(self, stop_reason: str) -> FitResult:
        h = self.history
        spe = self.batches.steps_per_epoch
        return FitResult(
            metric=self.objective.name, losses=list(h["losses"]), lrs=list(h["lrs"]),
            val_steps=list(h["val_steps"]), val=list(h["val"]), best_val=self.best_val,
            best_step=self.best_step, steps=self.step,
            epochs=self.step / spe if spe else float(self.epoch), seconds=self._elapsed(),
            stop_reason=stop_reason, resumed_from=self.resumed_from, device=str(self.device),
            amp=str(self.amp_dtype).replace("torch.", "") if self.amp_dtype is not None else None,
            world_size=self.dist.world, checkpoint=str(self.checkpoint) if self.checkpoint else None,
        )

    # -- the loop itself ----------------------------------------------------------------------
    def train(self, show_progress: bool) -> FitResult:
        from tqdm.auto import tqdm

        model = self.model
        was_training = model.training
        # Data was validated once at the door; checking every batch inside log_prob would
        # read the values and synchronise the GPU at every step.
        had_validate = getattr(model, "validate", None)
        if isinstance(had_validate, bool):
            model.validate = False
        self._t0 = time.perf_counter()
        self._skipped = 0
        self._interrupt = _StopOnInterrupt(active=not self.dist.on)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="fit", unit="step", dynamic_ncols=True,
                   disable=not (show_progress and self.is_main))
        stop_reason = self._budget_reason()
        if self.seconds_budget is not None and self.seconds_before >= self.seconds_budget:
            stop_reason = stop_reason or "seconds"
        ema = None
        try:
            model.train()
            ddp = self._wrap_ddp()
            with self._interrupt:
                while stop_reason is None:
                    n_in_epoch = 0
                    for x in self.batches.epoch(self.epoch, self.pos):
                        n_in_epoch += 1
                        x = _to_device(x, self.device, self.dtype, self.memory_format)
                        loss_v, _, stop = self._train_step(x, ddp)
                        ema = loss_v if ema is None else 0.95 * ema + 0.05 * loss_v
                        if self.val_data is not None and self.step % self.eval_every == 0:
                            self._validate()
                            if self.patience is not None and self.bad_evals >= self.patience:
                                stop_reason = "early_stopping"
                        if self.step % self.checkpoint_every == 0:
                            self.save()
                        bar.update(1)
                        if self.step % 10 == 0 or stop_reason:
                            post = {self.objective.short: f"{ema:.4f}"}
                            if self.history["val"]:
                                post["val"] = f"{self.history['val'][-1]:.4f}"
                            bar.set_postfix(post, refresh=False)
                        stop_reason = stop_reason or self._budget_reason()
                        if stop and stop_reason is None:
                            stop_reason = "interrupted" if self._interrupt.requested else "seconds"
                        if stop_reason:
                            break
                    else:
                        if n_in_epoch == 0 and self.pos == 0:
                            raise FlowInputError("fit: train_data yielded no batches in an epoch")
                        self.epoch, self.pos = self.epoch + 1, 0
                        if self.epochs is not None and self.epoch >= self.epochs:
                            stop_reason = "epochs"
            # The end: a last validation (not after an interrupt, so that a resume replays the
            # uninterrupted run exactly), a last checkpoint of the *training* state, then the
            # best weights and the test figure.
            if (self.val_data is not None and stop_reason != "interrupted"
                    and (not self.history["val_steps"] or self.history["val_steps"][-1] != self.step)):
                self._validate()
            self.save()
        finally:
            bar.close()
            if isinstance(had_validate, bool):
                model.validate = had_validate
            model.train(was_training)
        if self.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)
        result = self._result(stop_reason)
        if self.test_data is not None:
            result.test = self.evaluate(self.test_data)
        return result

    def _wrap_ddp(self) -> nn.Module:
        if not self.dist.on:
            return self.loss_module
        from torch.nn.parallel import DistributedDataParallel

        if self.step == 0:
            # Layers with a data-dependent initialisation (ActNorm) initialise on their first
            # batch; doing it before wrapping lets DDP broadcast rank 0's result to every rank,
            # instead of each rank initialising from its own data and drifting apart.
            with torch.no_grad():
                x = next(iter(self.batches.epoch(0, 0)))
                self.model.log_prob(_to_device(x, self.device, self.dtype, self.memory_format))
        return DistributedDataParallel(
            self.loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None)
