"""The trained image flows that ship with flowlib (package data), and their loader.

The files live in the package itself, ``flowlib/checkpoints/*.pt``, and are installed with it
(``pyproject.toml``, ``[tool.setuptools.package-data]``); they are found through
:mod:`importlib.resources`, so ``load_pretrained("glow_mnist")`` works the same from a clone,
an editable install or a wheel in a fresh environment.

Each file is written by ``scripts/train_image_flow.py`` as a dictionary of tensors and plain
values, so it loads with ``torch.load(..., weights_only=True)`` (no pickled code runs)::

    {"format": "flowlib.pretrained/1", "builder": "glow_image", "kwargs": {...},
     "state_dict": {...}, "data": "mnist", "levels": 256, "metrics": {"test_bpd": ...},
     "command": "...", "hardware": "...", "converted": "...", ...}

The model is rebuilt by the named builder of :mod:`flowlib.image_models` with the stored
keyword arguments, then its weights are loaded (ActNorm's "initialised" flag included, so the
first batch never re-initialises it).

>>> sorted(shipped_checkpoints())
['glow_mnist', 'nice_mnist', 'realnvp_mnist']
>>> checkpoint_info("nice_mnist")["builder"]
'nice_image'
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import torch

from flowlib import image_models
from flowlib._checks import FlowInputError
from flowlib.image_models import ImageFlowModel

try:
    from importlib.resources.abc import Traversable
except ImportError:  # Python 3.10
    from importlib.abc import Traversable

__all__ = ["FORMAT", "BUILDERS", "load_pretrained", "shipped_checkpoints", "checkpoint_info"]

FORMAT = "flowlib.pretrained/1"
#: Only these builders may be named by a file: a file never chooses arbitrary code to call.
BUILDERS = frozenset({"nice_image", "realnvp_image", "glow_image"})
#: A shipped name ("glow_mnist"), a path to a file, or an entry of :func:`shipped_checkpoints`.
Source = str | os.PathLike | Traversable


def _folder() -> Traversable:
    """The installed ``flowlib/checkpoints`` folder, wherever (and however) flowlib is installed."""
    return resources.files("flowlib").joinpath("checkpoints")


def shipped_checkpoints(folder: str | os.PathLike[str] | None = None) -> dict[str, Traversable]:
    """``{name: file}`` of the shipped checkpoints (``folder``: list that folder's ``*.pt`` instead).

    Each value has ``.name`` and goes straight to :func:`load_pretrained` and
    :func:`checkpoint_info` (a ``pathlib.Path`` for a plain install, a ``Traversable`` for a
    zipped one).
    """
    where: Traversable = _folder() if folder is None else Path(folder)
    if not where.is_dir():
        return {}
    files = [f for f in where.iterdir() if f.is_file() and f.name.endswith(".pt")]
    return {f.name[:-3]: f for f in sorted(files, key=lambda f: f.name)}


def _resolve(source: Source) -> Traversable:
    """A shipped name becomes its packaged file; anything else is taken as a path."""
    if not isinstance(source, (str, os.PathLike)):
        if isinstance(source, Traversable):  # an entry of shipped_checkpoints() inside a zip
            return source
        raise FlowInputError(f"load_pretrained: expected a shipped name such as 'glow_mnist' or a path, "
                             f"got {type(source).__name__}")
    shipped = shipped_checkpoints()
    if isinstance(source, str) and source in shipped:
        return shipped[source]
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(
            f"load_pretrained: {str(source)!r} is neither a shipped checkpoint "
            f"({', '.join(shipped) or 'none'}) nor a file; train one with scripts/train_image_flow.py "
            f"(see flowlib/checkpoints/README.md)"
        )
    return path


def _read(source: Source, map_location: str | torch.device = "cpu") -> dict:
    file = _resolve(source)
    with file.open("rb") as f:
        blob = torch.load(f, map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise FlowInputError(f"load_pretrained: {file.name} is not a {FORMAT!r} file")
    if blob.get("builder") not in BUILDERS:
        raise FlowInputError(
            f"load_pretrained: {file.name} names the builder {blob.get('builder')!r}, "
            f"expected one of {sorted(BUILDERS)}"
        )
    return blob


def checkpoint_info(source: Source) -> dict:
    """Everything stored in a checkpoint except the weights (builder, data, metrics, command...)."""
    return {k: v for k, v in _read(source).items() if k != "state_dict"}


def load_pretrained(source: Source, map_location: str | torch.device = "cpu") -> ImageFlowModel:
    """Rebuild a checkpoint's model, in evaluation mode, on ``map_location``.

    ``source`` is a shipped name (``"glow_mnist"``, see :func:`shipped_checkpoints`) or the
    path of a file written by ``scripts/train_image_flow.py``.

    >>> model = load_pretrained("nice_mnist")
    >>> model.training, tuple(model.event_shape)
    (False, (1, 28, 28))
    """
    blob = _read(source, map_location)
    model = getattr(image_models, blob["builder"])(**blob["kwargs"])
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as err:
        raise FlowInputError(
            f"load_pretrained: the weights of {_resolve(source).name} do not fit today's "
            f"{blob['builder']} (a file from an older flowlib? scripts/convert_checkpoints.py converts "
            f"one): {err}"
        ) from err
    return model.to(map_location).eval()
