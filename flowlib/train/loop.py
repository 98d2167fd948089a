"""fit(): the one training loop of the course, by maximum likelihood, and its steps.

The pieces it is made of live beside it, one concern a file: the configuration
(:mod:`~flowlib.train.config`), the run's state (:mod:`~flowlib.train.state`), the objective
(:mod:`~flowlib.train.objective`), the data order (:mod:`~flowlib.train.batches`), the
schedule, the checkpoints, the device and DDP. Here they meet: :func:`fit` builds them once,
then the loop advances one :class:`~flowlib.train.state.RunState`.
"""

from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowlib._checks import FlowInputError, inputs_checked
from flowlib._modules import training
from flowlib.train import ddp
from flowlib.train.batches import as_pair, batches_of, check_source, place, size
from flowlib.train.checkpoint import rng_state, save_run
from flowlib.train.config import FitConfig
from flowlib.train.evaluation import Setup, evaluate, result_of, validate
from flowlib.train.lock import CheckpointLock
from flowlib.train.objective import LossFn, LossModule, Objective
from flowlib.train.result import FitResult, TrainingError
from flowlib.train.resume import changes, check_budget, epochs_end, resume
from flowlib.train.runtime import Clock, StopOnInterrupt, check_device, prepare, seed_everything
from flowlib.train.schedule import lr_factor, progress
from flowlib.train.state import RunState

__all__ = ["fit"]


