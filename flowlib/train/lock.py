"""One run per checkpoint path: an exclusive lock held for the run's lifetime.

Two calls of :func:`~flowlib.train.fit` writing one checkpoint path would each resume the
other's state and overwrite it in turn, leaving a hybrid of two experiments. So ``fit`` holds
a lock file beside the checkpoint (``run.pt.lock`` for ``run.pt``) from its start to its end,
which records the owner (process id, host, start time) for the error the second run gets.

Where the operating system offers ``fcntl.flock`` (Linux, macOS), the lock *is* the kernel's
lock on that file: it ends with the process however it ends (an exception, Ctrl-C, SIGKILL,
a Binder cull), so a lock file left by a dead run is recognised by ``flock`` succeeding on it
and is taken over with a warning. Elsewhere (Windows) the file is created with
``O_CREAT | O_EXCL`` and a file left behind is stale when its owner ran on this host and its
process no longer exists.

Taking the lock is also the check that the checkpoint folder can be written, made at the start
of the run rather than at its first save (``eval_every`` steps of work later).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import warnings
from pathlib import Path
from types import TracebackType
from typing import Any

from flowlib._checks import FlowInputError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["CheckpointInUse", "CheckpointLock", "lock_path"]

_WHO = "fit"
# Lock files this process holds (the O_EXCL fallback tells its own live locks from stale ones).
_HELD: set[str] = set()
_HELD_GUARD = threading.Lock()


class CheckpointInUse(FlowInputError):
    """Another run holds the checkpoint path. ``owner`` is what its lock file records."""

    def __init__(self, message: str, owner: dict[str, Any]) -> None:
        super().__init__(message)
        self.owner = owner


def lock_path(path: Path) -> Path:
    """The lock file of a checkpoint: ``run.pt.lock`` beside ``run.pt``."""
    return path.with_name(path.name + ".lock")


class CheckpointLock:
    """The exclusive lock on a checkpoint path, as a context manager (released on any exit).

    >>> import tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "run.pt"
    >>> with CheckpointLock(path):
    ...     lock_path(path).exists()
    True
    >>> lock_path(path).exists()
    False
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.file = lock_path(self.path)
        self._fd: int | None = None

    def __enter__(self) -> CheckpointLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, err: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise :class:`CheckpointInUse` naming its owner.

        Raises FlowInputError when the folder cannot be created or written.
        """
        self._check_folder()
        for _ in range(20):  # a few rounds only when a lock file vanishes under our feet
            if fcntl is not None:
                done = self._acquire_flock()
            else:  # pragma: no cover - Windows
                done = self._acquire_exclusive()
            if done:
                with _HELD_GUARD:
                    _HELD.add(str(self.file))
                return
        raise CheckpointInUse(f"{_WHO}: could not take the lock {self.file} (other runs keep taking it); "
                              "wait for them, or use another checkpoint path", {})

    def release(self) -> None:
        """Remove the lock file and let go of it (idempotent)."""
        if self._fd is None:
            return
        with _HELD_GUARD:
            _HELD.discard(str(self.file))
        # Unlink while still holding it: a waiting run then finds the inode gone and retries.
        try:
            self.file.unlink()
        except OSError:
            pass
        try:
            os.close(self._fd)
        finally:
            self._fd = None

    # -- the two ways to lock -----------------------------------------------------------------
    def _acquire_flock(self) -> bool:
        fd = self._open(os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # held by a live process
            owner = _read(fd)
            os.close(fd)
            raise self._busy(owner) from None
        except OSError as err:  # a file system without locks (some network mounts): go on, unprotected
            warnings.warn(f"{_WHO}: the file system of {self.file} does not support locks ({_why(err)}); "
                          "nothing stops a second run from writing the same checkpoint", stacklevel=5)
        try:
            same = os.fstat(fd).st_ino == os.stat(self.file).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its owner removed it between our open and our lock: try again
            os.close(fd)
            return False
        previous = _read(fd)
        if previous:
            self._warn_stale(previous)
        self._write(fd)
        return True

    def _acquire_exclusive(self) -> bool:  # pragma: no cover - exercised where fcntl is missing
        try:
            fd = self._open(os.O_RDWR | os.O_CREAT | os.O_EXCL)
        except FileExistsError:
            try:
                fd_old = os.open(self.file, os.O_RDONLY)
            except FileNotFoundError:
                return False
            owner = _read(fd_old)
            os.close(fd_old)
            if not self._stale(owner):
                raise self._busy(owner) from None
            self._warn_stale(owner)
            self.file.unlink(missing_ok=True)
            return False
        self._write(fd)
        return True

    # -- helpers ------------------------------------------------------------------------------
    def _check_folder(self) -> None:
        folder = self.path.parent
        if self.path.is_dir():
            raise FlowInputError(f"{_WHO}: checkpoint={str(self.path)!r} is a folder; give a file path in "
                                 f"it, such as {str(self.path / 'run.pt')!r}")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise FlowInputError(f"{_WHO}: cannot create the checkpoint folder {folder} ({_why(err)}); "
                                 "give a checkpoint path in a folder you can write, or checkpoint=None to "
                                 "train without one") from err

    def _open(self, flags: int) -> int:
        try:
            return os.open(self.file, flags, 0o644)
        except FileExistsError:
            raise
        except OSError as err:
            raise FlowInputError(
                f"{_WHO}: cannot write the checkpoint folder {self.path.parent} (creating {self.file.name} "
                f"failed: {_why(err)}); found at the start, before any training: give a checkpoint path in "
                "a folder you can write, or checkpoint=None to train without one") from err

    def _write(self, fd: int) -> None:
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
                  "checkpoint": str(self.path)}
        try:
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(record).encode())
            os.fsync(fd)
        except OSError as err:
            os.close(fd)
            raise FlowInputError(f"{_WHO}: cannot write the lock file {self.file} ({_why(err)}); give a "
                                 "checkpoint path in a folder you can write, or checkpoint=None") from err
        self._fd = fd

    def _stale(self, owner: dict[str, Any]) -> bool:  # pragma: no cover - the O_EXCL fallback
        """A lock file whose owner ran on this host and has ended (or that records nobody, for a minute)."""
        pid, host = owner.get("pid"), owner.get("host")
        if not isinstance(pid, int):
            try:
                return time.time() - self.file.stat().st_mtime > 60.0
            except OSError:
                return True
        if host != socket.gethostname():
            return False  # no way to see another machine's processes
        if pid == os.getpid():
            with _HELD_GUARD:
                return str(self.file) not in _HELD
        return not _alive(pid)

    def _busy(self, owner: dict[str, Any]) -> CheckpointInUse:
        who = _describe(owner)
        return CheckpointInUse(
            f"{_WHO}: checkpoint {self.path} is in use by another run ({who}, lock file {self.file}); two "
            "runs writing one file would mix two experiments. Wait for that run to finish, stop it, or give "
            "this run another checkpoint path. If no such run exists any more (e.g. it ran on another "
            "machine that crashed), delete the lock file.", owner)

    def _warn_stale(self, owner: dict[str, Any]) -> None:
        warnings.warn(f"{_WHO}: took over the lock {self.file} left by a run that no longer runs "
                      f"({_describe(owner)}); its last checkpoint is resumed as usual", stacklevel=5)


def _read(fd: int) -> dict[str, Any]:
    """The owner a lock file records ({} when empty or unreadable)."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        raw = os.read(fd, 4096)
        owner = json.loads(raw.decode()) if raw.strip() else {}
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _alive(pid: int) -> bool:  # pragma: no cover - the O_EXCL fallback
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or cannot tell: assume alive)
    return True


def _describe(owner: dict[str, Any]) -> str:
    if not owner:
        return "owner not recorded yet"
    started = owner.get("started")
    since = (f", since {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(started))}"
             if isinstance(started, (int, float)) else "")
    mine = owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname()
    this = " (this process)" if mine else ""
    return f"process {owner.get('pid')} on host {owner.get('host')}{this}{since}"


def _why(err: OSError) -> str:
    return f"{type(err).__name__}: {err.strerror or err}"
