"""Issue 12 at fit's doors: no silent wrong answer, no lost run.

The best-model restore with a non-finite validation figure, the size arguments, a resume
with other options, epochs counted in samples, checksums of the checkpoints, the checkpoint
folder checked at the start, and the cryptic failures of fit's arguments. (The lock on the
checkpoint path has its own file, test_train_lock.py.) Each trains a tiny flow for well
under a second.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import flowlib
from flowlib.core import FlowInputError
from flowlib.elementwise import Affine, SinhArcsinh
from flowlib.train import TrainingError, fit
from flowlib.train.checkpoint import load_checkpoint, save_checkpoint

QUIET = {"progress": False}


def tiny_model(seed: int = 0, cls: type = flowlib.FlowModel) -> flowlib.FlowModel:
    torch.manual_seed(seed)
    model = cls(flowlib.Compose(Affine(2), SinhArcsinh(2), Affine(2)), flowlib.StandardNormal(2))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(std=0.1)
    return model


def gaussian(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, generator=g) * torch.tensor([0.5, 2.0]) + torch.tensor([2.0, -1.0])


# -- item 2: the best-model restore and the size arguments ---------------------------------------
class NaNOnSecondValidation(flowlib.FlowModel):
    """Finite in training; from the second validation on, one validation batch gives NaN."""

    def log_prob(self, x):
        lp = super().log_prob(x)
        if not self.training:
            self.eval_calls = getattr(self, "eval_calls", 0) + 1
            if self.eval_calls >= 3:  # validation 1 is calls 1-2 (two batches), validation 2 starts at 3
                return lp * float("nan")
        return lp


def test_a_nan_validation_figure_stops_the_run_naming_the_step(tmp_path):
    model = tiny_model(cls=NaNOnSecondValidation)
    path = tmp_path / "run.pt"
    with pytest.raises(TrainingError) as info:
        fit(model, gaussian(1000), val_data=gaussian(200, 1), steps=40, batch_size=50, eval_batch_size=100,
            eval_every=10, checkpoint=path, **QUIET)
    message = str(info.value)
    assert "fit: the validation figure at step 20 is nan" in message
    assert "never compared with the best" in message and f"({path}, step 10)" in message
    assert info.value.step == 20 and info.value.result.best_step == 10
    assert info.value.result.val == [pytest.approx(info.value.result.best_val)]  # the NaN is not recorded


def test_an_infinite_test_figure_is_an_error_too():
    class InfOnTest(flowlib.FlowModel):
        def log_prob(self, x):
            lp = super().log_prob(x)
            return lp - float("inf") if not self.training else lp

    with pytest.raises(TrainingError, match=r"fit: the test figure after step 5 is inf"):
        fit(tiny_model(cls=InfOnTest), gaussian(200), test_data=gaussian(50, 1), steps=5, **QUIET)


@pytest.mark.parametrize("name", ["epochs", "steps", "batch_size", "eval_batch_size", "eval_every",
                                  "checkpoint_every", "early_stopping_patience"])
@pytest.mark.parametrize("value", [-1, 0, 2.5, True, "8"])
def test_every_size_argument_is_checked(name, value):
    kw = {"steps": 5, "val_data": gaussian(50, 1), **QUIET, name: value}
    with pytest.raises(FlowInputError, match=rf"fit: {name} must be an integer >= 1, got {value!r}"):
        fit(tiny_model(), gaussian(100), **kw)


# -- item 10: fit's cryptic failures ---------------------------------------------------------------
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_clear_error(device):
    model = tiny_model()
    with pytest.raises(FlowInputError, match=r"fit: device='cuda.*' but CUDA is not available.*'cpu'"):
        fit(model, gaussian(100), steps=2, device=device, **QUIET)
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.parametrize("options, message", [
    ({"warmup_steps": -5}, "fit: warmup_steps must be an integer >= 0, got -5"),
    ({"warmup_steps": "x"}, "fit: warmup_steps must be an integer >= 0, got 'x'"),
    ({"lr": True}, "fit: lr must be a real number, got True"),
    ({"device": "gpu"}, "fit: device must be 'auto' or a torch device, got 'gpu'"),
])
def test_bad_options_name_fit_and_the_argument(options, message):
    with pytest.raises(FlowInputError, match=message):
        fit(tiny_model(), gaussian(100), steps=2, **options, **QUIET)


def test_early_stopping_without_validation_data_is_refused():
    with pytest.raises(FlowInputError, match=r"fit: early_stopping_patience=3 needs val_data"):
        fit(tiny_model(), gaussian(100), steps=2, early_stopping_patience=3, **QUIET)


@pytest.mark.parametrize("data", [gaussian(20).tolist(), tuple(gaussian(20).tolist()), gaussian(20).numpy()])
def test_a_python_list_or_array_as_data_says_how_to_convert_it(data):
    with pytest.raises(FlowInputError, match=rf"fit: train_data is a {type(data).__name__}.*torch.as_tensor"):
        fit(tiny_model(), data, steps=2, **QUIET)
    with pytest.raises(FlowInputError, match=rf"fit: val_data is a {type(data).__name__}"):
        fit(tiny_model(), gaussian(100), val_data=data, steps=2, **QUIET)


def test_a_list_of_batch_tensors_is_still_accepted():
    r = fit(tiny_model(), [gaussian(50, 1), gaussian(50, 2)], steps=4, **QUIET)
    assert r.steps == 4


class WithEmptyBatch:
    """An iterable of batches whose second one holds no sample (a filter that removed them all)."""

    def __init__(self, empty_at: int = 1) -> None:
        self.empty_at = empty_at

    def __iter__(self):
        for i in range(4):
            yield torch.zeros(0, 2) if i == self.empty_at else gaussian(20, i)


def test_an_empty_batch_from_a_loader_is_a_clear_error():
    with pytest.raises(FlowInputError, match=r"fit: batch 1 of epoch 0 of train_data is empty \(0 samples"):
        fit(tiny_model(), WithEmptyBatch(), steps=10, **QUIET)
    with pytest.raises(FlowInputError, match=r"fit: train_data \(first batch\) is empty"):
        fit(tiny_model(), WithEmptyBatch(empty_at=0), steps=10, **QUIET)
    with pytest.raises(FlowInputError, match=r"fit: batch 1 of val_data is empty"):
        fit(tiny_model(), gaussian(100), val_data=WithEmptyBatch(), steps=2, **QUIET)


# -- item 9: the checkpoint folder is checked at the start -------------------------------------------
#: Run in a child process whose permissions really are enforced (see the test below).
_UNWRITABLE_SCRIPT = r"""
import sys
from pathlib import Path