def fit(model: nn.Module, train_data: Tensor | Iterable, *, val_data: Tensor | Iterable | None = None,
        test_data: Tensor | Iterable | None = None, loss_fn: LossFn | None = None,
        config: FitConfig | None = None, resume_changes: Iterable[str] | str = (),
        **options: Any) -> FitResult:
    """Train ``model`` by maximum likelihood on ``train_data`` and return a :class:`FitResult`.

    The model states what is minimised: the batch mean of ``model.loss(x)``, reported in
    ``model.loss_unit``. For a :class:`flowlib.FlowModel` that is the negative log-likelihood
    -log p_X(x) in **nats** per sample; image models (:class:`flowlib.ImageFlowModel`) minimise
    and report **bits/dim**, -log2 P(x) / D with the dequantization correction (Dinh et al.,
    2017; Kingma & Dhariwal, 2018). (Until flowlib 0.1 vector flows were reported in bits/dim;
    they now report nats, the unit of their loss.) ``loss_fn(model, x) -> scalar`` replaces the
    objective (unit "loss"). A model without ``loss``/``loss_unit`` needs ``loss_fn``.

    Options (keywords; :class:`~flowlib.train.config.FitConfig` holds them, ``config=`` passes one):

    - Budget, at least one; training stops at the first reached, counted over resumes:
      ``epochs``, ``steps`` (optimizer steps), ``seconds`` (wall clock; the cosine schedule
      then follows the time, so such runs are not bit-reproducible).
    - Data: ``train_data``, ``val_data``, ``test_data`` are tensors (batch, ...) or DataLoaders
      of tensors or (tensor, label) pairs, checked once here. A tensor is visited in a seeded
      order that resumes exactly, and moved to the GPU once if under 2 GiB. ``batch_size``
      (256; per process under DDP), ``eval_batch_size`` (4x), ``seed`` (seeds torch, NumPy,
      ``random`` and the data order; None keeps the generators and draws a data seed from torch).
      A conditional model (``model.conditional``, see :mod:`flowlib.conditional`) trains on
      pairs: ``(x, context)``, two tensors with a row per sample (visited in the same order), or
      a loader of (x, context) batches; it minimises ``model.loss(x, context)``.
    - Optimisation: AdamW (``lr`` 1e-3, ``weight_decay`` 0; Loshchilov & Hutter, 2019), a linear
      warm-up of ``warmup_steps`` (default min(100, 10 % of the steps)), then ``schedule``
      "cosine" (to 0 at the end of the budget) or "constant". ``clip_grad_norm`` (10; None: off)
      bounds the norm of the gradient of the loss *in its unit*. ``amp``: mixed precision on
      CUDA only ("auto": bf16 where supported, else fp16 with a gradient scaler; "bf16",
      "fp16", False). ``fused``: AdamW as one kernel ("auto", True, False). ``channels_last``:
      image models, convolution weights and batches stored (N, H, W, C), faster on CPUs.
    - Validation and checkpoints: ``eval_every`` (default an epoch, within 20..1000 steps; also
      at the end), ``early_stopping_patience`` (validations without improvement),
      ``restore_best`` (True: the best validation weights are loaded at the end), ``checkpoint``
      (a path, written atomically every ``checkpoint_every`` steps, default ``eval_every``, and
      at the end; with ``resume=True`` an existing file is continued exactly, bit for bit on a CPU).
      One run at a time holds a checkpoint path (a lock file beside it, ``run.pt.lock``, naming
      the owner; one left by a killed run is taken over with a warning); its folder is checked
      writable at the start. Each file records a checksum of its tensors, verified on resume.
    - Resuming: the budget (``epochs``, ``steps``, ``seconds``) may grow, never fall below what
      the checkpoint has done; any other option that differs from the checkpoint's is an error
      naming it, unless ``resume_changes`` names it (e.g. ``resume_changes=("lr",
      "weight_decay")``), and then this call's value is used. Epochs are counted in samples.
    - ``device`` ("auto": CUDA if present; the model is moved there in place), ``progress`` (a
      tqdm bar with the training and validation figures), ``distributed`` ("auto": DDP under
      ``torchrun``, gloo on CPUs, nccl on GPUs; rank 0 writes checkpoints, figures are averaged).

    ``fit`` changes no flag of the model: its training/evaluation flags are restored module by
    module, and its ``validate`` flag is left alone (the data is checked here, once, and the
    model's per-call checks are skipped through :func:`flowlib._checks.inputs_checked`).
    A first Ctrl-C ends training after the current step (``stop_reason="interrupted"``) and
    saves a checkpoint if one is configured; a second interrupts at once.

    Raises:
        FlowInputError: bad options, a model that states no loss, or data of the wrong
            shape/dtype or with NaN/inf; a checkpoint path in use by another run
            (:class:`~flowlib.train.lock.CheckpointInUse`), in a folder that cannot be written, or
            whose file is corrupted or was trained with other options.
        TrainingError: the loss or the gradients became NaN/inf (the weights in memory are
            those before the bad step), or a validation or test figure did (never compared
            with the best); the last checkpoint on disk is left intact.

    >>> import flowlib
    >>> _ = torch.manual_seed(0)
    >>> model = flowlib.realnvp(2)
    >>> result = fit(model, torch.randn(512, 2), steps=20, batch_size=64, progress=False)
    >>> result.unit, result.steps, len(result.losses)
    ('nats', 20, 20)
    """
    t_call = time.perf_counter()
    config = FitConfig.build(config, **options)
    allowed = changes(resume_changes)
    check_device(config.device)
    if config.early_stopping_patience is not None and val_data is None:
        raise FlowInputError(f"fit: early_stopping_patience={config.early_stopping_patience} needs val_data "
                             "(it counts validations without improvement); pass val_data=... or leave "
                             "early_stopping_patience out")
    objective = Objective.of(model, loss_fn)
    shape = tuple(int(s) for s in getattr(model, "event_shape", None) or ()) or None
    if config.channels_last and (shape is None or len(shape) != 3):
        raise FlowInputError(f"fit: channels_last=True is for image models with an event shape (C, H, W), "
                             f"got {shape}")
    # Every data source is checked at the door, before any process group or device work. A
    # conditional model reads (x, context) pairs.
    paired = bool(getattr(model, "conditional", False))
    for name, data in (("train_data", train_data), ("val_data", val_data), ("test_data", test_data)):
        if data is not None:
            check_source(data, shape, f"fit: {name}", paired)
    if paired:
        train_data, val_data, test_data = (as_pair(v) or v for v in (train_data, val_data, test_data))
    d = ddp.setup(config.distributed, config.device)
    try:
        result = _train(model, objective, config, allowed, d, shape, train_data, val_data, test_data)
    finally:
        ddp.teardown(d)
    result.wall_time = time.perf_counter() - t_call
    return result


