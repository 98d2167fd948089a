"""Issue 12, item 3: one run per checkpoint path, held for the run's lifetime.

A second fit on a path another process is training into gets an error naming the owner;
the lock goes away with its run however the run ends (return, exception, Ctrl-C), and a
lock file left by a killed process is taken over with a warning.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import pytest
import torch

import flowlib
from flowlib.elementwise import Affine
from flowlib.train import TrainingError, fit
from flowlib.train.lock import CheckpointInUse, CheckpointLock, lock_path

QUIET = {"progress": False}


def model() -> flowlib.FlowModel:
    torch.manual_seed(0)
    return flowlib.FlowModel(Affine(2), flowlib.StandardNormal(2))


def data() -> torch.Tensor:
    return torch.randn(200, 2, generator=torch.Generator().manual_seed(0))


CHILD = textwrap.dedent("""
    import sys, time, pathlib, torch, flowlib
    from flowlib.elementwise import Affine
    from flowlib.train import fit
    path, marker = sys.argv[1], pathlib.Path(sys.argv[2])
    model = flowlib.FlowModel(Affine(2), flowlib.StandardNormal(2))
    def slow(model, x):
        marker.write_text("training")
        time.sleep(0.05)
        return -model.log_prob(x).mean()
    fit(model, torch.randn(200, 2), steps=100000, loss_fn=slow, checkpoint=path, checkpoint_every=1,
        progress=False)
""")


def test_a_second_run_on_a_path_in_use_is_refused_naming_the_owner(tmp_path):
    path, marker = tmp_path / "run.pt", tmp_path / "started"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(marker)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (marker.exists() and path.exists()):
            assert child.poll() is None, child.stdout.read().decode()
            assert time.monotonic() < deadline, "the child run never started"
            time.sleep(0.1)
        before = path.stat().st_mtime_ns
        with pytest.raises(CheckpointInUse) as info:
            fit(model(), data(), steps=5, checkpoint=path, **QUIET)
        message = str(info.value)
        assert f"fit: checkpoint {path} is in use by another run (process {child.pid} on host " \
               f"{socket.gethostname()}" in message
        assert "another checkpoint path" in message and info.value.owner["pid"] == child.pid
        with pytest.raises(CheckpointInUse):  # resume=False does not bypass it either
            fit(model(), data(), steps=5, checkpoint=path, resume=False, **QUIET)
        assert child.poll() is None  # the first run goes on untouched
        assert path.stat().st_mtime_ns >= before
    finally:
        child.send_signal(signal.SIGKILL)  # no finally blocks, no clean-up: the lock file stays
        child.wait()
        child.stdout.close()
    assert lock_path(path).exists()
    with pytest.warns(UserWarning, match=rf"took over the lock .* \(process {child.pid} on host"):
        r = fit(model(), data(), steps=3, checkpoint=path, resume=False, **QUIET)
    assert r.steps == 3 and not lock_path(path).exists()


def test_a_stale_lock_file_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "run.pt"
    lock_path(path).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "started": 0.0}))
    with pytest.warns(UserWarning, match=rf"took over the lock .*no longer runs \(process {dead.pid}"):
        r = fit(model(), data(), steps=3, checkpoint=path, **QUIET)
    assert r.steps == 3 and path.exists() and not lock_path(path).exists()


def test_the_lock_is_released_on_return_errors_and_ctrl_c(tmp_path):
    path = tmp_path / "run.pt"
    fit(model(), data(), steps=3, checkpoint=path, **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]

    def interrupted(model, x):
        raise KeyboardInterrupt  # a second Ctrl-C, which interrupts at once

    with pytest.raises(KeyboardInterrupt):
        fit(model(), data(), steps=6, checkpoint=path, loss_fn=interrupted, **QUIET)
    assert not lock_path(path).exists()

    def nan(model, x):
        return model.log_prob(x).mean() * float("nan")

    with pytest.raises(TrainingError):
        fit(model(), data(), steps=6, checkpoint=path, loss_fn=nan, **QUIET)
    assert not lock_path(path).exists()
    with pytest.raises(flowlib.FlowInputError, match="other options"):  # refused at the resume
        fit(model(), data(), steps=6, lr=0.5, checkpoint=path, **QUIET)
    assert not lock_path(path).exists()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no stale-lock warning: every lock was removed
        r = fit(model(), data(), steps=6, checkpoint=path, **QUIET)
    assert r.resumed_from == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["run.pt"]


def test_a_path_held_in_this_process_is_refused_too(tmp_path):
    path = tmp_path / "run.pt"
    with CheckpointLock(path):  # e.g. a fit still running in a thread of this notebook
        with pytest.raises(CheckpointInUse, match=rf"process {os.getpid()} on host .* \(this process\)"):
            fit(model(), data(), steps=3, checkpoint=path, **QUIET)
    fit(model(), data(), steps=3, checkpoint=path, **QUIET)


def test_in_use_is_a_flow_input_error():
    assert issubclass(CheckpointInUse, flowlib.FlowInputError)
