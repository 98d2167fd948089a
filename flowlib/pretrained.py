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

The model is rebuilt by the named builder (:func:`builder`: a fixed table of the builders of
:mod:`flowlib.image_models`, :func:`flowlib.tarflow.tarflow_image` and, for real-valued maps,
:func:`flowlib.field_models.glow_field`, written by ``scripts/train_field_flow.py``) with the stored
keyword arguments, then its weights are loaded (ActNorm's "initialised" flag included, so the
first batch never re-initialises it).

>>> {"glow_mnist", "nice_mnist", "realnvp_mnist", "tarflow_mnist"} <= set(shipped_checkpoints())
True
>>> checkpoint_info("nice_mnist")["builder"]
'nice_image'

**Trust.** A file is read once, as bytes, and checked before any model is built:

- a shipped file's SHA-256 must equal the one in ``flowlib/checkpoints/MANIFEST.json`` (name,
  file SHA-256, tensor checksum, builder, keywords, metrics; written by
  ``scripts/convert_checkpoints.py checksum``), so a corrupted installation is found;
- a file that records the checksum of its tensors (``tensor_sha256``, see
  :mod:`flowlib._integrity`) must match it: a flipped byte inside a tensor record, which
  ``torch.load`` does not notice, is refused; so is a NaN or infinite weight;
- a truncated or foreign file, missing entries or entries of the wrong type raise
  :class:`~flowlib.core.FlowInputError` naming the file, never a raw ``KeyError``;
- the builder's size keywords are bounded before anything is allocated, so a file cannot ask
  for a model that fills the memory: ``hidden`` at most 4,096, ``blocks`` at most 64,
  ``depth`` at most 256, ``couplings`` at most 256, ``scales`` at most 8, ``grey_levels`` at
  most 65,536, and for the transformer flow ``patch``, ``layers``, ``heads`` at most 64 and
  ``width`` at most 4,096; a spline Glow's ``spline_bins`` at most 256; a conditional model's
  ``classes`` at most 1,000 and
  ``context_shape`` at most 64 channels by 4,096 pixels a side; ``shape`` at most 64 channels,
  4,096 pixels a side and 4,194,304 values; and an estimate of the parameters and buffers at
  most 100,000,000 (400 MB in float32).
"""

from __future__ import annotations

import hashlib
import io
import json
import numbers
import os
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from flowlib import image_models
from flowlib._checks import FlowInputError
from flowlib._integrity import require_finite, verify_checksum
from flowlib.core import FlowModel
from flowlib.image_models import ImageFlowModel

try:
    from importlib.resources.abc import Traversable
except ImportError:  # Python 3.10
    from importlib.abc import Traversable

__all__ = ["FORMAT", "BUILDERS", "MANIFEST", "MAX_KWARGS", "MAX_PARAMETERS", "load_pretrained",
           "shipped_checkpoints", "checkpoint_info", "record_in_manifest", "builder"]

FORMAT = "flowlib.pretrained/1"
#: Only these builders may be named by a file: a file never chooses arbitrary code to call.
BUILDERS = frozenset({"nice_image", "realnvp_image", "glow_image", "tarflow_image", "glow_field"})
#: The shipped files' manifest, beside them in ``flowlib/checkpoints/``.
MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = "flowlib.checkpoints-manifest/1"
#: The largest size keyword a file may ask of its builder (old spellings share the new limit).
MAX_KWARGS = {"hidden": 4096, "blocks": 64, "depth": 256, "couplings": 256, "scales": 8, "grey_levels": 65536,
              "patch": 64, "width": 4096, "layers": 64, "heads": 64, "classes": 1000, "spline_bins": 256}
_OLD_SPELLINGS = {"levels": "scales", "steps": "depth", "bins": "grey_levels"}
MAX_CHANNELS, MAX_SIDE, MAX_EVENT_SIZE = 64, 4096, 4_194_304
#: The largest estimated number of parameters and buffers (400 MB in float32).
MAX_PARAMETERS = 100_000_000
#: A shipped name ("glow_mnist"), a path to a file, or an entry of :func:`shipped_checkpoints`.
Source = str | os.PathLike | Traversable


def builder(name: str):
    """The builder function a file may name (:data:`BUILDERS`), from a fixed table: never looked up
    by an arbitrary name."""
    from flowlib import field_models, tarflow  # both build on image_models: imported when asked for

    table = {"nice_image": image_models.nice_image, "realnvp_image": image_models.realnvp_image,
             "glow_image": image_models.glow_image, "tarflow_image": tarflow.tarflow_image,
             "glow_field": field_models.glow_field}
    if name not in table:
        raise FlowInputError(f"load_pretrained: unknown builder {name!r}, expected one of {sorted(table)}")
    return table[name]


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


def _shipped_name(file: Traversable) -> str | None:
    """The shipped name of ``file`` when it is one of the package's own files (else None)."""
    for name, shipped in shipped_checkpoints().items():
        if shipped == file or (isinstance(file, Path) and isinstance(shipped, Path)
                               and file.resolve() == shipped.resolve()):
            return name
    return None


