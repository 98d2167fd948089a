"""Image data sets: scikit-learn's 8x8 digits (always offline), MNIST and Fashion-MNIST.

Every loader returns ``(images, labels)``: ``images`` a ``torch.uint8`` tensor of shape
``(N, 1, H, W)`` holding the integer grey levels ``0 .. K - 1``, ``labels`` an int64
tensor of shape ``(N,)``. The images stay discrete on purpose: a density model needs them
dequantized first, x = (k + u) / K with u ~ U[0, 1) (Uria et al., 2013; Theis et al., 2016),
and the number of grey levels K enters the bits-per-dimension figure.

============== ========= ======= ====================================================
name           shape     K       splits
============== ========= ======= ====================================================
digits         (1, 8, 8) 17      train / val / test = 1259 / 179 / 359 (fixed, seeded)
mnist          (1,28,28) 256     train / test = 60000 / 10000 (the original split)
fashion-mnist  (1,28,28) 256     train / test = 60000 / 10000 (the original split)
============== ========= ======= ====================================================

Where MNIST and Fashion-MNIST come from, first match wins:

1. ``$FLOWLIB_DATA/mnist/*.gz`` and ``$FLOWLIB_DATA/fashion-mnist/*.gz``: a local copy of the
   original gzip-compressed IDX files (for machines without internet);
2. the cache, ``root`` if given, else ``$FLOWLIB_CACHE``, else ``~/.cache/flowlib`` (same layout);
3. a download into the cache from public mirrors, tried in turn (only when ``download=True``).

Every file is checked against its MD5 checksum before it is parsed, and the parser checks the
IDX header (magic number, count, 28x28) and the length, so a corrupt or partial file raises
:class:`DatasetCorruptError` and is never turned into garbage images. No copy anywhere raises
:class:`DatasetNotFoundError`, whose message says how to get the files.
"""

from __future__ import annotations

import gzip
import os
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flowlib._checks import FlowInputError, choice
from flowlib.data.files import (
    DatasetAccessError,
    DatasetCorruptError,
    DatasetError,
    DatasetNotFoundError,
    RemoteFile,
    cache_dir,
    fetch,
)

__all__ = [
    "DATASETS",
    "DIGITS_GREY_LEVELS",
    "DIGITS_SPLIT_FRACTIONS",
    "DIGITS_SPLIT_SEED",
    "DatasetAccessError",
    "DatasetCorruptError",
    "DatasetError",
    "DatasetNotFoundError",
    "ImageDataset",
    "MNIST_GREY_LEVELS",
    "cache_dir",
    "digits_split_indices",
    "load_digits",
    "load_fashion_mnist",
    "load_images",
    "load_mnist",
    "pad_to",
]


# -- the 8x8 digits ----------------------------------------------------------------------
#: Grey levels K of scikit-learn's digits: each pixel counts the set bits of a 4x4 block, 0..16.
DIGITS_GREY_LEVELS = 17
#: Seed of the fixed train / validation / test split of the digits.
DIGITS_SPLIT_SEED = 0
#: Share of every class that goes to each split (rounded per class, the rest to train).
DIGITS_SPLIT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


@lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as uint8 (1797, 1, 8, 8) and their int64 labels, read once."""
    # Imported here: scikit-learn takes about a second to import and MNIST users never need it.
    from sklearn.datasets import load_digits as _sk_load_digits

    bunch = _sk_load_digits()
    images = bunch.images.astype(np.uint8).reshape(-1, 1, 8, 8)
    labels = bunch.target.astype(np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


def digits_split_indices(seed: int = DIGITS_SPLIT_SEED) -> dict[str, np.ndarray]:
    """Indices into scikit-learn's digits of the ``"train"``, ``"val"`` and ``"test"`` splits.

    The split is stratified: the examples of each class are ordered by uniform keys drawn
    from ``np.random.default_rng(seed)``, then the first ``round(0.2 n)`` go to test, the next
    ``round(0.1 n)`` to validation and the rest to train. Keys from the PCG64 stream (not
    ``shuffle``, not torch's generator) make the split identical on every machine and every
    torch version. With the default seed the sizes are 1259 / 179 / 359. Each index array is
    sorted, so the split keeps scikit-learn's order.
    """
    _, labels = _digits_arrays()
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for c in range(10):
        members = np.flatnonzero(labels == c)
        members = members[np.argsort(rng.random(members.size), kind="stable")]
        # floor(x + 0.5): round half up, written out so no rounding convention can differ.
        n_test = int(np.floor(DIGITS_SPLIT_FRACTIONS["test"] * members.size + 0.5))
        n_val = int(np.floor(DIGITS_SPLIT_FRACTIONS["val"] * members.size + 0.5))
        parts["test"].append(members[:n_test])
        parts["val"].append(members[n_test : n_test + n_val])
        parts["train"].append(members[n_test + n_val :])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def load_digits(split: str = "train", seed: int = DIGITS_SPLIT_SEED) -> tuple[Tensor, Tensor]:
    """scikit-learn's 8x8 handwritten digits (Alpaydin & Kaynak, 1998), embedded in its wheel.

    Returns ``(images, labels)``: uint8 ``(N, 1, 8, 8)`` with values ``0..16``
    (:data:`DIGITS_GREY_LEVELS` = 17 grey levels) and int64 ``(N,)``. ``split`` is ``"train"``,
    ``"val"``, ``"test"`` (see :func:`digits_split_indices`) or ``"all"`` (all 1797).

    >>> images, labels = load_digits("test")
    >>> images.shape, images.dtype, int(images.max()), labels[:5].tolist()
    (torch.Size([359, 1, 8, 8]), torch.uint8, 16, [4, 3, 0, 8, 0])
    """
    images, labels = _digits_arrays()
    if split == "all":
        index = np.arange(labels.size)
    else:
        splits = digits_split_indices(seed)
        index = splits[choice(split, "split", (*splits, "all"), "load_digits")]
    # Fancy indexing copies, so callers may modify the tensors without touching the cache.
    return torch.from_numpy(images[index]), torch.from_numpy(labels[index])


# -- MNIST and Fashion-MNIST: where the files are ---------------------------------------
#: Grey levels K of MNIST and Fashion-MNIST (8-bit pixels).
MNIST_GREY_LEVELS = 256

_IMAGE_MAGIC = 2051  # IDX: unsigned byte data, 3 dimensions
_LABEL_MAGIC = 2049  # IDX: unsigned byte data, 1 dimension
_SIDE = 28


@dataclass(frozen=True)
class _IdxFile(RemoteFile):
    """One original gzip-compressed IDX file and what it must contain."""

    magic: int = _IMAGE_MAGIC  # _IMAGE_MAGIC or _LABEL_MAGIC
    count: int = 0  # number of images or labels


# Base URLs tried in turn; each serves the four files under their original names. The
# original MNIST host often refuses scripted downloads, so it comes last.
_MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
    ),
}

def _idx_files(folder: str, md5s: dict[str, str]) -> dict[str, tuple[_IdxFile, _IdxFile]]:
    counts = {"train": 60000, "test": 10000}
    prefix = {"train": "train", "test": "t10k"}
    return {
        split: (
            _IdxFile(folder, f"{prefix[split]}-images-idx3-ubyte.gz", md5s[f"{split}-images"],
                     _MIRRORS[folder], _IMAGE_MAGIC, counts[split]),
            _IdxFile(folder, f"{prefix[split]}-labels-idx1-ubyte.gz", md5s[f"{split}-labels"],
                     _MIRRORS[folder], _LABEL_MAGIC, counts[split]),
        )
        for split in ("train", "test")
    }


# The checksums of the canonical distributions (the same as torchvision and Keras check).
_FILES = {
    "mnist": _idx_files("mnist", {
        "train-images": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels": "d53e105ee54ea40749a09fcbcd1e9432",
        "test-images": "9fb629c4189551a2d022fa330f9573f3",
        "test-labels": "ec29112dd5afa0611ce80d1b7f02629c",
    }),
    "fashion-mnist": _idx_files("fashion-mnist", {
        "train-images": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels": "25c81989df183df01b3e8a0aad5dffbe",
        "test-images": "bef4ecab320f06d8554ea6380940ec79",
        "test-labels": "bb300cfdad3c16e7a12a480ee83cd310",
    }),
}

def _how_to_get(folder: str) -> str:
    names = ", ".join(f.name for pair in _FILES[folder].values() for f in pair)
    return (
        f"To use a local copy, put the four original files ({names}) in a folder "
        f"'<dir>/{folder}/' and set the environment variable FLOWLIB_DATA=<dir>; or connect to "
        f"the internet and call again with download=True (mirrors: {', '.join(_MIRRORS[folder])})."
    )


# -- MNIST and Fashion-MNIST: decoding ---------------------------------------------------
def _decode(raw: bytes, spec: _IdxFile, path: Path | str) -> np.ndarray:
    """Gunzip and parse one IDX file; every inconsistency raises DatasetCorruptError.

    IDX (LeCun et al., 1998): a big-endian int32 magic number (2051 images, 2049 labels), one
    big-endian int32 per dimension, then the uint8 values in row-major order.
    """

    def corrupt(what: str) -> DatasetCorruptError:
        return DatasetCorruptError(
            f"{path} ({spec.folder}/{spec.name}) is not a valid IDX file: {what}. Delete it and "
            f"download it again, or set FLOWLIB_DATA to a folder holding an intact copy."
        )

    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise corrupt(f"the gzip stream is damaged or truncated ({error})") from None
    ndim = 3 if spec.magic == _IMAGE_MAGIC else 1
    header_size = 4 * (1 + ndim)
    if len(data) < header_size:
        raise corrupt(f"{len(data)} bytes, shorter than the {header_size}-byte header")
    header = np.frombuffer(data, dtype=">i4", count=1 + ndim)
    magic, dims = int(header[0]), tuple(int(d) for d in header[1:])
    want_dims = (spec.count, _SIDE, _SIDE) if ndim == 3 else (spec.count,)
    if magic != spec.magic:
        raise corrupt(f"magic number {magic}, expected {spec.magic}")
    if dims != want_dims:
        raise corrupt(f"header says shape {dims}, expected {want_dims}")
    size = int(np.prod(want_dims))
    if len(data) != header_size + size:
        raise corrupt(f"{len(data) - header_size} data bytes, expected exactly {size}")
    values = np.frombuffer(data, dtype=np.uint8, offset=header_size).reshape(want_dims)
    if ndim == 1 and values.max() > 9:
        raise corrupt(f"a label {int(values.max())} outside 0..9")
    return values


def _load_idx(folder: str, split: str, root: str | os.PathLike[str] | None, download: bool,
              caller: str) -> tuple[Tensor, Tensor]:
    image_spec, label_spec = _FILES[folder][choice(split, "split", tuple(_FILES[folder]), caller)]
    # Fetch and verify both files before parsing either: nothing is returned half-checked.
    image_raw, image_path = fetch(image_spec, root, download, _how_to_get(folder))
    label_raw, label_path = fetch(label_spec, root, download, _how_to_get(folder))
    images = _decode(image_raw, image_spec, image_path)
    labels = _decode(label_raw, label_spec, label_path)
    # np.frombuffer views read-only bytes; the copies give torch writable memory it owns.
    return (torch.from_numpy(images.reshape(-1, 1, _SIDE, _SIDE).copy()),
            torch.from_numpy(labels.astype(np.int64)))


def load_mnist(split: str = "train", root: str | os.PathLike[str] | None = None,
               download: bool = True) -> tuple[Tensor, Tensor]:
    """MNIST handwritten digits (LeCun et al., 1998) from the original IDX files.

    Returns ``(images, labels)``: uint8 ``(N, 1, 28, 28)`` in ``0..255`` (:data:`MNIST_GREY_LEVELS`)
    and int64 ``(N,)`` in ``0..9``; N = 60000 for ``"train"``, 10000 for ``"test"``. ``root``
    overrides the cache folder; see the module docstring for where the files are looked for.
    Raises :class:`DatasetNotFoundError` when no copy can be found or downloaded, and
    :class:`DatasetCorruptError` when a copy is damaged.

    >>> images, labels = load_mnist("test")    # from $FLOWLIB_DATA, the cache or a mirror
    >>> images.shape, images.dtype, labels[:5].tolist()
    (torch.Size([10000, 1, 28, 28]), torch.uint8, [7, 2, 1, 0, 4])
    """
    return _load_idx("mnist", split, root, download, "load_mnist")


def load_fashion_mnist(split: str = "train", root: str | os.PathLike[str] | None = None,
                       download: bool = True) -> tuple[Tensor, Tensor]:
    """Fashion-MNIST (Xiao, Rasul & Vollgraf, 2017): Zalando's article images, MNIST's format.

    Same shapes, grey levels, splits and errors as :func:`load_mnist`; labels 0..9 are T-shirt/top,
    trouser, pullover, dress, coat, sandal, shirt, sneaker, bag, ankle boot.

    >>> images, labels = load_fashion_mnist("test")
    >>> images.shape, labels[:5].tolist()       # ankle boot, pullover, trouser, trouser, shirt
    (torch.Size([10000, 1, 28, 28]), [9, 2, 1, 1, 6])
    """
    return _load_idx("fashion-mnist", split, root, download, "load_fashion_mnist")


# -- one entry point and padding ---------------------------------------------------------
@dataclass(frozen=True)
class ImageDataset:
    """What a model needs to know about an image data set before loading it."""

    name: str
    shape: tuple[int, int, int]  # (channels, height, width) of one image
    grey_levels: int  # K: pixel values are 0 .. K - 1
    splits: tuple[str, ...]
    load: Callable[..., tuple[Tensor, Tensor]]

    @property
    def levels(self) -> int:
        """Deprecated spelling of :attr:`grey_levels`."""
        warnings.warn("ImageDataset.levels is deprecated, use ImageDataset.grey_levels", DeprecationWarning,
                      stacklevel=2)
        return self.grey_levels


DATASETS: dict[str, ImageDataset] = {
    "digits": ImageDataset("digits", (1, 8, 8), DIGITS_GREY_LEVELS, ("train", "val", "test"), load_digits),
    "mnist": ImageDataset("mnist", (1, 28, 28), MNIST_GREY_LEVELS, ("train", "test"), load_mnist),
    "fashion-mnist": ImageDataset(
        "fashion-mnist", (1, 28, 28), MNIST_GREY_LEVELS, ("train", "test"), load_fashion_mnist
    ),
}


def load_images(name: str, split: str = "train", **kwargs: object) -> tuple[Tensor, Tensor]:
    """Load ``split`` of the data set ``name`` (a key of :data:`DATASETS`); ``kwargs`` go to its loader.

    >>> images, labels = load_images("digits", "val")
    >>> images.shape, DATASETS["digits"].grey_levels
    (torch.Size([179, 1, 8, 8]), 17)
    """
    return DATASETS[choice(name, "name", sorted(DATASETS), "load_images")].load(split, **kwargs)


def pad_to(images: Tensor, size: int | tuple[int, int], value: float = 0) -> Tensor:
    """Pad the last two dimensions with ``value`` to ``size`` (e.g. 28 -> 32 for a multi-scale flow).

    The image stays centred; an odd difference puts the extra row (column) at the bottom
    (right). Padding with 0, the background level, adds pixels a flow learns quickly.

    >>> padded = pad_to(torch.ones(2, 1, 28, 28), 32)
    >>> padded.shape, padded[0, 0, 2:30, 2:30].min().item(), padded.sum().item() == 2 * 28 * 28
    (torch.Size([2, 1, 32, 32]), 1.0, True)
    """
    if not isinstance(images, Tensor) or images.dim() < 2:
        raise FlowInputError(f"pad_to: expected a tensor (..., height, width), got {images!r:.80}")
    height, width = images.shape[-2:]
    new_h, new_w = (size, size) if isinstance(size, int) else tuple(size)
    if new_h < height or new_w < width:
        raise FlowInputError(
            f"pad_to: expected a size at least the image size {height}x{width}, got {new_h}x{new_w}"
        )
    top, left = (new_h - height) // 2, (new_w - width) // 2
    out = images.new_full((*images.shape[:-2], new_h, new_w), value)
    out[..., top : top + height, left : left + width] = images
    return out


#: Old spellings of renamed constants (in flowlib "levels" was ambiguous: grey levels or scales).
_RENAMED = {"DIGITS_LEVELS": "DIGITS_GREY_LEVELS", "MNIST_LEVELS": "MNIST_GREY_LEVELS"}


def __getattr__(name: str) -> object:
    """``DIGITS_LEVELS`` and ``MNIST_LEVELS`` still work, with a DeprecationWarning."""
    if name in _RENAMED:
        warnings.warn(f"flowlib.data.{name} is deprecated, use {_RENAMED[name]}", DeprecationWarning,
                      stacklevel=2)
        return globals()[_RENAMED[name]]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
