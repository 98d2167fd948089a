"""The trained image flows that ship with the course (``checkpoints/*.pt``), and their loader.

Each file is written by ``scripts/train_image_flow.py`` as a dictionary of tensors and plain
values, so it loads with ``torch.load(..., weights_only=True)`` (no pickled code runs)::

    {"format": "flowlib.pretrained/1", "builder": "glow_image", "kwargs": {...},
     "state_dict": {...}, "data": "mnist", "metrics": {"test_bpd": ...}, "command": "...",
     "hardware": "...", ...}

The model is rebuilt by the named builder of :mod:`flowlib.image_models` with the stored
keyword arguments, then its weights are loaded (ActNorm's "initialised" flag included, so the
first batch never re-initialises it).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from flowlib import image_models
from flowlib.core import FlowInputError
from flowlib.image_models import ImageFlowModel

__all__ = ["FORMAT", "CHECKPOINTS", "load_pretrained", "shipped_checkpoints", "checkpoint_info"]

FORMAT = "flowlib.pretrained/1"
#: Only these builders may be named by a file: a file never chooses arbitrary code to call.
BUILDERS = frozenset({"nice_image", "realnvp_image", "glow_image"})
#: The repository's checkpoints/ folder (beside the flowlib package in a clone).
CHECKPOINTS = Path(__file__).resolve().parents[1] / "checkpoints"


def checkpoint_info(path: str | os.PathLike[str]) -> dict:
    """Everything stored in a shipped file except the weights (builder, data, metrics, command...)."""
    blob = _read(path)
    return {k: v for k, v in blob.items() if k != "state_dict"}


def _read(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"load_pretrained: no file {path}; train one with scripts/train_image_flow.py "
            f"(see checkpoints/README.md)"
        )
    blob = torch.load(path, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise FlowInputError(f"load_pretrained: {path} is not a {FORMAT!r} file")
    if blob.get("builder") not in BUILDERS:
        raise FlowInputError(
            f"load_pretrained: {path} names the builder {blob.get('builder')!r}, "
            f"expected one of {sorted(BUILDERS)}"
        )
    return blob


def load_pretrained(path: str | os.PathLike[str],
                    map_location: str | torch.device = "cpu") -> ImageFlowModel:
    """Rebuild the model stored in ``path``, in evaluation mode, on ``map_location``."""
    blob = _read(path, map_location)
    model = getattr(image_models, blob["builder"])(**blob["kwargs"])
    model.load_state_dict(blob["state_dict"])
    return model.to(map_location).eval()


def shipped_checkpoints(folder: str | os.PathLike[str] | None = None) -> dict[str, Path]:
    """``{file stem: path}`` of the checkpoints in ``folder`` (default: the repository's)."""
    folder = CHECKPOINTS if folder is None else Path(folder)
    if not folder.is_dir():
        return {}
    return {p.stem: p for p in sorted(folder.glob("*.pt"))}