def _remedy(shipped: str | None) -> str:
    if shipped is not None:
        return (f"re-install flowlib (pip install --force-reinstall flowlib), or in a clone of the "
                f"repository restore the file (git checkout -- flowlib/checkpoints/{shipped}.pt); a file "
                f"retrained on purpose is recorded with scripts/convert_checkpoints.py checksum")
    return ("re-download or copy the file again, or write it anew with scripts/train_image_flow.py (a file "
            "whose tensors you changed on purpose gets a new checksum from scripts/convert_checkpoints.py "
            "checksum --force --checkpoints ITS_FOLDER)")


def _check_manifest(name: str, raw: bytes, remedy: str) -> None:
    """The shipped file ``name`` must be, byte for byte, the one its manifest describes."""
    where = f"flowlib/checkpoints/{MANIFEST}"
    try:
        manifest = json.loads(_folder().joinpath(MANIFEST).read_text(encoding="utf-8"))
        entry = manifest["checkpoints"][name]
        want = entry["file_sha256"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise FlowInputError(f"load_pretrained: {where} is missing, unreadable or has no entry for {name}.pt "
                             f"({type(err).__name__}: {err}), so the shipped file cannot be checked; "
                             f"{remedy}") from err
    if hashlib.sha256(raw).hexdigest() != want:
        raise FlowInputError(f"load_pretrained: {name}.pt is not the file shipped with flowlib (its SHA-256 "
                             f"differs from the one in {where}): the installed copy is corrupted or was "
                             f"changed; {remedy}")


def _read(source: Source, manifest: bool = True) -> dict:
    """The checked content of a checkpoint, on the CPU (see the module's docstring for the checks).

    ``manifest=False`` skips the comparison with the manifest (for the writer of the manifest).
    """
    file = _resolve(source)
    name, shipped = (str(file) if isinstance(file, Path) else file.name), _shipped_name(file)
    remedy = _remedy(shipped)
    try:
        raw = file.read_bytes()
    except OSError as err:
        raise FlowInputError(f"load_pretrained: could not read {name} ({type(err).__name__}: {err}); check "
                             f"that the file is readable (its permissions) and not a folder") from err
    if shipped is not None and manifest:
        _check_manifest(shipped, raw, remedy)
    try:
        # Always onto the CPU first: the checks below read the values, and a device that is not
        # there is then reported as such by load_pretrained, not as a broken file.
        blob = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, foreign pickle, refused global: all one kind of answer
        said = str(err).splitlines()[0] if str(err) else ""
        raise FlowInputError(f"load_pretrained: {name} could not be read as a checkpoint "
                             f"({type(err).__name__}: {said[:200]}); the file is truncated, corrupted or "
                             f"not a checkpoint; {remedy}") from err
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise FlowInputError(f"load_pretrained: {name} is not a {FORMAT!r} file; {remedy}")
    builder = blob.get("builder")
    if not isinstance(builder, str) or builder not in BUILDERS:
        raise FlowInputError(f"load_pretrained: {name} names the builder {builder!r}, expected one of "
                             f"{sorted(BUILDERS)}; {remedy}")
    for key, kind in (("kwargs", "a dict of builder keywords"), ("state_dict", "a dict of tensors")):
        if not isinstance(blob.get(key), dict) or not all(isinstance(k, str) for k in blob[key]):
            found = type(blob.get(key)).__name__ if key in blob else "nothing"
            raise FlowInputError(f"load_pretrained: {name} has {found} under {key!r}, expected {kind}; "
                                 f"{remedy}")
    odd = [k for k, v in blob["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if odd:
        raise FlowInputError(f"load_pretrained: {name}: the state_dict entry {odd[0]!r} is a "
                             f"{type(blob['state_dict'][odd[0]]).__name__}, expected a tensor; {remedy}")
    verify_checksum(blob, name, "load_pretrained", remedy)
    require_finite(blob, name, "load_pretrained", remedy)
    return blob


def _size(value: Any, key: str, name: str, maximum: int, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not minimum <= value <= maximum:
        raise FlowInputError(f"load_pretrained: {name} asks the builder for {key}={value!r}, expected an "
                             f"integer from {minimum:,} to at most {maximum:,} "
                             f"(flowlib.pretrained.MAX_KWARGS): a damaged or foreign file")
    return int(value)


def _check_sizes(builder: str, kwargs: dict[str, Any], name: str) -> None:
    """Bound every size a file asks of its builder, and the model's estimated size, before building.

    The estimate counts the conditioners' convolutions (3x3, ``hidden`` channels, ``blocks``
    residual blocks of two), the 1x1 convolutions and the masks, with the channels of each
    scale; it is an upper bound of the true count within a factor of about two.
    """
    sizes = {}
    for key, value in kwargs.items():
        new = _OLD_SPELLINGS.get(key, key)
        if new in MAX_KWARGS:
            sizes[new] = _size(value, key, name, MAX_KWARGS[new], minimum=2 if new == "grey_levels" else 1)
    context = kwargs.get("context_shape")
    extra = sizes.get("classes", 0)  # context channels every conditioner reads, at most
    if context is not None:
        if not isinstance(context, (list, tuple)) or len(context) not in (1, 3):
            raise FlowInputError(f"load_pretrained: {name} asks for context_shape={context!r}, expected "
                                 f"(k,) or (k, height, width)")
        k = _size(context[0], "context_shape[0]", name, MAX_CHANNELS)
        sides = [_size(v, f"context_shape[{i + 1}]", name, MAX_SIDE) for i, v in enumerate(context[1:])]
        extra = k * (sides[0] * sides[1] if sides else 1)  # an image context may reach a scale as depth
    shape = kwargs.get("shape")
    if not isinstance(shape, (list, tuple)) or len(shape) != 3:
        raise FlowInputError(f"load_pretrained: {name} asks for shape={shape!r}, expected (channels, height, "
                             f"width)")
    c = _size(shape[0], "shape[0] (channels)", name, MAX_CHANNELS)
    h, w = (_size(s, f"shape[{i}]", name, MAX_SIDE) for i, s in ((1, shape[1]), (2, shape[2])))
    if c * h * w > MAX_EVENT_SIZE:
        raise FlowInputError(f"load_pretrained: {name} asks for shape={list(shape)} ({c * h * w:,} values "
                             f"per image), at most {MAX_EVENT_SIZE:,}: a damaged or foreign file")
    hidden, blocks = sizes.get("hidden", 64), sizes.get("blocks", 2)
    if builder == "tarflow_image":
        p, width = sizes.get("patch", 2), sizes.get("width", 64)
        tokens, features = max(1, h * w // (p * p)), c * p * p
        per_block = sizes.get("layers", 2) * 13 * width ** 2 + (tokens + 3 * features) * width
        estimate = c * h * w + sizes.get("blocks", 4) * per_block
        if estimate > MAX_PARAMETERS:
            raise FlowInputError(f"load_pretrained: {name} asks {builder} for a model of about "
                                 f"{estimate:.2e} parameters, at most {MAX_PARAMETERS:,} "
                                 f"(flowlib.pretrained.MAX_PARAMETERS): a damaged or foreign file")
        return
    if builder == "nice_image":
        stages = [(c, sizes.get("couplings", 4))]
    else:
        stages = [(4 * c * 2**scale, sizes.get("depth", 4)) for scale in range(sizes.get("scales", 2))]
    estimate = c * h * w
    for channels, depth in stages:
        convolutions = (9 * hidden * (3 * channels + extra + 2 * blocks * hidden + 2)
                        + channels * (channels + 2))
        per_step = convolutions + c * h * w  # and one mask of the image's size
        estimate += depth * per_step
    if estimate > MAX_PARAMETERS:
        raise FlowInputError(f"load_pretrained: {name} asks {builder} for a model of about {estimate:.2e} "
                             f"parameters and buffers, at most {MAX_PARAMETERS:,} "
                             f"(flowlib.pretrained.MAX_PARAMETERS): a damaged or foreign file")


def record_in_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """Add (or replace) ``path``'s entry in the ``MANIFEST.json`` of its folder; return the entry.

    For the scripts that write shipped files (``scripts/train_image_flow.py`` after training,
    ``scripts/convert_checkpoints.py checksum``): the file is read and checked as
    :func:`load_pretrained` would read a file of one's own, so a broken file is never recorded.
    The manifest is written atomically.
    """
    from flowlib._integrity import CHECKSUM_KEY, state_checksum
    from flowlib._io import atomic_write

    path = Path(path)
    blob = _read(path, manifest=False)
    entry = {"file": path.name, "file_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
             "tensor_sha256": blob.get(CHECKSUM_KEY) or state_checksum(blob), "builder": blob["builder"],
             "kwargs": blob["kwargs"], "metrics": blob.get("metrics")}
    where = path.parent / MANIFEST
    manifest = json.loads(where.read_text(encoding="utf-8")) if where.is_file() else {}
    manifest = {"format": MANIFEST_FORMAT,
                "about": "The shipped checkpoints: flowlib.pretrained.load_pretrained refuses a file "
                         "whose bytes differ from its file_sha256. Written by scripts/convert_checkpoints.py "
                         "checksum and scripts/train_image_flow.py.",
                "checkpoints": {**manifest.get("checkpoints", {}), path.stem: entry}}
    manifest["checkpoints"] = dict(sorted(manifest["checkpoints"].items()))
    with atomic_write(where, "w") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    return entry


def checkpoint_info(source: Source) -> dict:
    """Everything stored in a checkpoint except the weights (builder, data, metrics, command...)."""
    return {k: v for k, v in _read(source).items() if k != "state_dict"}


def load_pretrained(source: Source, map_location: str | torch.device = "cpu") -> ImageFlowModel | FlowModel:
    """Rebuild a checkpoint's model, in evaluation mode, on ``map_location``.

    ``source`` is a shipped name (``"glow_mnist"``, see :func:`shipped_checkpoints`) or the
    path of a file written by ``scripts/train_image_flow.py``. Every failure to read, check or
    rebuild it is a :class:`~flowlib.core.FlowInputError` naming the file and what to do.

    >>> model = load_pretrained("nice_mnist")
    >>> model.training, tuple(model.event_shape)
    (False, (1, 28, 28))
    """
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError) as err:
        raise FlowInputError(f"load_pretrained: map_location must be a device such as 'cpu' or 'cuda', "
                             f"got {map_location!r}") from err
    blob = _read(source)
    file = _resolve(source)
    name = str(file) if isinstance(file, Path) else file.name
    _check_sizes(blob["builder"], blob["kwargs"], name)
    try:
        model = builder(blob["builder"])(**blob["kwargs"])
    except (TypeError, ValueError) as err:  # FlowInputError is a ValueError
        raise FlowInputError(f"load_pretrained: the builder keywords of {name} do not fit today's "
                             f"{blob['builder']} ({err}); {_remedy(_shipped_name(file))}") from err
    try:
        model.load_state_dict(blob["state_dict"])
    except (RuntimeError, TypeError, ValueError) as err:
        raise FlowInputError(
            f"load_pretrained: the weights of {name} do not fit today's "
            f"{blob['builder']} (a file from an older flowlib? scripts/convert_checkpoints.py converts "
            f"one): {err}"
        ) from err
    try:
        return model.to(device).eval()
    except (RuntimeError, AssertionError) as err:  # torch's answer to a device that is not there
        raise FlowInputError(f"load_pretrained: cannot move the model to map_location={map_location!r} "
                             f"({type(err).__name__}: {err}); use 'cpu' or an available device") from err
