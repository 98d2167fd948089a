"""Atomic checkpoints that load with ``torch.load(..., weights_only=True)``.

A checkpoint written while training must never be half a file: a crash, a full disk or a
Binder cull in the middle of ``torch.save`` would otherwise destroy the last good state. The
bytes therefore go through :func:`flowlib._io.atomic_write` (temporary file beside the target,
fsync, ``os.replace``): a reader sees the old checkpoint or the new one, never a mixture.

Loading uses ``weights_only=True``, which unpickles only tensors and plain containers (dict,
list, tuple, str, int, float, bool, None), so a checkpoint from elsewhere cannot run code.
Everything stored must be of those types: the random-number-generator states of Python and
NumPy are converted to tensors by :func:`rng_state`.

:func:`save_run` and :func:`load_run` write and read a whole training run (its
:class:`~flowlib.train.state.RunState` and its configuration as plain values); they are the
one place where a resume meets the file. (The lock on the path is :mod:`~flowlib.train.lock`,
the comparison of the stored configuration with the new one :mod:`~flowlib.train.resume`.)

Integrity: ``torch.load`` notices a truncated file but not a flipped byte inside a tensor
record. Every dict written by :func:`save_checkpoint` therefore records
:func:`flowlib._integrity.state_checksum` of its tensors (under ``"tensor_sha256"``), and
:func:`load_checkpoint` verifies it, naming the file and what to do. A file written before
checksums were recorded loads as before (:func:`load_run` warns that it is not verified).
"""

from __future__ import annotations

import os
import random
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flowlib._checks import FlowInputError
from flowlib._integrity import CHECKSUM_KEY, verify_checksum, with_checksum
from flowlib._io import atomic_write
from flowlib.train.state import FORMAT, RunState

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state", "save_run", "load_run"]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically; on any error an existing file is left untouched.

    A dict gets the checksum of its tensors (``"tensor_sha256"``), which :func:`load_checkpoint`
    verifies; a stale one from an earlier load is replaced.

    >>> import tempfile, pathlib
    >>> p = save_checkpoint({"step": 3}, pathlib.Path(tempfile.mkdtemp()) / "run.pt")
    >>> load_checkpoint(p)["step"]
    3
    """
    path = Path(path)
    blob = with_checksum(state) if isinstance(state, dict) else state
    with atomic_write(path, "wb") as f:
        torch.save(blob, f)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu", *,
                    who: str = "load_checkpoint", remedy: str = "delete it, or restore it from a copy"
                    ) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (tensors and plain containers only).

    The checksum of its tensors, when it records one, is verified: a mismatch raises
    :class:`flowlib._integrity.IntegrityError` (a FlowInputError) naming the file, ``who`` reads
    it and what to do (``remedy``).
    """
    path = Path(path)
    try:
        blob = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise RuntimeError(
            f"{who}: could not read {path} ({type(err).__name__}: {err}). "
            "If the file is corrupt or from an older version, delete it or start with resume=False."
        ) from err
    verify_checksum(blob, path, who, remedy)
    return blob


def save_run(path: Path, state: RunState, config: dict[str, Any]) -> None:
    """One training run to ``path``: the state's own dict plus the configuration (plain values)."""
    save_checkpoint({**state.to_dict(), "config": config}, path)


def load_run(path: Path, where: str) -> tuple[RunState, dict[str, Any] | None]:
    """The run saved by :func:`save_run` and the configuration it was trained with.

    A file of another kind (or of the format before the run's state was one value) is refused
    with a message that says how to start over.
    """
    blob = load_checkpoint(path, who="fit", remedy="delete it or pass resume=False to start over")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        found = blob.get("format") if isinstance(blob, dict) else type(blob).__name__
        raise FlowInputError(f"{where} was not written by this version of flowlib.train.fit (format "
                             f"{found!r}, expected {FORMAT!r}); pass resume=False to overwrite it")
    if CHECKSUM_KEY not in blob:
        warnings.warn(f"{where} records no checksum of its tensors (written before flowlib recorded them), "
                      "so a corrupted weight would go unnoticed; it is resumed as it is, and the next "
                      "checkpoint records one", stacklevel=4)
    return RunState.from_dict(blob), blob.get("config")


# -- random-number-generator states as tensors ---------------------------------------------
def rng_state() -> dict[str, Any]:
    """The states of every generator training may draw from, as weights_only-safe values.

    torch (CPU, and every CUDA device if CUDA is in use), NumPy's legacy global generator and
    Python's ``random``. Restoring them with :func:`set_rng_state` replays the same random
    numbers (dequantization noise, dropout, ...) after a resume.
    """
    version, mt, gauss_next = random.getstate()
    # The legacy global generator on purpose: it is the one user code seeds with np.random.seed.
    keys, pos, has_gauss, cached = np.random.get_state(legacy=True)[1:]  # noqa: NPY002
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        # The Mersenne-Twister words are < 2**32, so int64 holds them exactly.
        "python": {"version": int(version), "state": torch.tensor(mt, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the generators saved by :func:`rng_state`.

    >>> saved = rng_state(); a = torch.rand(2); set_rng_state(saved)
    >>> torch.equal(a, torch.rand(2))
    True
    """
    torch.set_rng_state(state["torch"].cpu().to(torch.uint8))
    n = state["numpy"]
    legacy = ("MT19937", n["keys"].numpy().astype(np.uint32), int(n["pos"]),
              int(n["has_gauss"]), float(n["cached_gaussian"]))
    np.random.set_state(legacy)  # noqa: NPY002
    p = state["python"]
    random.setstate((int(p["version"]), tuple(int(v) for v in p["state"].tolist()), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda and torch.cuda.is_available():
        # A checkpoint from a machine with more GPUs restores what fits here.
        n_dev = torch.cuda.device_count()
        for i, s in enumerate(cuda[:n_dev]):
            torch.cuda.set_rng_state(s.cpu().to(torch.uint8), device=i)
