"""sealedkb._fs: atomic private writes, folder fsync, file locks, pid checks."""

from __future__ import annotations

import multiprocessing
import multiprocessing.process
import multiprocessing.synchronize
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sealedkb._fs import (
    LockBusy,
    file_lock,
    fsync_dir,
    pid_alive,
    try_file_lock,
    write_atomic,
    write_private,
)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_private_creates_a_0600_file(tmp_path: Path) -> None:
    target = tmp_path / "secret.json"
    old = os.umask(0)
    try:
        write_private(target, b"one")
    finally:
        os.umask(old)
    assert target.read_bytes() == b"one"
    assert _mode(target) == 0o600


def test_write_private_replaces_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_bytes(b"old contents")
    target.chmod(0o644)
    write_private(target, b"new")
    assert target.read_bytes() == b"new"
    assert _mode(target) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_write_private_large_body(tmp_path: Path) -> None:
    body = os.urandom(3 * 1024 * 1024)
    write_private(tmp_path / "big", body)
    assert (tmp_path / "big").read_bytes() == body


def test_write_private_failure_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "keep.json"
    target.write_bytes(b"intact")

    def broken_fsync(fd: int) -> None:
        raise OSError(5, "I/O error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError):
        write_private(target, b"half")
    monkeypatch.undo()
    assert target.read_bytes() == b"intact"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


def test_write_private_fsyncs_file_and_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real = os.fsync

    def spy(fd: int) -> None:
        synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", spy)
    write_private(tmp_path / "f", b"x")
    assert len(synced) == 2  # the temporary file, then the folder


def test_fsync_dir(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")


def _hold_lock(path: str, ready: multiprocessing.synchronize.Event, release: float) -> None:
    with file_lock(Path(path)):
        ready.set()
        time.sleep(release)


def _other_process_holds(lock: Path, seconds: float) -> multiprocessing.process.BaseProcess:
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    proc = ctx.Process(target=_hold_lock, args=(str(lock), ready, seconds))
    proc.start()
    assert ready.wait(10), "the other process did not take the lock"
    return proc


def test_file_lock_creates_a_0600_file_and_is_reentrant_across_blocks(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    with file_lock(lock):
        assert _mode(lock) == 0o600
    with file_lock(lock, blocking=False):
        pass
    with try_file_lock(lock) as mine:
        assert mine is True


def test_file_lock_excludes_another_process(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    proc = _other_process_holds(lock, 1.0)
    try:
        with pytest.raises(LockBusy), file_lock(lock, blocking=False):
            pass
        with try_file_lock(lock) as mine:
            assert mine is False
        started = time.monotonic()
        with pytest.raises(LockBusy), file_lock(lock, timeout=0.1):
            pass
        assert time.monotonic() - started >= 0.1
        with file_lock(lock, timeout=30):  # waits until the holder lets go
            pass
    finally:
        proc.join(10)
    assert proc.exitcode == 0


def test_file_lock_blocking_waits(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    proc = _other_process_holds(lock, 0.3)
    try:
        started = time.monotonic()
        with file_lock(lock):
            waited = time.monotonic() - started
    finally:
        proc.join(10)
    assert waited > 0.05


def test_file_lock_released_when_the_block_raises(tmp_path: Path) -> None:
    lock = tmp_path / ".lock"
    with pytest.raises(RuntimeError), file_lock(lock):
        raise RuntimeError("boom")
    code = (
        "import sys; from pathlib import Path; from sealedkb._fs import try_file_lock\n"
        f"with try_file_lock(Path({str(lock)!r})) as mine: sys.exit(0 if mine else 3)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_file_lock_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").write_bytes(b"")
    (tmp_path / ".lock").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(OSError), file_lock(tmp_path / ".lock"):
        pass


def test_pid_alive() -> None:
    assert pid_alive(os.getpid())
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not pid_alive(proc.pid)
    assert not pid_alive(0)
    assert not pid_alive(-1)
    assert pid_alive(1)  # init: another user's process still counts (EPERM)


def test_write_atomic_keeps_the_mode_of_the_file_it_replaces(tmp_path: Path) -> None:
    target = tmp_path / "client.json"
    target.write_bytes(b"{}")
    target.chmod(0o640)
    write_atomic(target, b'{"a": 1}')
    assert target.read_bytes() == b'{"a": 1}'
    assert _mode(target) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["client.json"]


def test_write_atomic_new_file_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        write_atomic(tmp_path / "new.toml", b"x = 1\n")
    finally:
        os.umask(old)
    assert _mode(tmp_path / "new.toml") == 0o640


def test_write_private_tightens_a_leftover_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "secret"
    leftover = tmp_path / f".secret.{os.getpid()}.tmp"
    leftover.write_bytes(b"stale")
    leftover.chmod(0o644)
    write_private(target, b"fresh")
    assert _mode(target) == 0o600 and target.read_bytes() == b"fresh"
