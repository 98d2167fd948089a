"""Atomic checkpoints that load with ``torch.load(..., weights_only=True)``.

A checkpoint written while training must never be half a file: a crash, a full disk or a
Binder cull in the middle of ``torch.save`` would otherwise destroy the last good state.
So the file is written beside its final place under a temporary name, flushed and synced
to disk, then renamed over the old one with ``os.replace`` (atomic on POSIX and Windows):
a reader sees either the old checkpoint or the new one, never a mixture.

Loading uses ``weights_only=True``, which unpickles only tensors and plain containers
(dict, list, tuple, str, int, float, bool, None), so a checkpoint from elsewhere cannot run
code. Everything stored must therefore be of those types: the random-number-generator
states of Python and NumPy are converted to tensors by :func:`rng_state`.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["save_checkpoint", "load_checkpoint", "rng_state", "set_rng_state"]


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same folder, fsync, rename).

    The temporary file lives in the destination folder because ``os.replace`` is atomic
    only within one file system. On any error the temporary file is removed and an
    existing checkpoint at ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # BaseException too: a KeyboardInterrupt mid-write must not leave debris behind.
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows: folders cannot be opened, and the rename is durable anyway
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` (tensors and plain containers only)."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise RuntimeError(
            f"load_checkpoint: could not read {path} ({type(err).__name__}: {err}). "
            "If the file is corrupt or from an older version, delete it or start with resume=False."
        ) from err


# -- random-number-generator states as tensors ---------------------------------------------
def rng_state() -> dict[str, Any]:
    """The states of every generator training may draw from, as weights_only-safe values.

    torch (CPU, and every CUDA device if CUDA is in use), NumPy's legacy global generator
    and Python's ``random``. Restoring them with :func:`set_rng_state` replays the same
    random numbers (dequantization noise, dropout, ...) after a resume.
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
    """Restore the generators saved by :func:`rng_state`."""
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
