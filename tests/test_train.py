"""flowlib.train (fit, its state, config and checkpoints) on a tiny elementwise flow and Gaussian data.

Each test trains for well under a second on a CPU; the DistributedDataParallel test
launches two processes with torchrun and is marked slow.
"""

from __future__ import annotations

import copy
import math
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import flowlib
from flowlib.core import FlowInputError
from flowlib.elementwise import Affine, SinhArcsinh
from flowlib.train import FitResult, TrainingError, fit
from flowlib.train.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state

MEAN = torch.tensor([2.0, -1.0])
STD = torch.tensor([0.5, 2.0])


def tiny_model(seed: int = 0) -> flowlib.FlowModel:
    torch.manual_seed(seed)
    flow = flowlib.Compose(Affine(2), SinhArcsinh(2), Affine(2))
    model = flowlib.FlowModel(flow, flowlib.StandardNormal(2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.1)
    return model


def gaussian(n: int, seed: int = 0, mean: torch.Tensor = MEAN) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * STD + mean


def params(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_params(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"parameter {k} differs: {a[k]} vs {b[k]}"


QUIET = {"progress": False}


# -- learning and budgets ----------------------------------------------------------------------
def test_loss_goes_down_and_result_is_filled():
    model = tiny_model()
    x, x_val, x_test = gaussian(2000, 0), gaussian(500, 1), gaussian(500, 2)
    r = fit(model, x, val_data=x_val, test_data=x_test, steps=150, batch_size=128, lr=2e-2, seed=0, **QUIET)
    assert isinstance(r, FitResult)
    assert r.metric == r.unit == "nats" and r.steps == 150 and r.stop_reason == "steps"
    assert len(r.losses) == len(r.lrs) == 150
    assert np.mean(r.losses[-10:]) < np.mean(r.losses[:10]) - 0.5
    # The true entropy of the data in nats per sample is a lower bound the model approaches.
    entropy = math.log(2 * math.pi * math.e) + torch.log(STD).sum().item()
    assert r.test is not None and entropy - 0.07 < r.test < entropy + 0.28
    assert r.val_steps[-1] == 150 and r.best_val == min(r.val)
    assert r.device == "cpu" and r.amp is None and r.world_size == 1
    assert "steps=150" in repr(r)


def test_step_epoch_and_seconds_budgets():
    x = gaussian(1000)
    r = fit(tiny_model(), x, steps=37, batch_size=100, **QUIET)
    assert r.steps == 37 and len(r.losses) == 37 and r.stop_reason == "steps"
    r = fit(tiny_model(), x, epochs=2, batch_size=100, **QUIET)
    assert r.steps == 20 and r.epochs == 2.0 and r.stop_reason == "epochs"
    r = fit(tiny_model(), x, epochs=50, seconds=0.3, batch_size=100, **QUIET)
    assert r.stop_reason == "seconds" and 0.3 <= r.seconds < 1.5 and 0 < r.steps < 1000
    # The first budget reached wins.
    r = fit(tiny_model(), x, epochs=1, steps=1000, batch_size=100, **QUIET)
    assert r.steps == 10 and r.stop_reason == "epochs"


def test_learning_rate_warmup_then_cosine_or_constant():
    x = gaussian(1000)
    r = fit(tiny_model(), x, steps=100, lr=1e-2, warmup_steps=10, batch_size=100, **QUIET)
    assert r.lrs[0] == pytest.approx(1e-3) and r.lrs[9] == pytest.approx(1e-2, rel=3e-2)
    assert all(a < b for a, b in zip(r.lrs[:9], r.lrs[1:10], strict=True))  # linear warm-up
    assert r.lrs[-1] < 1e-4  # cosine decays to about 0 at the end of the budget
    r = fit(tiny_model(), x, steps=30, lr=1e-2, warmup_steps=5, schedule="constant", **QUIET)
    assert r.lrs[10:] == [1e-2] * 20


def test_dataloader_of_pairs_is_accepted():
    x = gaussian(640)
    loader = DataLoader(TensorDataset(x, torch.zeros(640)), batch_size=64, shuffle=True)
    r = fit(tiny_model(), loader, val_data=loader, epochs=3, lr=2e-2, **QUIET)
    assert r.steps == 30 and r.stop_reason == "epochs" and r.best_val is not None
    assert np.mean(r.losses[-5:]) < np.mean(r.losses[:5])


def test_progress_bar_shows_the_models_unit(capsys):
    fit(tiny_model(), gaussian(500), val_data=gaussian(100, 1), steps=20, batch_size=50, progress=True)
    err = capsys.readouterr().err
    assert "nats=" in err and "val=" in err


def test_custom_loss_fn_is_minimised_and_reported():
    def loss_fn(model, x):
        return -model.log_prob(x).mean()

    r = fit(tiny_model(), gaussian(1000), steps=50, lr=2e-2, loss_fn=loss_fn, **QUIET)
    assert r.metric == "loss" and r.losses[-1] < r.losses[0]


# -- input validation at the door -------------------------------------------------------------
@pytest.mark.parametrize(
    "data, message",
    [
        (torch.randn(100, 3), "shape"),
        (torch.randn(100), "shape"),
        (torch.randint(0, 5, (100, 2)), "floating"),
        (torch.tensor([[0.0, float("nan")]] * 10), "finite"),
        (torch.tensor([[0.0, float("inf")]] * 10), "finite"),
        (torch.zeros(0, 2), "empty"),
    ],
)
def test_bad_training_data_raises_before_training(data, message):
    model = tiny_model()
    before = params(model)
    with pytest.raises(FlowInputError, match=message):
        fit(model, data, steps=5, **QUIET)
    assert_same_params(before, params(model))


def test_bad_validation_data_and_arguments_raise():
    x = gaussian(100)
    with pytest.raises(FlowInputError, match="val_data"):
        fit(tiny_model(), x, val_data=torch.full((10, 2), float("nan")), steps=5, **QUIET)
    with pytest.raises(FlowInputError, match="test_data"):
        fit(tiny_model(), x, test_data=torch.randn(10, 5), steps=5, **QUIET)
    with pytest.raises(FlowInputError, match="budget"):
        fit(tiny_model(), x, **QUIET)
    with pytest.raises(FlowInputError, match="lr"):
        fit(tiny_model(), x, steps=5, lr=-1.0, **QUIET)
    with pytest.raises(FlowInputError, match="schedule"):
        fit(tiny_model(), x, steps=5, schedule="linear", **QUIET)
    with pytest.raises(FlowInputError, match="loss_unit"):
        fit(torch.nn.Linear(2, 2), x, steps=5, **QUIET)


# -- validation, best model, early stopping ------------------------------------------------------
def shifted_problem():
    """Train on N((3, 3), .) and validate on N((1, 1), .): validation improves, then worsens."""
    return gaussian(2000, 0, mean=torch.tensor([3.0, 3.0])), gaussian(500, 1, mean=torch.tensor([1.0, 1.0]))


def test_best_validation_weights_are_restored():
    x, x_val = shifted_problem()
    model = tiny_model()
    r = fit(model, x, val_data=x_val, steps=200, lr=5e-2, warmup_steps=0, schedule="constant", eval_every=5,
            seed=0, **QUIET)
    assert r.best_step < 200 and r.val[-1] > r.best_val + 0.05
    assert r.val[r.val_steps.index(r.best_step)] == r.best_val
    with torch.no_grad():
        now = (-model.log_prob(x_val).mean()).item()
    assert now == pytest.approx(r.best_val, abs=1e-5)


def test_early_stopping_with_patience():
    x, x_val = shifted_problem()
    r = fit(tiny_model(), x, val_data=x_val, steps=1000, lr=5e-2, warmup_steps=0, schedule="constant",
            eval_every=5, early_stopping_patience=3, **QUIET)
    assert r.stop_reason == "early_stopping" and r.steps < 1000
    assert r.val_steps[-1] == r.best_step + 15


# -- checkpoints ---------------------------------------------------------------------------------
def test_checkpoint_is_written_and_loads_with_weights_only(tmp_path):
    path = tmp_path / "run" / "ckpt.pt"
    x = gaussian(1000)
    r = fit(tiny_model(), x, val_data=gaussian(200, 1), steps=30, checkpoint=path, checkpoint_every=10,
            **QUIET)
    assert path.exists() and r.checkpoint == str(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["ckpt.pt"]  # no temporary file left
    state = torch.load(path, weights_only=True)
    assert state["step"] == 30
    assert {"model", "optimizer", "rng", "history", "best", "epoch", "epoch_samples", "data_seed",
            "config"} <= state.keys()
    assert state["history"]["losses"].shape == (30,)
    assert set(state["rng"][0]) >= {"torch", "numpy", "python"}


def test_crash_during_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.ones(3)}, path)
    before = path.read_bytes()

    def crashing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(torch, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert load_checkpoint(path)["step"] == 1


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    torch.manual_seed(1)
    np.random.seed(1)  # noqa: NPY002  (the legacy global generator is what is saved)
    random.seed(1)
    save_checkpoint({"rng": rng_state()}, tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    again = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


class NoisyNLL:
    """The NLL of slightly jittered data (uses the torch RNG, like dequantization), able to crash."""

    def __init__(self, crash_at: int | None = None, interrupt_at: int | None = None) -> None:
        self.calls = 0
        self.crash_at, self.interrupt_at = crash_at, interrupt_at

    def __call__(self, model, x):
        self.calls += 1
        if self.calls == self.crash_at:
            raise RuntimeError("killed (simulated)")
        if self.calls == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C or a notebook's stop button does
        return -model.log_prob(x + 0.01 * torch.randn_like(x)).mean()


RESUME_KW = dict(steps=100, batch_size=64, lr=2e-2, eval_every=10, checkpoint_every=25, seed=7,
                 restore_best=False, **QUIET)


def uninterrupted(tmp_path):
    x, x_val = gaussian(1000), gaussian(200, 1)
    model = tiny_model()
    r = fit(model, x, val_data=x_val, loss_fn=NoisyNLL(), checkpoint=tmp_path / "full.pt", **RESUME_KW)
    return x, x_val, params(model), r


def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path):
    x, x_val, want, full = uninterrupted(tmp_path)
    path = tmp_path / "killed.pt"
    with pytest.raises(RuntimeError, match="killed"):
        fit(tiny_model(), x, val_data=x_val, loss_fn=NoisyNLL(crash_at=60), checkpoint=path, **RESUME_KW)
    assert load_checkpoint(path)["step"] == 50
    # A new session: fresh model object, the global RNG elsewhere; the checkpoint restores all.
    torch.manual_seed(12345)
    model = tiny_model(seed=99)
    r = fit(model, x, val_data=x_val, loss_fn=NoisyNLL(), checkpoint=path, **RESUME_KW)
    assert r.resumed_from == 50 and r.steps == 100
    assert_same_params(want, params(model))
    assert r.losses == full.losses and r.val == full.val and r.val_steps == full.val_steps
    assert r.best_step == full.best_step


def test_interrupted_run_saves_and_resumes_exactly(tmp_path):
    x, x_val, want, full = uninterrupted(tmp_path)
    path = tmp_path / "stopped.pt"
    model = tiny_model()
    r = fit(model, x, val_data=x_val, loss_fn=NoisyNLL(interrupt_at=62), checkpoint=path, **RESUME_KW)
    # Call 62 of the loss is in step 57 (validation calls it too); that step completes.
    assert r.stop_reason == "interrupted" and r.steps == 57
    assert load_checkpoint(path)["step"] == 57
    r = fit(model, x, val_data=x_val, loss_fn=NoisyNLL(), checkpoint=path, **RESUME_KW)
    assert r.resumed_from == 57
    assert_same_params(want, params(model))
    assert r.losses == full.losses and r.val == full.val


def test_resume_with_an_unshuffled_dataloader_is_exact(tmp_path):
    x = gaussian(1000)
    loader = DataLoader(TensorDataset(x), batch_size=64, shuffle=False)
    kw = dict(steps=40, lr=2e-2, checkpoint_every=10, seed=3, **QUIET)
    model = tiny_model()
    full = fit(model, loader, loss_fn=NoisyNLL(), checkpoint=tmp_path / "full.pt", **kw)
    want = params(model)
    path = tmp_path / "killed.pt"
    with pytest.raises(RuntimeError, match="killed"):
        fit(tiny_model(), loader, loss_fn=NoisyNLL(crash_at=25), checkpoint=path, **kw)
    model = tiny_model(seed=5)
    r = fit(model, loader, loss_fn=NoisyNLL(), checkpoint=path, **kw)
    assert r.resumed_from == 20 and r.losses == full.losses  # mid-epoch: 16 batches an epoch
    assert_same_params(want, params(model))


def test_result_plot(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    r = fit(tiny_model(), gaussian(500), val_data=gaussian(100, 1), steps=20, batch_size=50, **QUIET)
    from flowlib.viz import plot_training_curve

    ax = plot_training_curve(r)
    assert ax.get_ylabel() == "nats" and len(ax.lines) == 2
    with pytest.warns(DeprecationWarning, match="plot_training_curve"):
        ax = r.plot()  # the old spelling: a one-line call of plot_training_curve
    assert ax.get_ylabel() == "nats" and len(ax.lines) == 2


def test_finished_run_resumes_to_a_larger_budget_and_resume_false_starts_over(tmp_path):
    path = tmp_path / "ckpt.pt"
    x = gaussian(1000)
    fit(tiny_model(), x, steps=20, checkpoint=path, **QUIET)
    r = fit(tiny_model(), x, steps=20, checkpoint=path, **QUIET)
    assert r.resumed_from == 20 and r.steps == 20 and len(r.losses) == 20
    r = fit(tiny_model(), x, steps=30, checkpoint=path, **QUIET)
    assert r.resumed_from == 20 and r.steps == 30 and len(r.losses) == 30
    r = fit(tiny_model(), x, steps=10, checkpoint=path, resume=False, **QUIET)
    assert r.resumed_from is None and r.steps == 10 and load_checkpoint(path)["step"] == 10


def test_checkpoint_of_another_model_gives_a_clear_error(tmp_path):
    path = tmp_path / "ckpt.pt"
    fit(tiny_model(), gaussian(500), steps=5, checkpoint=path, **QUIET)
    other = flowlib.FlowModel(Affine(2), flowlib.StandardNormal(2))
    with pytest.raises(FlowInputError, match="resume=False"):
        fit(other, gaussian(500), steps=5, checkpoint=path, **QUIET)


# -- the NaN guard -------------------------------------------------------------------------------
class TurnsNaN(flowlib.FlowModel):
    """A model whose log-density becomes NaN after a number of calls (an exploding flow)."""

    good_calls = 30

    def log_prob(self, x):
        self.calls = getattr(self, "calls", 0) + 1
        lp = super().log_prob(x)
        return lp * float("nan") if self.calls > self.good_calls else lp


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    model = TurnsNaN(flowlib.Compose(Affine(2), SinhArcsinh(2)), flowlib.StandardNormal(2))
    with pytest.raises(TrainingError) as info:
        fit(model, gaussian(1000), steps=100, checkpoint=path, checkpoint_every=10, **QUIET)
    message = str(info.value)
    assert "at step 31" in message and "loss became nan" in message
    assert "lower learning rate" in message and "warm-up" in message and "step 30" in message
    assert info.value.step == 31 and info.value.result.steps == 30
    state = torch.load(path, weights_only=True)
    assert state["step"] == 30
    # The bad update never happened: the weights in memory equal the last checkpoint's.
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert_same_params(state["model"], params(model))


def test_nan_gradient_with_finite_loss_is_caught():
    def loss_fn(model, x):
        p = model.flow[0].shift
        # sqrt at 0 has an infinite derivative: inf * 0 = NaN in the gradient, the loss stays finite.
        return -model.log_prob(x).mean() + 0.0 * torch.sqrt((p - p.detach()) ** 2).sum()

    with pytest.raises(TrainingError, match="at step 1 .* the gradient norm became nan"):
        fit(tiny_model(), gaussian(200), steps=10, loss_fn=loss_fn, **QUIET)


# -- DistributedDataParallel ------------------------------------------------------------------------
@pytest.mark.slow
def test_ddp_two_cpu_processes_agree_and_learn(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
         str(worker), str(tmp_path)],
        capture_output=True, text=True, timeout=120, env=env,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == 2 and r0["steps"] == 80
    assert_same_params(r0["params"], r1["params"])
    assert r0["losses"] == r1["losses"] and r0["val"] == r1["val"]  # averaged over ranks
    assert np.mean(r0["losses"][-10:]) < np.mean(r0["losses"][:10]) - 1.0
    state = load_checkpoint(tmp_path / "ddp.pt")  # written by rank 0 only, with both ranks' RNGs
    assert state["world_size"] == 2 and len(state["rng"]) == 2 and state["step"] == 80


def test_fused_adamw_is_the_default_and_matches_the_loop():
    """fused="auto" picks the one-kernel AdamW on a CPU; it follows the same update rule."""
    data = gaussian(512)
    runs = {}
    for fused in ("auto", False):
        model = tiny_model()
        result = fit(model, data, steps=30, batch_size=64, lr=1e-2, seed=0, progress=False, fused=fused)
        runs[fused] = (params(model), result.losses)
    for k, v in runs["auto"][0].items():
        assert torch.allclose(v, runs[False][0][k], atol=1e-4), k
    assert runs["auto"][1][-1] < runs["auto"][1][0]
    with pytest.raises(FlowInputError, match="fused must be one of 'auto', True, False"):
        fit(tiny_model(), data, steps=1, fused="yes", progress=False)


def test_channels_last_trains_an_image_model_and_refuses_vectors():
    from flowlib.image_models import glow_image

    torch.manual_seed(0)
    x = torch.randint(0, 17, (96, 1, 8, 8)).float()
    model = glow_image((1, 8, 8), scales=2, depth=2, hidden=8, blocks=1, grey_levels=17)
    result = fit(model, x, steps=6, batch_size=32, lr=1e-3, seed=0, progress=False, channels_last=True)
    assert result.steps == 6 and math.isfinite(result.losses[-1])
    convs = [m.weight for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)
    # the same map whatever the memory layout: a channels_last batch scores like a contiguous one
    model.eval()
    torch.manual_seed(3)
    a = model.log_prob(x[:8])
    torch.manual_seed(3)
    b = model.log_prob(x[:8].contiguous(memory_format=torch.channels_last))
    assert torch.allclose(a, b, atol=1e-3)
    with pytest.raises(FlowInputError, match=r"channels_last=True is for image models"):
        fit(tiny_model(), gaussian(64), steps=1, channels_last=True, progress=False)


# -- the run's state, its configuration, the model's objective and flags -------------------------
def test_run_state_round_trips_whole_through_a_checkpoint(tmp_path):
    from flowlib.train import FitConfig, RunState
    from flowlib.train.checkpoint import load_run

    path = tmp_path / "ckpt.pt"
    fit(tiny_model(), gaussian(1000), val_data=gaussian(200, 1), steps=30, batch_size=64, eval_every=10,
        checkpoint=path, seed=1, restore_best=False, **QUIET)
    state, config = load_run(path, "test")
    # Everything is there: counters, curves, best weights, optimizer, RNG states, the config.
    assert state.step == 30 and state.epoch == 1 and state.epoch_samples == (30 - 15) * 64
    assert len(state.history.losses) == len(state.history.grad_norms) == 30
    assert state.history.val_steps == [10, 20, 30] and state.best_weights is not None
    assert state.optimizer["state"] and state.model and len(state.rng) == 1
    assert FitConfig.from_dict(config) == FitConfig.build(steps=30, batch_size=64, eval_every=10,
                                                          checkpoint=str(path), seed=1, restore_best=False,
                                                          progress=False)
    again = RunState.from_dict(state.to_dict())
    assert again == state
    # ... and through a weights_only file again: the state is one value, saved and read whole.
    save_checkpoint(state.to_dict(), tmp_path / "again.pt")
    assert RunState.from_dict(load_checkpoint(tmp_path / "again.pt")) == state
    # Equality is not vacuous: one changed number or tensor element is seen.
    again.history.losses[3] += 1e-12
    assert again != state
    other = RunState.from_dict(copy.deepcopy(state.to_dict()))  # from_dict keeps the tensors, no copy
    next(iter(other.best_weights.values())).view(-1)[0] += 1.0
    assert other != state


def test_fit_config_is_checked_once_and_round_trips():
    from flowlib.train import FitConfig

    c = FitConfig.build(steps=10, amp=None, device=torch.device("cpu"), checkpoint=Path("runs/a.pt"))
    assert c.amp == "off" and c.device == "cpu" and c.checkpoint == str(Path("runs/a.pt"))
    assert FitConfig.from_dict(c.to_dict()) == c
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in c.to_dict().values())
    with pytest.raises(FlowInputError, match="did you mean 'steps'"):
        fit(tiny_model(), gaussian(100), step=5, **QUIET)
    with pytest.raises(FlowInputError, match="batch_size must be an integer >= 1"):
        FitConfig.build(steps=5, batch_size=0)


def test_fit_reports_in_the_models_unit():
    torch.manual_seed(0)
    model = flowlib.realnvp(2)
    x, x_test = gaussian(512), gaussian(256, 2)
    r = fit(model, x, test_data=x_test, steps=10, batch_size=64, seed=0, **QUIET)
    assert r.unit == model.loss_unit == "nats"
    with torch.no_grad():
        assert r.test == pytest.approx(model.loss(x_test).double().mean().item(), rel=1e-6)

    from flowlib.image_models import nice_image

    torch.manual_seed(0)
    images = torch.randint(0, 17, (64, 1, 8, 8)).float()
    model = nice_image((1, 8, 8), couplings=2, hidden=8, blocks=1, grey_levels=17)
    r = fit(model, images, val_data=images, steps=4, batch_size=32, seed=0, **QUIET)
    assert r.unit == model.loss_unit == "bits/dim"
    with torch.no_grad():
        bpd = model.loss(images).mean().item()
    assert r.val[-1] == pytest.approx(bpd, abs=0.05)  # another dequantization draw
    assert 1.0 < r.val[-1] < 20.0  # bits/dim (about log2 17 = 4.1 untrained), not nats per image (> 150)


class CountsValidate(flowlib.FlowModel):
    """Records the model's validate flag at every loss call: fit must never flip it."""

    def loss(self, x):
        self.seen = [*getattr(self, "seen", []), self.validate]
        return super().loss(x)


@pytest.mark.parametrize("validate", [True, False])
def test_fit_leaves_the_models_flags_as_they_were(validate, monkeypatch):
    import flowlib.core

    model = CountsValidate(flowlib.Compose(Affine(2), SinhArcsinh(2), Affine(2)), flowlib.StandardNormal(2),
                           validate=validate)
    model.flow[1].eval()  # partly in evaluation mode: every module's own flag must come back
    flags = [m.training for m in model.modules()]
    checks = []
    real = flowlib.core.check_data
    monkeypatch.setattr(flowlib.core, "check_data", lambda *a, **k: checks.append(1) or real(*a, **k))
    fit(model, gaussian(500), val_data=gaussian(100, 1), test_data=gaussian(100, 2), steps=12, batch_size=50,
        eval_every=4, **QUIET)
    assert model.validate is validate and set(model.seen) == {validate} and len(model.seen) > 12
    assert [m.training for m in model.modules()] == flags
    # The data was checked once at fit's door; the model's own checks were skipped in the loop,
    # and they are back afterwards.
    assert checks == []
    model.log_prob(gaussian(10))
    assert checks == ([1] if validate else [])


def test_a_module_without_a_loss_needs_loss_fn():
    net = torch.nn.Linear(2, 1)
    with pytest.raises(FlowInputError, match=r"Linear does not say what training minimises.*loss_fn"):
        fit(net, gaussian(100), steps=2, **QUIET)
    x = gaussian(256)

    def squared_error(model, batch):  # a plain regression through fit, with its own objective
        return ((model(batch) - batch @ torch.tensor([[1.0], [-2.0]])) ** 2).mean()

    r = fit(net, x, steps=60, batch_size=64, lr=5e-2, loss_fn=squared_error, **QUIET)
    assert r.unit == "loss" and r.losses[-1] < 0.1 * r.losses[0]


def test_checkpoint_of_the_old_format_is_refused_clearly(tmp_path):
    path = tmp_path / "old.pt"
    save_checkpoint({"format": "flowlib.fit/1", "step": 3}, path)
    with pytest.raises(FlowInputError, match=r"flowlib.fit/1.*resume=False"):
        fit(tiny_model(), gaussian(100), steps=5, checkpoint=path, **QUIET)
    r = fit(tiny_model(), gaussian(100), steps=5, checkpoint=path, resume=False, **QUIET)
    assert r.resumed_from is None and load_checkpoint(path)["step"] == 5