def _train(model: nn.Module, objective: Objective, config: FitConfig, allowed: frozenset[str], d: ddp.Dist,
           shape: tuple[int, ...] | None, train: Any, val: Any, test: Any) -> FitResult:
    path = Path(config.checkpoint) if config.checkpoint is not None else None
    # Rank 0 writes the checkpoint, so rank 0 holds the path (and finds an unwritable folder now,
    # not at the first save); every process learns whether it could.
    lock = CheckpointLock(path) if path is not None and d.is_main else None
    failure: FlowInputError | None = None
    try:
        if lock is not None:
            lock.acquire()
    except FlowInputError as err:
        failure = err
    if ddp.broadcast_int(int(failure is None), d) == 0:
        raise failure or FlowInputError(f"fit: rank 0 could not lock the checkpoint {path}; see its error")
    try:
        return _run(model, objective, config, allowed, d, shape, path, train, val, test)
    finally:
        if lock is not None:
            lock.release()


def _run(model: nn.Module, objective: Objective, config: FitConfig, allowed: frozenset[str], d: ddp.Dist,
         shape: tuple[int, ...] | None, path: Path | None, train: Any, val: Any, test: Any) -> FitResult:
    rt = prepare(model, config, d)
    if path is not None and config.resume and path.exists():
        state = resume(path, config, allowed, model, rt, d.rank)  # the random generators restored last
        resumed_from: int | None = state.step
    else:
        state, resumed_from = RunState(data_seed=seed_everything(config.seed, d)), None
    batches = batches_of(place(train, rt.device), config.batch_size, state.data_seed, d.rank, d.world, shape,
                         paired=bool(getattr(model, "conditional", False)))
    if resumed_from is not None:
        check_budget(state, config, batches, path)
    end = epochs_end(state, config, batches)
    s = Setup(model, objective, config, config.plan(batches.steps_per_epoch, end), rt, d, batches,
               place(val, rt.device), place(test, rt.device), path, resumed_from, end)
    with training(model, grad=True):  # every module's flag is given back afterwards
        reason = _loop(s, state)
    if config.restore_best and state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    result = result_of(s, state, state.seconds, reason)
    if s.test_data is not None:
        result.test = evaluate(s, s.test_data, "test_data")
        if not math.isfinite(result.test):
            raise TrainingError(f"fit: the test figure after step {state.step} is {result.test}: the model "
                                f"gives a non-finite figure (in {s.objective.unit}) on some test samples "
                                "(check test_data for samples unlike the training data); the run itself "
                                "finished and its checkpoint is intact", step=state.step, result=result)
    return result


