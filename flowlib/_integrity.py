"""One checksum for the tensors of a file flowlib writes, and the checks made when it is read.

A checkpoint is a nested value of dicts, lists and tuples whose leaves are tensors and plain
values (``str``, ``int``, ``float``, ``bool``, ``None``). ``torch.load`` notices a truncated
file, but not a flipped byte inside a tensor record: the file still unpickles and the model
silently computes with a corrupted weight. :func:`state_checksum` is a SHA-256 over every
tensor of such a value -- for each, its key path, dtype, shape and raw bytes, in a fixed
(sorted) order -- so two values have the same checksum exactly when their tensors are the
same, wherever and however they were saved. Plain values are not hashed: they are the file's
description (metrics, the command, the date), which may be edited without touching a weight;
the shipped files' manifest (``flowlib/checkpoints/MANIFEST.json``) holds a SHA-256 of the
whole file for those.

A writer stores the checksum beside the tensors under :data:`CHECKSUM_KEY`
(:func:`with_checksum`); a reader calls :func:`verify_checksum`, which raises
:class:`IntegrityError` naming the file and what to do, and :func:`require_finite`, which
refuses a NaN or infinite weight (a file can be consistent and still hold a NaN written by a
diverged run or by hand).

>>> import torch
>>> blob = with_checksum({"state_dict": {"w": torch.ones(2)}, "step": 3})
>>> verify_checksum(blob, "run.pt", "load", "delete it")
>>> blob["state_dict"]["w"][0] = 1.5
>>> verify_checksum(blob, "run.pt", "load", "delete it")
Traceback (most recent call last):
...
flowlib._integrity.IntegrityError: load: the tensors of run.pt do not match the checksum recorded \
in the file (tensor bytes changed after it was written: a corrupted or edited file); delete it
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from flowlib._checks import FlowInputError

__all__ = ["CHECKSUM_KEY", "IntegrityError", "state_checksum", "with_checksum", "verify_checksum",
           "require_finite", "nonfinite_tensors", "file_sha256"]

#: The key under which a file stores :func:`state_checksum` of the rest of its content.
CHECKSUM_KEY = "tensor_sha256"

KeyPath = tuple[Any, ...]


class IntegrityError(FlowInputError):
    """A file's content is not what was written: a checksum mismatch or a non-finite weight.

    A :class:`~flowlib.core.FlowInputError`, so code that catches flowlib's input errors
    catches it too. The message names the file and what to do.
    """


def _tensors(obj: Any, path: KeyPath = ()) -> Iterator[tuple[KeyPath, torch.Tensor]]:
    """Every tensor of a nested value with its key path, dict keys in sorted order.

    Sorted by ``repr`` so the order depends neither on insertion order nor on key types
    (``repr`` of a str and of an int never collide). The top-level checksum entry is skipped:
    a file's checksum covers the rest of the file, not itself.
    """
    if isinstance(obj, torch.Tensor):
        yield path, obj
    elif isinstance(obj, Mapping):
        for key in sorted(obj, key=repr):
            if path == () and key == CHECKSUM_KEY:
                continue
            yield from _tensors(obj[key], (*path, key))
    elif isinstance(obj, (list, tuple)):
        for i, item in enumerate(obj):
            yield from _tensors(item, (*path, i))


def _field(h: Any, data: bytes) -> None:
    """Length-prefixed, so that no two different sequences of fields hash the same bytes."""
    h.update(len(data).to_bytes(8, "little"))
    h.update(data)


def _raw_bytes(t: torch.Tensor) -> bytes:
    """The tensor's values as bytes, in row-major order, independent of its strides and device."""
    t = t.detach().to("cpu").resolve_conj().resolve_neg().contiguous().reshape(-1)
    if t.numel() == 0:
        return b""
    return t.view(torch.uint8).numpy().tobytes()


def state_checksum(obj: Any) -> str:
    """SHA-256 (hex) over every tensor of ``obj``: key path, dtype, shape and bytes of each.

    >>> import torch
    >>> a = state_checksum({"w": torch.zeros(3), "note": "plain values are not hashed"})
    >>> a == state_checksum({"note": "edited", "w": torch.zeros(3)})
    True
    >>> a == state_checksum({"w": torch.zeros(3, dtype=torch.float64)})
    False
    >>> len(a)
    64
    """
    h = hashlib.sha256(b"flowlib.state_checksum/1")
    for path, t in _tensors(obj):
        if t.layout != torch.strided or t.is_quantized:
            raise FlowInputError(f"state_checksum: only dense tensors can be checksummed, "
                                 f"got a {t.layout} tensor at {_show(path)}")
        _field(h, repr(path).encode())
        _field(h, str(t.dtype).encode())
        _field(h, repr(tuple(t.shape)).encode())
        _field(h, _raw_bytes(t))
    return h.hexdigest()


def with_checksum(blob: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``blob`` with its checksum under :data:`CHECKSUM_KEY` (what a writer saves)."""
    return {**{k: v for k, v in blob.items() if k != CHECKSUM_KEY}, CHECKSUM_KEY: state_checksum(blob)}


def verify_checksum(blob: Any, file: str | os.PathLike, who: str, remedy: str, *,
                    required: bool = False) -> None:
    """Raise :class:`IntegrityError` when ``blob``'s tensors differ from its recorded checksum.

    ``file`` names the file in the message, ``who`` the call, ``remedy`` says what to do (for
    example "re-install flowlib" or "delete it and start with resume=False"). A file without a
    checksum (written before checksums were recorded) passes unless ``required``.
    """
    name = os.fspath(file)
    recorded = blob.get(CHECKSUM_KEY) if isinstance(blob, Mapping) else None
    if recorded is None:
        if required:
            raise IntegrityError(f"{who}: {name} records no checksum of its tensors ({CHECKSUM_KEY!r}), "
                                 f"so its weights cannot be trusted; {remedy}")
        return
    if not isinstance(recorded, str) or recorded != state_checksum(blob):
        raise IntegrityError(f"{who}: the tensors of {name} do not match the checksum recorded in the file "
                             f"(tensor bytes changed after it was written: a corrupted or edited file); "
                             f"{remedy}")


def nonfinite_tensors(obj: Any) -> list[str]:
    """The key paths (``a/b/c``) of the floating-point tensors of ``obj`` holding a NaN or inf.

    >>> import torch
    >>> nonfinite_tensors({"sd": {"w": torch.tensor([1.0, float("nan")]), "n": torch.tensor(3)}})
    ['sd/w']
    """
    return [_show(path) for path, t in _tensors(obj)
            if (t.is_floating_point() or t.is_complex()) and t.numel() and not bool(torch.isfinite(t).all())]


def require_finite(obj: Any, file: str | os.PathLike, who: str, remedy: str) -> None:
    """Raise :class:`IntegrityError` naming the first tensors of ``obj`` that hold a NaN or inf."""
    bad = nonfinite_tensors(obj)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise IntegrityError(f"{who}: {os.fspath(file)} holds non-finite values (NaN or inf) in "
                             f"{', '.join(bad[:3])}{more}; a model built from it would give NaN everywhere; "
                             f"{remedy}")


def file_sha256(path: str | os.PathLike | Any) -> str:
    """SHA-256 (hex) of a file's bytes; ``path`` may be any object with ``open("rb")``."""
    h = hashlib.sha256()
    opener = path.open if hasattr(path, "open") else Path(path).open
    with opener("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _show(path: KeyPath) -> str:
    return "/".join(str(k) for k in path) or "<top level>"