import torch

import flowlib
from flowlib.core import FlowInputError
from flowlib.elementwise import Affine
from flowlib.train import fit

folder = Path(sys.argv[1])
calls = []


def loss_fn(model, x):
    calls.append(1)
    return -model.log_prob(x).mean()


for path in (folder / "run.pt", folder / "sub" / "run.pt"):
    model = flowlib.FlowModel(Affine(2), flowlib.StandardNormal(2))
    try:
        fit(model, torch.randn(100, 2), steps=50, loss_fn=loss_fn, checkpoint=path, progress=False)
        print("no error")
    except FlowInputError as error:
        print(str(error).replace(chr(10), " "))
print("steps", len(calls))
"""


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
def test_an_unwritable_checkpoint_folder_fails_before_any_step(tmp_path):
    """A real read-only folder: as root, in a child without the capability to override permissions."""
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o500)
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv is not None, "as root this test needs setpriv (util-linux) to drop CAP_DAC_OVERRIDE"
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    try:
        run = subprocess.run([*prefix, sys.executable, "-c", _UNWRITABLE_SCRIPT, str(folder)],
                             capture_output=True, text=True, timeout=120, env=env)
    finally:
        folder.chmod(0o700)
    assert run.returncode == 0, run.stderr
    first, second, steps = run.stdout.strip().splitlines()
    assert re.search(r"fit: cannot write the checkpoint .*locked.*=None", first), first
    assert "fit: cannot create the checkpoint folder" in second, second
    assert steps == "steps 0"  # refused at the start, not after eval_every steps of work


def test_a_checkpoint_folder_that_cannot_be_written_fails_at_the_start(tmp_path, monkeypatch):
    # As the POSIX test above, where permissions cannot be taken away (root, Windows): the
    # operating system refuses to create the lock file, the first file fit writes there.
    import flowlib.train.lock as lock

    real_open = os.open

    def refusing_open(path, flags, *args):
        if str(path).endswith(".lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(lock.os, "open", refusing_open)
    calls = []

    def loss_fn(model, x):
        calls.append(1)
        return -model.log_prob(x).mean()

    with pytest.raises(FlowInputError, match=r"fit: cannot write the checkpoint folder .*Permission denied.*"
                                             r"before any training.*checkpoint=None"):
        fit(tiny_model(), gaussian(100), steps=50, loss_fn=loss_fn, checkpoint=tmp_path / "run.pt", **QUIET)
    assert calls == [] and not (tmp_path / "run.pt").exists()
    monkeypatch.undo()
    (tmp_path / "a_file").write_text("not a folder")
    with pytest.raises(FlowInputError, match=r"fit: cannot create the checkpoint folder .*a_file"):
        fit(tiny_model(), gaussian(100), steps=50, checkpoint=tmp_path / "a_file" / "run.pt", **QUIET)


def test_a_folder_as_checkpoint_path_is_refused(tmp_path):
    with pytest.raises(FlowInputError, match=r"fit: checkpoint=.* is a folder"):
        fit(tiny_model(), gaussian(100), steps=2, checkpoint=tmp_path, **QUIET)


# -- item 4: a resume with other options ------------------------------------------------------------
KW = dict(steps=20, batch_size=50, lr=1e-2, seed=1, **QUIET)


def test_a_resume_with_other_options_names_each_difference(tmp_path):
    path = tmp_path / "run.pt"
    fit(tiny_model(), gaussian(500), checkpoint=path, **KW)
    before = path.read_bytes()
    with pytest.raises(FlowInputError) as info:
        fit(tiny_model(), gaussian(500), checkpoint=path, **{**KW, "steps": 30, "weight_decay": 0.5,
                                                           "batch_size": 25})
    message = str(info.value)
    assert f"fit: checkpoint {path} was trained with other options" in message
    assert "batch_size=50 there, 25 now" in message and "weight_decay=0.0 there, 0.5 now" in message
    assert "steps" not in message.split("options:")[1].split(".")[0]  # a larger budget is no difference
    assert "resume_changes=('batch_size', 'weight_decay')" in message and "resume=False" in message
    assert path.read_bytes() == before


def test_named_changes_are_applied_not_replaced_by_the_checkpoints(tmp_path):
    path = tmp_path / "run.pt"
    fit(tiny_model(), gaussian(500), checkpoint=path, **KW)
    model = tiny_model()
    r = fit(model, gaussian(500), checkpoint=path, resume_changes=("weight_decay",),
            **{**KW, "steps": 25, "weight_decay": 0.5})
    assert r.resumed_from == 20 and r.steps == 25
    # The optimizer's state came from the file, its hyperparameters from this call.
    assert load_checkpoint(path)["optimizer"]["param_groups"][0]["weight_decay"] == 0.5
    assert load_checkpoint(path)["config"]["weight_decay"] == 0.5


def test_resume_changes_is_checked():
    with pytest.raises(FlowInputError, match=r"fit: resume_changes names 'weight_decy'.*'weight_decay'"):
        fit(tiny_model(), gaussian(100), steps=2, resume_changes=("weight_decy",), **QUIET)
    with pytest.raises(FlowInputError, match=r"fit: resume_changes must be option names"):
        fit(tiny_model(), gaussian(100), steps=2, resume_changes=3, **QUIET)


def test_steps_below_the_checkpoints_step_is_an_error(tmp_path):
    path = tmp_path / "run.pt"
    fit(tiny_model(), gaussian(500), checkpoint=path, **KW)
    with pytest.raises(FlowInputError, match=r"fit: checkpoint .* is at step 20, past steps=10.*resume=Fa"):
        fit(tiny_model(), gaussian(500), checkpoint=path, **{**KW, "steps": 10})
    r = fit(tiny_model(), gaussian(500), checkpoint=path, **KW)  # the same budget: returned as it is
    assert r.resumed_from == 20 and r.steps == 20


def test_epochs_are_counted_in_samples_across_a_new_batch_size(tmp_path):
    path = tmp_path / "run.pt"
    x = gaussian(1000)
    kw = dict(batch_size=100, lr=1e-2, seed=1, **QUIET)
    r = fit(tiny_model(), x, epochs=2, checkpoint=path, **kw)
    assert r.steps == 20 and r.epochs == 2.0
    r = fit(tiny_model(), x, epochs=4, checkpoint=path, resume_changes=("batch_size",),
            **{**kw, "batch_size": 200})
    assert r.stop_reason == "epochs" and r.steps == 20 + 2 * 5 and r.epochs == 4.0
    with pytest.raises(FlowInputError, match=r"is at epoch 4.0, past epochs=3"):
        fit(tiny_model(), x, epochs=3, checkpoint=path, **{**kw, "batch_size": 200})


# -- item 5: checksums of fit's checkpoints --------------------------------------------------------
def flip_a_tensor_byte(path):
    """Change one byte inside the largest tensor record of a torch zip file (the weights, not the pickle)."""
    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    raw = bytearray(path.read_bytes())
    # The local header's extra field can differ from the central directory's: read its length.
    extra = int.from_bytes(raw[info.header_offset + 28:info.header_offset + 30], "little")
    offset = info.header_offset + 30 + len(info.filename.encode()) + extra
    raw[offset + 1] ^= 0x40
    path.write_bytes(bytes(raw))


def test_a_corrupted_checkpoint_is_refused_on_resume(tmp_path):
    path = tmp_path / "run.pt"
    fit(tiny_model(), gaussian(500), val_data=gaussian(100, 1), checkpoint=path, **KW)
    assert isinstance(load_checkpoint(path)["tensor_sha256"], str)
    flip_a_tensor_byte(path)
    torch.load(path, weights_only=True)  # torch itself does not notice
    with pytest.raises(FlowInputError, match=rf"fit: the tensors of {path} do not match the checksum.*"
                                             "delete it or pass resume=False"):
        fit(tiny_model(), gaussian(500), checkpoint=path, **{**KW, "steps": 30})
    with pytest.raises(FlowInputError, match="load_checkpoint: the tensors of"):
        load_checkpoint(path)
    r = fit(tiny_model(), gaussian(500), checkpoint=path, resume=False, **KW)
    assert r.resumed_from is None


def test_a_checkpoint_with_a_nan_weight_is_refused_on_resume(tmp_path):
    path = tmp_path / "run.pt"
    fit(tiny_model(), gaussian(500), checkpoint=path, **KW)
    blob = load_checkpoint(path)
    next(iter(blob["model"].values())).view(-1)[0] = float("nan")
    del blob["tensor_sha256"]
    save_checkpoint(blob, path)  # consistent (a fresh checksum), but NaN
    with pytest.raises(FlowInputError, match=r"fit: .* holds non-finite values \(NaN or inf\) in model/"):
        fit(tiny_model(), gaussian(500), checkpoint=path, **{**KW, "steps": 30})


def test_a_run_file_without_a_checksum_still_resumes_with_a_warning(tmp_path):
    path = tmp_path / "run.pt"
    fit(tiny_model(), gaussian(500), checkpoint=path, **KW)
    blob = load_checkpoint(path)
    del blob["tensor_sha256"]
    torch.save(blob, path)  # as fit wrote it before checksums
    with pytest.warns(UserWarning, match="records no checksum"):
        r = fit(tiny_model(), gaussian(500), checkpoint=path, **{**KW, "steps": 25})
    assert r.resumed_from == 20
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit(tiny_model(), gaussian(500), checkpoint=path, **{**KW, "steps": 30})  # written with one now


def test_save_checkpoint_records_a_checksum_that_load_checkpoint_verifies(tmp_path):
    path = save_checkpoint({"w": torch.ones(3), "step": 1}, tmp_path / "c.pt")
    assert load_checkpoint(path)["step"] == 1 and "tensor_sha256" in load_checkpoint(path)
    flip_a_tensor_byte(path)
    with pytest.raises(FlowInputError, match=rf"load_checkpoint: the tensors of {path}"):
        load_checkpoint(path)


def test_a_dataloader_run_is_unchanged_by_the_checks(tmp_path):
    loader = DataLoader(TensorDataset(gaussian(400)), batch_size=40, shuffle=False)
    r = fit(tiny_model(), loader, epochs=2, lr=1e-2, seed=0, checkpoint=tmp_path / "l.pt", **QUIET)
    assert r.steps == 20 and r.epochs == 2.0 and r.stop_reason == "epochs"