def _loop(s: Setup, state: RunState) -> str:
    """Train until a budget, early stopping or Ctrl-C says stop; return why. ``state`` advances."""
    from tqdm.auto import tqdm

    c, plan = s.config, s.plan
    clock, guard, interrupt = Clock(state.seconds), _Guard(), StopOnInterrupt(active=not s.d.on)
    saved_at = s.resumed_from  # the step of the checkpoint on disk
    bar = tqdm(total=plan.total_steps, initial=state.step, desc="fit", unit="step", dynamic_ncols=True,
               disable=not (c.progress and s.d.is_main))
    reason = _budget_reason(s, state)
    if c.seconds is not None and state.seconds >= c.seconds:
        reason = reason or "seconds"
    ema = None

    def should_stop() -> bool:
        return interrupt.requested or (c.seconds is not None and clock() >= c.seconds)

    try:
        module = _wrap(s, state)
        with interrupt:
            while reason is None:
                drawn = 0
                for x in s.batches.epoch(state.epoch, state.epoch_samples):
                    drawn += 1
                    x = s.rt.to_device(x)
                    at = progress(state.step, clock(), state.epoch, plan.total_steps, c.seconds, c.epochs)
                    lr = c.lr * lr_factor(state.step, at, plan.warmup_steps, c.schedule)
                    try:
                        loss_v, gnorm_v, stop = _step(s, module, x, lr, guard, should_stop)
                    except _Diverged as err:
                        s.rt.optimizer.zero_grad(set_to_none=True)
                        raise _failure(s, state, clock(), str(err), saved_at) from None
                    state.step += 1
                    state.epoch_samples += size(x)
                    state.history.add_step(loss_v, lr, gnorm_v)
                    ema = loss_v if ema is None else 0.95 * ema + 0.05 * loss_v
                    if s.val_data is not None and state.step % plan.eval_every == 0:
                        validate(s, state, clock(), saved_at)
                        if c.early_stopping_patience is not None \
                                and state.bad_evals >= c.early_stopping_patience:
                            reason = "early_stopping"
                    if state.step % plan.checkpoint_every == 0:
                        saved_at = _save(s, state, clock(), saved_at)
                    bar.update(1)
                    if state.step % 10 == 0 or reason:
                        post = {s.objective.short: f"{ema:.4f}"}
                        if state.history.val:
                            post["val"] = f"{state.history.val[-1]:.4f}"
                        bar.set_postfix(post, refresh=False)
                    reason = reason or _budget_reason(s, state)
                    if stop and reason is None:
                        reason = "interrupted" if interrupt.requested else "seconds"
                    if reason:
                        break
                else:
                    if drawn == 0 and state.epoch_samples == 0:
                        raise FlowInputError("fit: train_data yielded no batches in an epoch")
                    state.epoch, state.epoch_samples = state.epoch + 1, 0
                    if c.epochs is not None and state.epoch >= c.epochs:
                        reason = "epochs"
        # The end: a last validation (not after an interrupt, so that a resume replays the
        # uninterrupted run exactly), then a last checkpoint of the *training* state.
        h = state.history
        if s.val_data is not None and reason != "interrupted" and (not h.val_steps
                                                                   or h.val_steps[-1] != state.step):
            validate(s, state, clock(), saved_at)
        _save(s, state, clock(), saved_at)
    finally:
        bar.close()
    state.seconds = clock()
    return reason


class _Diverged(Exception):
    """A step produced a NaN/inf figure; the loop turns it into a TrainingError with the context."""


@dataclass
class _Guard:
    """The NaN guard, and the count of fp16 overflows the gradient scaler skipped in a row."""

    overflows: int = 0

    def check(self, loss_v: float, gnorm_v: float, scaled: bool) -> None:
        if not math.isfinite(loss_v):
            raise _Diverged(f"the training loss became {loss_v}")
        if math.isfinite(gnorm_v):
            self.overflows = 0
            return
        if not scaled:
            raise _Diverged(f"the gradient norm became {gnorm_v} (the loss was {loss_v:.4g})")
        self.overflows += 1  # fp16 overflow: the scaler skips this step and lowers its scale
        if self.overflows > 50:
            raise _Diverged("the fp16 gradients overflowed 50 steps in a row")


