"""Where a data file comes from: a local copy, the cache, or a checked download.

A :class:`RemoteFile` is one original file, its MD5 checksum and the mirrors that serve it.
:func:`fetch` returns its verified bytes, looking in turn at

1. ``$FLOWLIB_DATA/<folder>/<name>``: a local copy (for machines without internet);
2. the cache, ``root`` if given, else ``$FLOWLIB_CACHE``, else ``~/.cache/flowlib`` (same layout);
3. a download into the cache, each mirror in turn (only when ``download=True``).

Every copy is checked against the MD5 before it is used. A folder or file this process may
not read (or a cache it may not write) is a :class:`DatasetAccessError`, a
:class:`DatasetError` that names the path and what to do, never a raw ``PermissionError``: the
lectures catch ``DatasetError`` to fall back to the digits. A download is written through
:func:`flowlib._io.atomic_write` and its checksum checked before the rename, so neither an
interrupted download nor a bad mirror ever leaves a file under the final name.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from flowlib._io import atomic_write

__all__ = ["DatasetError", "DatasetNotFoundError", "DatasetCorruptError", "DatasetAccessError", "RemoteFile",
           "cache_dir", "fetch"]


class DatasetError(RuntimeError):
    """A data set could not be provided; the message says which file and what to do."""


class DatasetNotFoundError(DatasetError):
    """No local copy of a data set and no download possible (offline, or ``download=False``).

    Notebooks catch this (or :class:`DatasetError`) and fall back to the embedded digits.
    """


class DatasetCorruptError(DatasetError):
    """A data file exists but is damaged: wrong checksum, truncated gzip, wrong IDX header."""


class DatasetAccessError(DatasetError):
    """A data folder or file exists but may not be read (or the cache written) by this process."""


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


def _access_error(path: Path, error: OSError, where: str) -> DatasetAccessError:
    """The message for a folder or file that cannot be read: which, why, and what to do."""
    why = error.strerror or type(error).__name__
    return DatasetAccessError(
        f"cannot read {path} ({why}): the file or a folder above it is not readable by this user. "
        f"Make them readable (e.g. chmod -R a+rX on the data folder) or {where}."
    )


def _advice(from_env: bool) -> str:
    if from_env:
        return "unset FLOWLIB_DATA (or point it at a readable copy) to use the cache instead"
    return "set FLOWLIB_CACHE (or pass root=) to a folder of your own"


def _is_file(path: Path, from_env: bool) -> bool:
    """``path.is_file()``, with a folder on the way that may not be searched reported as such."""
    try:
        return path.is_file()
    except OSError as error:  # is_file() returns False only for a missing path, not for EACCES
        raise _access_error(path, error, _advice(from_env)) from None


def _read_bytes(path: Path, from_env: bool) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise _access_error(path, error, _advice(from_env)) from None


def _check_writable(folder: Path, spec: RemoteFile) -> None:
    """Fail before any download when the cache folder cannot take a file (not after every mirror)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise DatasetAccessError(
            f"cannot download {spec.folder}/{spec.name}: the cache folder {folder} is not writable "
            f"({error.strerror or type(error).__name__}). Make it writable, or set FLOWLIB_CACHE (or "
            f"pass root=) to a folder of your own, or set FLOWLIB_DATA to a folder holding the files."
        ) from None


def _read_verified(path: Path, spec: RemoteFile, advice: str, from_env: bool = False) -> bytes:
    """The bytes of ``path`` if their MD5 is the expected one, else DatasetCorruptError."""
    raw = _read_bytes(path, from_env)
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
        if _is_file(local, from_env=True):
            # A shared local copy is not ours to delete: say to replace it instead.
            advice = (
                f"Replace it with an intact copy of the original file, or unset FLOWLIB_DATA "
                f"to use the cache {cache_dir(root)} (downloaded when download=True)."
            )
            return _read_verified(local, spec, advice, from_env=True), local
    cached = cache_dir(root) / spec.folder / spec.name
    searched.append(f"{cached} (the cache)")
    if _is_file(cached, from_env=False):
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
    _check_writable(cached.parent, spec)
    _download(spec, cached, how_to_get)
    return _read_bytes(cached, from_env=False), cached
