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
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from flowlib._checks import FlowInputError, inputs_checked
from flowlib._modules import evaluating, training
from flowlib.train import ddp
from flowlib.train.batches import LoaderBatches, TensorBatches, batches_of, check_source, eval_batches, place
from flowlib.train.checkpoint import load_run, rng_state, save_run, set_rng_state
from flowlib.train.config import FitConfig, Plan
from flowlib.train.objective import LossFn, LossModule, Objective
from flowlib.train.result import FitResult, TrainingError
from flowlib.train.runtime import Clock, Runtime, StopOnInterrupt, prepare, seed_everything
from flowlib.train.schedule import lr_factor, progress
from flowlib.train.state import RunState

__all__ = ["fit"]


def fit(model: nn.Module, train_data: Tensor | Iterable, *, val_data: Tensor | Iterable | None = None,
        test_data: Tensor | Iterable | None = None, loss_fn: LossFn | None = None,
        config: FitConfig | None = None, **options: Any) -> FitResult:
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
            shape/dtype or with NaN/inf.
        TrainingError: the loss or the gradients became NaN/inf; the weights in memory are
            those before the bad step and the last checkpoint on disk is left intact.

    >>> import flowlib
    >>> _ = torch.manual_seed(0)
    >>> model = flowlib.realnvp(2)
    >>> result = fit(model, torch.randn(512, 2), steps=20, batch_size=64, progress=False)
    >>> result.unit, result.steps, len(result.losses)
    ('nats', 20, 20)
    """
    t_call = time.perf_counter()
    config = FitConfig.build(config, **options)
    objective = Objective.of(model, loss_fn)
    shape = tuple(int(s) for s in getattr(model, "event_shape", None) or ()) or None
    if config.channels_last and (shape is None or len(shape) != 3):
        raise FlowInputError(f"fit: channels_last=True is for image models with an event shape (C, H, W), "
                             f"got {shape}")
    # Every data source is checked at the door, before any process group or device work.
    for name, data in (("train_data", train_data), ("val_data", val_data), ("test_data", test_data)):
        if data is not None:
            check_source(data, shape, f"fit: {name}")
    d = ddp.setup(config.distributed, config.device)
    try:
        result = _train(model, objective, config, d, shape, train_data, val_data, test_data)
    finally:
        ddp.teardown(d)
    result.wall_time = time.perf_counter() - t_call
    return result


@dataclass(frozen=True)
class _Setup:
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

    @property
    def eval_batch_size(self) -> int:
        return self.config.eval_batch_size or 4 * self.config.batch_size


def _train(model: nn.Module, objective: Objective, config: FitConfig, d: ddp.Dist,
           shape: tuple[int, ...] | None, train: Any, val: Any, test: Any) -> FitResult:
    rt = prepare(model, config, d)
    path = Path(config.checkpoint) if config.checkpoint is not None else None
    if path is not None and config.resume and path.exists():
        where = f"fit: checkpoint {path}"
        saved, _saved_config = load_run(path, where)  # issue 12 compares _saved_config with config here
        rng = saved.rng_of(d.rank)
        state = saved.restore(model, rt.optimizer, rt.scaler, rt.device, where)
        if config.seed is not None and state.data_seed != config.seed:
            warnings.warn(f"{where} was trained with seed={state.data_seed}; continuing with it, "
                          f"not {config.seed}", stacklevel=3)
        if rng is not None:
            set_rng_state(rng)  # last: nothing may draw a number between here and the first step
        resumed_from: int | None = state.step
    else:
        state, resumed_from = RunState(data_seed=seed_everything(config.seed, d)), None
    batches = batches_of(place(train, rt.device), config.batch_size, state.data_seed, d.rank, d.world, shape)
    s = _Setup(model, objective, config, config.plan(batches.steps_per_epoch), rt, d, batches,
               place(val, rt.device), place(test, rt.device), path, resumed_from)
    with training(model, grad=True):  # every module's flag is given back afterwards
        reason = _loop(s, state)
    if config.restore_best and state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    result = _result(s, state, state.seconds, reason)
    if s.test_data is not None:
        result.test = _evaluate(s, s.test_data)
    return result


def _loop(s: _Setup, state: RunState) -> str:
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
                    state.epoch_samples += x.shape[0]
                    state.history.add_step(loss_v, lr, gnorm_v)
                    ema = loss_v if ema is None else 0.95 * ema + 0.05 * loss_v
                    if s.val_data is not None and state.step % plan.eval_every == 0:
                        _validate(s, state)
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
            _validate(s, state)
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


def _step(s: _Setup, module: nn.Module, x: Tensor, lr: float, guard: _Guard,
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


def _failure(s: _Setup, state: RunState, seconds: float, what: str, saved_at: int | None) -> TrainingError:
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
        step=state.step + 1, result=_result(s, state, seconds, "error"))


def _evaluate(s: _Setup, data: Any) -> float:
    """The mean figure over ``data`` in full precision and evaluation mode, averaged over processes."""
    total = torch.zeros((), dtype=torch.float64, device=s.rt.device)
    count = 0
    # A tensor was checked whole at the door; a loader's batches are checked by the model.
    checked = inputs_checked() if isinstance(data, Tensor) else nullcontext()
    with evaluating(s.model), checked:
        for x in eval_batches(data, s.eval_batch_size, s.d.rank, s.d.world):
            x = s.rt.to_device(x)
            total += s.objective.total(s.model, x)
            count += x.shape[0]
    total_v, count_v = ddp.total(torch.stack([total, total.new_tensor(float(count))]), s.d).tolist()
    return total_v / max(count_v, 1.0)


def _validate(s: _Setup, state: RunState) -> None:
    v = _evaluate(s, s.val_data)
    state.history.add_validation(state.step, v)
    if state.best_val is None or v < state.best_val:
        state.best_val, state.best_step, state.bad_evals = v, state.step, 0
        state.best_weights = {k: t.detach().clone() for k, t in s.model.state_dict().items()}
    else:
        state.bad_evals += 1


def _save(s: _Setup, state: RunState, seconds: float, saved_at: int | None) -> int | None:
    """Checkpoint the state (rank 0 writes; every process takes part); return the step on disk."""
    if s.path is None or saved_at == state.step:
        return saved_at
    rng = ddp.gather(rng_state(), s.d)
    if s.d.is_main:
        save_run(s.path, state.capture(s.model, s.rt.optimizer, s.rt.scaler, rng, seconds, s.d.world),
                 s.config.to_dict())
    return state.step


def _budget_reason(s: _Setup, state: RunState) -> str | None:
    if s.config.steps is not None and state.step >= s.config.steps:
        return "steps"
    spe = s.batches.steps_per_epoch
    if s.config.epochs is not None and spe and state.step >= s.config.epochs * spe:
        return "epochs"
    return None


def _wrap(s: _Setup, state: RunState) -> nn.Module:
    """The model and its objective as one module, in DistributedDataParallel under DDP."""
    module = LossModule(s.model, s.objective)
    if s.d.on and state.step == 0:
        # Layers with a data-dependent initialisation (ActNorm) initialise on their first batch;
        # doing it before wrapping lets DDP broadcast rank 0's result to every process, instead
        # of each initialising from its own data and drifting apart.
        with torch.no_grad(), inputs_checked():
            s.objective.loss(s.model, s.rt.to_device(next(iter(s.batches.epoch(0, 0)))))
    return ddp.wrap(module, s.rt.device, s.d)


def _result(s: _Setup, state: RunState, seconds: float, reason: str) -> FitResult:
    spe = s.batches.steps_per_epoch
    return FitResult(
        unit=s.objective.unit, history=state.history, best_val=state.best_val, best_step=state.best_step,
        steps=state.step, epochs=state.step / spe if spe else float(state.epoch), seconds=seconds,
        stop_reason=reason, resumed_from=s.resumed_from, device=str(s.rt.device), amp=s.rt.amp_name,
        world_size=s.d.world, checkpoint=str(s.path) if s.path is not None else None)


# help(fit) and a notebook's signature tooltip list every option, read from FitConfig (declared once).
fit.__signature__ = inspect.signature(fit).replace(parameters=[
    *(p for p in inspect.signature(fit).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD),
    *(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
      for f in fields(FitConfig))])