def _step(s: Setup, module: nn.Module, x: Tensor, lr: float, guard: _Guard,
          should_stop: Callable[[], bool]) -> tuple[float, float, bool]:
    """One optimizer step; returns (loss, gradient norm, stop requested on any process)."""
    opt, scaler = s.rt.optimizer, s.rt.scaler
    for group in opt.param_groups:
        group["lr"] = lr
    opt.zero_grad(set_to_none=True)
    # The batch was checked already (a tensor whole at the door, a loader's CPU batches as they
    # came): the model's own per-call checks would read the values, a GPU sync every step.
    with s.rt.autocast(), inputs_checked():
        loss = module(x).float()
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
    else:
        loss.backward()
    # The norm is computed even without clipping: the NaN guard needs it. With max_norm=inf the
    # gradients are multiplied by exactly 1.
    params = [p for p in s.model.parameters() if p.grad is not None]
    gnorm = torch.nn.utils.clip_grad_norm_(params, s.config.clip_grad_norm or math.inf) if params \
        else loss.new_zeros(())
    # One synchronisation per step for the three figures (one all-reduce under DDP, so every
    # process agrees on NaNs and on stopping).
    stop = loss.new_tensor(float(should_stop()))
    stats = ddp.mean(torch.stack([loss.detach(), gnorm.detach().float(), stop]), s.d)
    loss_v, gnorm_v, stop_v = stats.tolist()
    guard.check(loss_v, gnorm_v, scaler is not None)  # before the update: a bad one never happens
    if scaler is not None:
        scaler.step(opt)
        scaler.update()
    else:
        opt.step()
    return loss_v, gnorm_v, stop_v > 0


def _failure(s: Setup, state: RunState, seconds: float, what: str, saved_at: int | None) -> TrainingError:
    c = s.config
    on_disk = ""
    if s.path is not None:
        on_disk = (f" The last checkpoint ({s.path}, step {saved_at}) is untouched." if saved_at is not None
                   else " No checkpoint had been written yet.")
    return TrainingError(
        f"fit: at step {state.step + 1} (epoch {state.epoch}) {what}. The weights in memory are those "
        f"after step {state.step}, before the bad update.{on_disk} Try a lower learning rate "
        f"(lr={c.lr:g} now), a longer warm-up (warmup_steps={s.plan.warmup_steps} now), "
        f"gradient clipping (clip_grad_norm={c.clip_grad_norm} now, in {s.objective.unit}), clamping the "
        f"scales of coupling layers{', or amp=False' if s.rt.amp_dtype is not None else ''}.",
        step=state.step + 1, result=result_of(s, state, seconds, "error"))


def _save(s: Setup, state: RunState, seconds: float, saved_at: int | None) -> int | None:
    """Checkpoint the state (rank 0 writes; every process takes part); return the step on disk."""
    if s.path is None or saved_at == state.step:
        return saved_at
    rng = ddp.gather(rng_state(), s.d)
    if s.d.is_main:
        save_run(s.path, state.capture(s.model, s.rt.optimizer, s.rt.scaler, rng, seconds, s.d.world),
                 s.config.to_dict())
    return state.step


def _budget_reason(s: Setup, state: RunState) -> str | None:
    if s.config.steps is not None and state.step >= s.config.steps:
        return "steps"
    if s.epochs_end is not None and state.step >= s.epochs_end:
        return "epochs"
    return None


def _wrap(s: Setup, state: RunState) -> nn.Module:
    """The model and its objective as one module, in DistributedDataParallel under DDP."""
    module = LossModule(s.model, s.objective)
    if s.d.on and state.step == 0:
        # Layers with a data-dependent initialisation (ActNorm) initialise on their first batch;
        # doing it before wrapping lets DDP broadcast rank 0's result to every process, instead
        # of each initialising from its own data and drifting apart.
        with torch.no_grad(), inputs_checked():
            s.objective.loss(s.model, s.rt.to_device(next(iter(s.batches.epoch(0, 0)))))
    return ddp.wrap(module, s.rt.device, s.d)


# help(fit) and a notebook's signature tooltip list every option, read from FitConfig (declared once).
fit.__signature__ = inspect.signature(fit).replace(parameters=[
    *(p for p in inspect.signature(fit).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD),
    *(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
      for f in fields(FitConfig))])
