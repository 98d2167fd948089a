"""Where a data file comes from: a local copy, the cache, or a checked download.

A :class:`RemoteFile` is one original file, its MD5 checksum and the mirrors that serve it.
:func:`fetch` returns its verified bytes, looking in turn at

1. ``$FLOWLIB_DATA/<folder>/<name>``: a local copy (for machines without internet);
2. the cache, ``root`` if given, else ``$FLOWLIB_CACHE``, else ``~/.cache/flowlib`` (same layout);
3. a download into the cache, each mirror in turn (only when ``download=True``).

Every copy is checked against the MD5 before it is used. A download is written through
:func:`flowlib._io.atomic_write` and its checksum checked before the rename, so neither an
interrupted download nor a bad mirror ever leaves a file under the final name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from flowlib._io import atomic_write

__all__ = ["DatasetError", "DatasetNotFoundError", "DatasetCorruptError", "RemoteFile", "cache_dir", "fetch"]


class DatasetError(RuntimeError):
    """A data set could not be provided; the message says which file and what to do."""


class DatasetNotFoundError(DatasetError):
    """No local copy of a data set and no download possible (offline, or ``download=False``).

    Notebooks catch this (or :class:`DatasetError`) and fall back to the embedded digits.
    """


class DatasetCorruptError(DatasetError):
    """A data file exists but is damaged: wrong checksum, truncated gzip, wrong IDX header."""


@dataclass(frozen=True)
class RemoteFile:
    """One original data file: ``<folder>/<name>``, its MD5 as distributed, its mirrors (base URLs)."""

    folder: str  # the data set's folder, e.g. "mnist"
    name: str  # e.g. "t10k-images-idx3-ubyte.gz"
    md5: str
    mirrors: tuple[str, ...]


_DOWNLOAD_TIMEOUT_S = 60.0
_CHUNK = 1 << 20


def cache_dir(root: str | os.PathLike[str] | None = None) -> Path:
    """The download cache: ``root`` if given, else ``$FLOWLIB_CACHE``, else ``~/.cache/flowlib``.

    >>> str(cache_dir("/tmp/flowlib-cache"))
    '/tmp/flowlib-cache'
    """
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("FLOWLIB_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "flowlib"


def _read_verified(path: Path, spec: RemoteFile, advice: str) -> bytes:
    """The bytes of ``path`` if their MD5 is the expected one, else DatasetCorruptError."""
    raw = path.read_bytes()
    got = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if got != spec.md5:
        raise DatasetCorruptError(
            f"{path} is corrupt or incomplete: its MD5 is {got} ({len(raw)} bytes) but the original "
            f"{spec.folder}/{spec.name} has MD5 {spec.md5}. {advice}"
        )
    return raw


def _urlopen(url: str, timeout: float) -> IO[bytes]:
    """Open ``url`` for reading (a seam: the tests replace it to serve bytes without a network)."""
    # Some hosts refuse Python's default User-Agent.
    request = urllib.request.Request(url, headers={"User-Agent": "flowlib (python urllib)"})
    return urllib.request.urlopen(request, timeout=timeout)


class _ChecksumMismatch(Exception):
    """Raised inside ``atomic_write`` to discard a download whose MD5 is wrong."""


def _download(spec: RemoteFile, target: Path, how_to_get: str) -> None:
    """Fetch ``spec`` into ``target`` from the first mirror that serves the right bytes.

    Each attempt streams into :func:`~flowlib._io.atomic_write`; a wrong checksum raises inside
    the ``with`` block, which discards the temporary file, so only verified bytes are ever
    renamed to ``target``. Two processes downloading at once each write their own temporary file.
    """
    failures = []
    for base in spec.mirrors:
        url = base + spec.name
        try:
            print(f"flowlib: downloading {url}", file=sys.stderr)
            digest = hashlib.md5(usedforsecurity=False)
            with atomic_write(target, "wb", suffix=".part") as out, \
                    _urlopen(url, _DOWNLOAD_TIMEOUT_S) as response:
                while chunk := response.read(_CHUNK):
                    digest.update(chunk)
                    out.write(chunk)
                if digest.hexdigest() != spec.md5:
                    raise _ChecksumMismatch(f"{url}: MD5 {digest.hexdigest()}, expected {spec.md5}")
            return
        except _ChecksumMismatch as error:
            failures.append(str(error))
        except (OSError, http.client.HTTPException, ValueError) as error:
            # URLError, HTTPError, timeouts and refused connections are all OSErrors.
            failures.append(f"{url}: {error}")
    raise DatasetNotFoundError(
        f"could not download {spec.folder}/{spec.name} into {target.parent}; every mirror failed:\n  "
        + "\n  ".join(failures) + "\n" + how_to_get
    )


def fetch(spec: RemoteFile, root: str | os.PathLike[str] | None, download: bool,
          how_to_get: str) -> tuple[bytes, Path]:
    """The verified bytes of ``spec`` and where they came from (see the module docstring).

    ``how_to_get`` ends the message of :class:`DatasetNotFoundError`: how to provide the files.
    """
    searched = []
    data_env = os.environ.get("FLOWLIB_DATA")
    if data_env:
        local = Path(data_env).expanduser() / spec.folder / spec.name
        searched.append(f"{local} (from FLOWLIB_DATA)")
        if local.is_file():
            # A shared local copy is not ours to delete: say to replace it instead.
            advice = (
                f"Replace it with an intact copy of the original file, or unset FLOWLIB_DATA "
                f"to use the cache {cache_dir(root)} (downloaded when download=True)."
            )
            return _read_verified(local, spec, advice), local
    cached = cache_dir(root) / spec.folder / spec.name
    searched.append(f"{cached} (the cache)")
    if cached.is_file():
        advice = (
            "Delete it and call again with download=True to fetch it again, or set FLOWLIB_DATA "
            f"to a folder holding an intact copy in '{spec.folder}/'."
        )
        return _read_verified(cached, spec, advice), cached
    if not download:
        raise DatasetNotFoundError(
            f"{spec.folder}/{spec.name} not found (download=False); looked in: "
            + "; ".join(searched) + ". " + how_to_get
        )
    _download(spec, cached, how_to_get)
    return cached.read_bytes(), cached
