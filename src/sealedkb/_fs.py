"""Files written and locked the same way everywhere.

One copy each of:

- :func:`write_atomic` / :func:`write_private` - an atomic write (0600 for the
  private one): a temporary file next to the target, fsynced, renamed over it, then
  the folder fsynced (a crash leaves the old file or the new one, never half of either);
- :func:`fsync_dir` - make a rename or unlink in a folder durable;
- :func:`file_lock` / :func:`try_file_lock` - an exclusive ``flock`` on a lock file
  (blocking, non-blocking or with a deadline), released when the block ends;
- :func:`pid_alive` - whether a process id exists (of any user).

No imports from the rest of sealedkb: every layer may use it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "LockBusy",
    "file_lock",
    "fsync_dir",
    "pid_alive",
    "try_file_lock",
    "write_atomic",
    "write_private",
]


class LockBusy(Exception):
    """The lock is held by another process (non-blocking or deadline passed)."""


def fsync_dir(folder: Path) -> None:
    """fsync a folder, so a rename or unlink in it survives a crash."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, *, mode: int | None = None) -> None:
    """Atomically replace ``path`` with ``data`` (tmp + fsync + rename + folder fsync).

    ``mode``: the file's permission bits; None keeps those of the file being replaced
    (a new file gets 0666 less the umask, as ``open`` would give it).
    """
    if mode is None:
        try:
            keep: int | None = stat.S_IMODE(path.stat().st_mode)
        except FileNotFoundError:
            keep = None
    else:
        keep = mode
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if keep is None else keep)
    try:
        if keep is not None:
            os.fchmod(fd, keep)  # a leftover temporary file keeps its old mode otherwise
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_private(path: Path, data: bytes) -> None:
    """Atomically write ``data`` to ``path`` as a 0600 file (tmp + fsync + rename)."""
    write_atomic(path, data, mode=0o600)


def _open_lock(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)


def _acquire(fd: int, blocking: bool, timeout: float | None, poll: float) -> bool:
    """Take the flock on ``fd``: True once held, False if busy (and not waiting)."""
    if timeout is None and blocking:
        fcntl.flock(fd, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + max(timeout or 0.0, 0.0)
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if timeout is None or time.monotonic() >= deadline:
                return False
            time.sleep(poll)


@contextlib.contextmanager
def file_lock(
    path: Path,
    *,
    blocking: bool = True,
    timeout: float | None = None,
    poll: float = 0.02,
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created 0600) for the block.

    By default wait as long as it takes. ``blocking=False``: raise :class:`LockBusy`
    at once if another process holds it. A ``timeout`` (seconds): retry every
    ``poll`` seconds and raise :class:`LockBusy` when it has passed. OSError from
    opening the lock file propagates. The file is opened with ``O_NOFOLLOW`` (a
    symlink planted in its place is refused) and ``O_CLOEXEC``.
    """
    fd = _open_lock(path)
    try:
        if not _acquire(fd, blocking, timeout, poll):
            raise LockBusy(str(path))
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def try_file_lock(path: Path) -> Iterator[bool]:
    """:func:`file_lock` without waiting: the block sees True if this process holds
    the lock, False if another process does (the block runs either way)."""
    fd = _open_lock(path)
    try:
        if not _acquire(fd, blocking=False, timeout=None, poll=0.0):
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (of any user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
