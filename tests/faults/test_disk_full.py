"""Disk full during ``snapshot create`` (a file-size limit, RLIMIT_FSIZE, on the
child process: writes past it fail with EFBIG as on a full disk): a clear error
with a stable code, and nothing that ``snapshot list`` shows as valid."""

from __future__ import annotations

import json
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from sealedkb.config import Settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode, new_entry

LIMIT = 64 * 1024  # bytes any one file of the child may reach


def _full_disk() -> None:  # runs in the child before exec
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, LIMIT))


def test_snapshot_create_on_a_full_disk(
    make_settings: Callable[..., Settings], home: Path, cli_env: dict[str, str]
) -> None:
    kb, _ = KnowledgeBase.init(make_settings(), EncryptionMode.ON)
    for chunk in range(2):
        kb.add_many([new_entry(f"full disk {chunk}-{i} " * 30) for i in range(250)])
    kb.close()
    argv = [sys.executable, "-m", "sealedkb", "--home", str(home), "snapshot"]
    done = subprocess.run(
        [*argv, "create", "--json"],
        env=cli_env,
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=_full_disk,
    )
    assert done.returncode not in (0, -signal.SIGXFSZ), done.stderr
    assert "error[SNAPSHOT_STORAGE_ERROR]" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    listed = subprocess.run(
        [*argv, "list", "--json"], env=cli_env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    assert [s for s in json.loads(listed.stdout) if not s["damaged"]] == []
    # and with room again, the next snapshot succeeds
    again = subprocess.run(
        [*argv, "create", "--json"], env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert again.returncode == 0, again.stderr
