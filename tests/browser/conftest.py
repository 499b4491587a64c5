"""The web console in a real browser: one `sealedkb serve --transport http` and one
headless Chromium (Debian's, driven by Playwright) per test module.

The knowledge base is made once per module (its own database cloned from the
migrated template), with tokens of every role and a token scoped to namespace
team-a, and a few seeded entries; the server's stderr goes to a file the canary
test reads. Chromium is Debian's ``/usr/bin/chromium`` (Playwright cannot download
its own here); without it, or without the playwright package, the tests skip
locally and fail under .ci/run (SEALEDKB_TEST_REQUIRE_BROWSER=1).

Screenshots go to a folder this session creates (``screenshots/`` under a temp
folder), or to ``$SEALEDKB_SCREENSHOT_DIR`` (``docs/screenshots`` to refresh the
committed ones).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import psycopg
import pytest
from tests.mcp_helpers import free_port, server_env

from sealedkb.config import load_settings
from sealedkb.kb.knowledge_base import KnowledgeBase
from sealedkb.model import EncryptionMode
from sealedkb.store.embedded import EmbeddedPostgres

CHROMIUM = Path(os.environ.get("SEALEDKB_TEST_CHROMIUM", "/usr/bin/chromium"))
_REQUIRE = os.environ.get("SEALEDKB_TEST_REQUIRE_BROWSER") == "1"
# As the machine notes say: without the background-networking flags Chromium keeps
# dialling out of a closed network at every start.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
CANARY = "canary-7f3a91c2-plaintext-never-logged"
# Alarms over short periods, so a disabled key shows within seconds.
FAST_ALARMS = json.dumps(
    {
        name: {"period": 3}
        for name in ("KeyDisabled", "KeyAccessFailures", "EncryptionCredentialsInaccessible")
    }
)


def _unavailable(reason: str) -> None:
    message = f"{reason} (scripts/test installs it; .ci/run requires it)"
    if _REQUIRE:
        pytest.fail(message)
    pytest.skip(message)


@dataclass
class Console:
    """The running server and what the tests sign in with."""

    base: str
    home: Path
    database_url: str
    stderr_path: Path
    tokens: dict[str, str]
    entries: dict[str, str]  # label -> entry id
    proc: subprocess.Popen[bytes]
    screenshots: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.base + path

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`sealedkb ...` as the operator would run it, in another process."""
        return subprocess.run(
            [sys.executable, "-m", "sealedkb", *args],
            env=server_env(self.home, self.database_url),
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def _seed(kb: KnowledgeBase) -> dict[str, str]:
    ids: dict[str, str] = {}
    ids["runbook"] = str(
        kb.add(
            "# Restarting the queue\n\nDrain the workers, then restart the broker.\n\n"
            f"Secret detail: {CANARY}.",
            title="Restarting the message queue",
            entry_type="runbook",
            tags=["queue", "ops"],
        ).id
    )
    ids["decision"] = str(
        kb.add(
            "We chose PostgreSQL with pgvector for search over ciphertext.",
            title="Database choice",
            entry_type="decision",
            tags=["postgres"],
        ).id
    )
    for n in range(23):  # more than one page of the list
        kb.add(f"Filler note number {n} about caching layers.", title=f"Filler note {n:02d}")
    ids["hostile"] = str(
        kb.add(
            "<script>window.__xss = 1; alert(1)</script>\n\n"
            "[click me](javascript:window.__xss=2)\n\n"
            '<img src=x onerror="window.__xss=3">\n\n'
            '<a href="javascript:window.__xss=4" onclick="window.__xss=5">raw link</a>\n\n'
            "<svg onload=\"window.__xss=6\"></svg> <iframe src='javascript:alert(1)'></iframe>\n\n"
            "[data](data:text/html,<script>alert(1)</script>) "
            "[vb](vbscript:msgbox) [ok](https://example.org/page)\n\n"
            "**bold** and `code`",
            title="<script>window.__xss=7</script> hostile title",
            tags=["hostile"],
        ).id
    )
    ids["team_b"] = str(
        kb.add(
            "Team B's confidential rollout plan: the blue-lagoon migration.",
            title="Team B blue-lagoon plan",
            namespace="team-b",
            tags=["secret-b"],
        ).id
    )
    ids["team_a"] = str(
        kb.add(
            "Team A's onboarding checklist.",
            title="Team A onboarding",
            namespace="team-a",
        ).id
    )
    return ids


@pytest.fixture(scope="module")
def console(pg_server: EmbeddedPostgres, template_db: str) -> Iterator[Console]:
    """A serve of a seeded knowledge base (its own database and home), stopped when the
    module is done (its fast alarm ticks should not run on through the rest of a run)."""
    name = f"ui_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db} STRATEGY file_copy")
    database_url = pg_server.uri(name)
    folder = Path(tempfile.mkdtemp(prefix="sealedkb-ui-"))
    home = folder / "home"
    settings = load_settings(home, database_url=database_url, embedder="hash")
    kb, _ = KnowledgeBase.init(settings, EncryptionMode.ON, search_index="memory")
    try:
        entries = _seed(kb)
        tokens = {
            "admin": kb.create_token("ada", "admin", ["*"])[1],
            "writer": kb.create_token("wes", "writer", ["default", "team-a", "team-b"])[1],
            "reader": kb.create_token("rita", "reader", ["default"])[1],
            "team_a": kb.create_token("alex", "writer", ["team-a"])[1],
        }
    finally:
        kb.close()
    screenshots = Path(os.environ.get("SEALEDKB_SCREENSHOT_DIR") or folder / "screenshots")
    screenshots.mkdir(parents=True, exist_ok=True)
    stderr_path = folder / "serve.stderr"
    port = free_port()
    env = server_env(
        home,
        database_url,
        SEALEDKB_ALARM_INTERVAL="0.5",
        SEALEDKB_DATA_KEY_MAX_AGE="1",
        SEALEDKB_ALARMS=FAST_ALARMS,
        SEALEDKB_LOG_LEVEL="DEBUG",
    )
    with stderr_path.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "sealedkb", "serve", "--transport", "http", "--port", str(port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"serve exited {proc.returncode}: {stderr_path.read_text()}")
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "serve did not start"
            time.sleep(0.1)
        yield Console(base, home, database_url, stderr_path, tokens, entries, proc, screenshots)
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with psycopg.connect(pg_server.uri(), autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Any]:
    """Playwright, once Chromium and the package are known to be there. Module scope,
    not session: while Playwright's sync API runs, the worker's thread counts as
    inside an event loop and ``asyncio.run`` fails in every other test, so it must
    stop before pytest moves on to another module."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("the playwright package is not installed")
    if not CHROMIUM.exists():
        _unavailable(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Any) -> Iterator[Any]:
    """Headless Debian Chromium, for the module."""
    b = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def persistent_page(playwright: Any, tmp_path: Path) -> Iterator[tuple[Any, Path]]:
    """A page of a Chromium whose profile (disk cache included) is a folder the test
    reads afterwards; the test closes ``page.context`` to have the profile flushed."""
    profile = tmp_path / "profile"
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS,
        headless=True,
        viewport={"width": 1280, "height": 800},
    )
    page = context.pages[0] if context.pages else context.new_page()
    page.set_default_timeout(15_000)
    try:
        yield page, profile
    finally:
        with contextlib.suppress(Exception):  # closed by the test already
            context.close()


@pytest.fixture
def new_page(browser: Any) -> Iterator[Callable[..., Any]]:
    """``new_page(width=1280, height=800)``: a page in a fresh browser context (no
    cookies shared with other tests); a JavaScript dialog fails the test."""
    contexts: list[Any] = []
    dialogs: list[str] = []

    def make(width: int = 1280, height: int = 800) -> Any:
        context = browser.new_context(viewport={"width": width, "height": height})
        contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(15_000)
        page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
        return page

    yield make
    for context in contexts:
        context.close()
    assert dialogs == [], f"a script ran and opened a dialog: {dialogs}"


def sign_in(page: Any, console: Console, who: str) -> None:
    page.goto(console.url("/ui/login"))
    page.get_by_label("Bearer token").fill(console.tokens[who])
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/entries")
