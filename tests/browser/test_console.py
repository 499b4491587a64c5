"""The web console (/ui) in real headless Chromium against a real `sealedkb serve`:
sign-in, search, the entry life cycle with a conflicting edit, a reader's view and
forged form posts, namespace scope, hostile content, the health page through a key
outage, headers and cookies, and the canary (no entry text in logs or on disk)."""

from __future__ import annotations

import re
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2 as httpx
import trustme
from tests.browser.conftest import CANARY, Console, sign_in
from tests.mcp_helpers import free_port, server_env

from sealedkb.adapters.ui.app import MAX_UPLOAD_BYTES

Page = Any


def shot(page: Page, console: Console, name: str) -> Path:
    path = console.screenshots / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return path


def csrf_of(page: Page) -> str:
    return str(page.locator("input[name=csrf]").first.get_attribute("value"))


def test_sign_in_search_and_open_a_result(console: Console, new_page: Callable[..., Page]) -> None:
    page = new_page()
    page.goto(console.url("/ui"))
    page.wait_for_url("**/ui/login")
    shot(page, console, "sign-in")
    # A wrong token is refused with a clear message, and no session is made.
    page.get_by_label("Bearer token").fill("skb_not-a-token")
    page.get_by_role("button", name="Sign in").click()
    assert "not valid" in page.locator("#login-error").inner_text()
    sign_in(page, console, "writer")
    assert page.locator("#entry-list li").count() == 20  # one page
    shot(page, console, "entries")
    page.get_by_role("link", name="Next page").click()
    assert "page=2" in page.url
    assert page.locator("#entry-list li").count() > 0
    page.get_by_role("link", name="Search", exact=True).click()
    page.get_by_label("Query").fill("restart the broker")
    page.get_by_label("Mode").select_option("hybrid")
    page.get_by_role("button", name="Search").click()
    hits = page.locator("#hits li")
    assert hits.count() >= 1
    assert "Restarting the message queue" in hits.first.inner_text()
    assert page.locator("#hits .snippet").first.inner_text().strip() != ""
    shot(page, console, "search")
    for mode in ("keyword", "semantic"):
        page.get_by_label("Mode").select_option(mode)
        page.get_by_role("button", name="Search").click()
        assert page.locator("#hits li").count() >= 1
    page.get_by_role("link", name="Restarting the message queue").first.click()
    assert page.locator("#entry-title").inner_text() == "Restarting the message queue"
    assert page.locator("#entry-content h1").inner_text() == "Restarting the queue"
    shot(page, console, "entry")
    # Filters: by type and by tag.
    page.goto(console.url("/ui/entries?type=decision"))
    assert page.locator("#entry-list li").all_inner_texts()[0].startswith("Database choice")
    page.goto(console.url("/ui/entries?tag=queue"))
    assert page.locator("#entry-list li").count() == 1


def test_add_edit_conflict_delete(console: Console, new_page: Callable[..., Page]) -> None:
    page = new_page()
    sign_in(page, console, "writer")
    page.get_by_role("link", name="New entry").click()
    page.get_by_label("Title").fill("Console written entry")
    page.get_by_label("Type").select_option("lesson")
    page.get_by_label("Tags (comma separated)").fill("console, browser")
    page.get_by_label("Content (Markdown)").fill("First **version** of the lesson.")
    shot(page, console, "new-entry")
    page.get_by_role("button", name="Save").click()
    assert page.locator("#entry-title").inner_text() == "Console written entry"
    assert page.locator("#entry-content strong").inner_text() == "version"
    assert page.locator("#entry-version").inner_text() == "1"
    entry_url = page.url
    # Edit: version 1 -> 2.
    page.get_by_role("link", name="Edit").click()
    page.get_by_label("Content (Markdown)").fill("Second version of the lesson.")
    page.get_by_role("button", name="Save").click()
    assert page.locator("#entry-version").inner_text() == "2"
    # Two editors open the same version; the second to save gets a clear conflict.
    other = new_page()
    sign_in(other, console, "writer")
    page.goto(entry_url + "/edit")
    other.goto(entry_url + "/edit")
    other.get_by_label("Content (Markdown)").fill("Their change wins the race.")
    other.get_by_role("button", name="Save").click()
    assert other.locator("#entry-version").inner_text() == "3"
    page.get_by_label("Content (Markdown)").fill("My late change.")
    page.get_by_role("button", name="Save").click()
    conflict = page.locator("#conflict").inner_text()
    assert "CONFLICT" in conflict and "version 2" in conflict and "version 3" in conflict
    assert page.locator("#mine").inner_text() == "My late change."
    assert page.locator("#theirs").inner_text() == "Their change wins the race."
    shot(page, console, "conflict")
    page.goto(entry_url)
    assert "Their change wins the race." in page.locator("#entry-content").inner_text()
    # Delete, after a confirmation page.
    page.get_by_role("link", name="Delete").click()
    assert page.locator("h1").inner_text() == "Delete this entry?"
    page.get_by_role("button", name="Delete").click()
    page.wait_for_url("**/ui/entries")
    page.goto(entry_url)
    assert page.locator("#error-code").inner_text() == "NOT_FOUND"


def test_import_upload(console: Console, new_page: Callable[..., Page], tmp_path: Path) -> None:
    page = new_page()
    sign_in(page, console, "writer")
    doc = tmp_path / "guide.md"
    doc.write_text("# Guide\n\nIntro.\n\n## Deploying\n\nUse the blue button.\n")
    page.get_by_role("link", name="Import").click()
    page.get_by_label("File").set_input_files(str(doc))
    page.get_by_role("button", name="Import").click()
    summary = page.locator("#import-summary").inner_text()
    assert "1 imported" in summary and "chunks" in summary
    shot(page, console, "import")
    page.goto(console.url("/ui/search?q=blue+button&mode=keyword"))
    assert page.locator("#hits li").count() >= 1
    # A file type the importer does not read is refused with a stable code.
    bad = tmp_path / "tool.exe"
    bad.write_bytes(b"MZ")
    page.goto(console.url("/ui/import"))
    page.locator("#file").set_input_files(str(bad))
    page.get_by_role("button", name="Import").click()
    assert page.locator("#error-code").inner_text() == "VALIDATION_ERROR"
    assert not list(Path("/dev/shm").glob("sealedkb-upload-*"))


def test_reader_sees_no_write_controls_and_forged_posts_are_refused(
    console: Console, new_page: Callable[..., Page]
) -> None:
    entry_id = console.entries["decision"]
    page = new_page()
    sign_in(page, console, "reader")
    page.goto(console.url(f"/ui/entries/{entry_id}"))
    assert page.locator("[data-write]").count() == 0
    assert page.get_by_role("link", name="Delete").count() == 0
    page.goto(console.url(f"/ui/entries/{entry_id}/delete"))
    assert page.locator("#error-code").inner_text() == "ACCESS_DENIED"
    page.goto(console.url("/ui/entries"))
    assert page.locator("[data-write]").count() == 0
    page.goto(console.url("/ui/entries/new"))
    assert page.locator("#error-code").inner_text() == "ACCESS_DENIED"
    page.goto(console.url("/ui/health"))
    assert page.locator("#error-code").inner_text() == "ACCESS_DENIED"
    # The reader forges the delete form with its own, valid CSRF token: the role decides.
    page.goto(console.url(f"/ui/entries/{entry_id}"))
    token = csrf_of(page)
    r = page.request.post(console.url(f"/ui/entries/{entry_id}/delete"), form={"csrf": token})
    assert r.status == 403 and "ACCESS_DENIED" in r.text()
    assert r.url.endswith("/ui/result")  # answered by way of a redirect (no form in history)
    # A writer's session, but the form carries no or a wrong CSRF token: refused
    # before anything runs.
    writer = new_page()
    sign_in(writer, console, "writer")
    for form in ({}, {"csrf": "wrong"}, {"csrf": token}):  # the reader's token is not theirs
        r = writer.request.post(
            console.url(f"/ui/entries/{entry_id}/delete"), form=form, max_redirects=0
        )
        assert r.status == 403 and "CSRF_FAILED" in r.text(), form
    r = writer.request.post(
        console.url("/ui/entries/new"),
        form={"content": "forged entry", "namespace": "default"},
        max_redirects=0,
    )
    assert r.status == 403 and "CSRF_FAILED" in r.text()
    # From another origin, even with the right token.
    good = csrf_of(writer)
    r = writer.request.post(
        console.url(f"/ui/entries/{entry_id}/delete"),
        form={"csrf": good},
        headers={"Origin": "http://evil.example"},
        max_redirects=0,
    )
    assert r.status == 403 and "CSRF_FAILED" in r.text()
    # No session at all (a plain client without the cookie).
    r = httpx.post(console.url(f"/ui/entries/{entry_id}/delete"), data={"csrf": good})
    assert r.status_code == 403
    writer.goto(console.url(f"/ui/entries/{entry_id}"))
    assert writer.locator("#entry-title").inner_text() == "Database choice"  # still there
    writer.goto(console.url("/ui/search?q=forged&mode=keyword"))
    assert writer.locator("#no-hits").count() == 1  # nothing was written


def test_scoped_token_never_sees_another_namespace(
    console: Console, new_page: Callable[..., Page]
) -> None:
    b_id = console.entries["team_b"]
    page = new_page()
    sign_in(page, console, "team_a")
    seen: list[str] = []

    def visit(path: str) -> str:
        page.goto(console.url(path))
        html = page.content()
        seen.append(html)
        return html

    listing = visit("/ui/entries")
    assert "Team A onboarding" in listing
    visit("/ui/namespaces")
    assert page.locator("table tbody tr").all_inner_texts()[0].startswith("team-a")
    assert page.locator("table tbody tr").count() == 1
    visit("/ui/entries?namespace=team-b")
    assert page.locator("#error-code").inner_text() == "ACCESS_DENIED"
    visit(f"/ui/entries/{b_id}")
    assert page.locator("#error-code").inner_text() == "NOT_FOUND"
    visit(f"/ui/entries/{b_id}/edit")
    assert page.locator("#error-code").inner_text() == "NOT_FOUND"
    visit("/ui/search?q=confidential&namespace=team-b")
    assert page.locator("#error-code").inner_text() == "ACCESS_DENIED"
    visit("/ui/search?q=confidential+rollout+migration")
    visit("/ui/entries?tag=secret-b")
    visit("/ui/entries/new")
    visit("/ui/import")
    visit("/ui/health")
    # Writes aimed at B's entry with a valid CSRF token: not found, nothing changed.
    page.goto(console.url("/ui/entries"))
    token = csrf_of(page)
    for path, form in (
        (f"/ui/entries/{b_id}/delete", {"csrf": token}),
        (f"/ui/entries/{b_id}/edit", {"csrf": token, "content": "hijacked"}),
        ("/ui/entries/new", {"csrf": token, "content": "planted", "namespace": "team-b"}),
    ):
        r = page.request.post(console.url(path), form=form)
        assert r.status in (403, 404), path
        seen.append(r.text())
    for html in seen:
        assert "blue-lagoon" not in html and "Team B" not in html
        assert 'value="team-b"' not in html  # not even offered as a namespace
    writer = new_page()
    sign_in(writer, console, "writer")
    writer.goto(console.url(f"/ui/entries/{b_id}"))
    assert writer.locator("#entry-title").inner_text() == "Team B blue-lagoon plan"
    assert "hijacked" not in writer.content()


def test_hostile_content_renders_inert(console: Console, new_page: Callable[..., Page]) -> None:
    page = new_page()
    sign_in(page, console, "writer")
    violations: list[str] = []
    page.on(
        "console",
        lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
    )
    page.goto(console.url(f"/ui/entries/{console.entries['hostile']}"))
    page.wait_for_timeout(300)
    assert page.evaluate("typeof window.__xss") == "undefined"
    content = page.locator("#entry-content")
    assert content.locator("script, img, svg, iframe, object, embed").count() == 0
    assert page.locator("script").count() == 0  # no script anywhere in the page
    hrefs = content.locator("a").evaluate_all("els => els.map(e => e.getAttribute('href'))")
    assert hrefs == ["https://example.org/page"]
    handlers = page.evaluate(
        "[...document.querySelectorAll('*')].flatMap(e => [...e.attributes]"
        ".filter(a => a.name.startsWith('on')).map(a => a.name))"
    )
    assert handlers == []
    # The markup is shown as text, the title escaped.
    assert "<script>window.__xss = 1" in content.inner_text()
    assert page.locator("#entry-title").inner_text().startswith("<script>")
    shot(page, console, "hostile-entry")
    # The list and the search answer escape it too.
    page.goto(console.url("/ui/search?q=hostile+title&mode=keyword"))
    page.goto(console.url("/ui/entries?tag=hostile"))
    assert page.evaluate("typeof window.__xss") == "undefined"
    assert page.locator("script").count() == 0
    assert violations == [] or all("script" in v for v in violations)


def test_headers_and_session_cookie(console: Console, new_page: Callable[..., Page]) -> None:
    page = new_page()
    r = page.goto(console.url("/ui/login"))
    headers = r.all_headers()
    assert "no-store" in headers["cache-control"]
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp  # no script at all
    assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    sign_in(page, console, "admin")
    for path in ("/ui/entries", "/ui/search?q=queue", "/ui/namespaces", "/ui/health"):
        h = page.goto(console.url(path)).all_headers()
        assert "no-store" in h["cache-control"] and h["content-security-policy"] == csp, path
    cookies = page.context.cookies()
    assert len(cookies) == 1
    cookie = cookies[0]
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert not cookie["secure"]  # plain HTTP on loopback here; Secure under TLS
    for token in console.tokens.values():
        assert token not in cookie["value"] and token[4:20] not in cookie["value"]
    assert page.evaluate("document.cookie") == ""
    # Signing out ends the session on the server: the old cookie is worth nothing.
    page.get_by_role("button", name="Sign out").click()
    page.wait_for_url("**/ui/login")
    jar = {cookie["name"]: cookie["value"]}
    r2 = httpx.get(console.url("/ui/entries"), cookies=jar, follow_redirects=False)
    assert r2.status_code == 303 and r2.headers["location"] == "/ui/login"


def test_revoked_token_ends_the_session(console: Console, new_page: Callable[..., Page]) -> None:
    made = console.cli("token", "create", "--name", "temp-ui", "--role", "reader")
    assert made.returncode == 0, made.stderr
    console.tokens["temp"] = made.stdout.strip()
    page = new_page()
    sign_in(page, console, "temp")
    assert console.cli("token", "revoke", "temp-ui").returncode == 0
    page.goto(console.url("/ui/entries"))
    page.wait_for_url("**/ui/login")


def test_phone_width(console: Console, new_page: Callable[..., Page]) -> None:
    page = new_page(390, 844)
    sign_in(page, console, "writer")
    page.goto(console.url(f"/ui/entries/{console.entries['runbook']}"))
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 390, width  # nothing wider than the screen
    shot(page, console, "entry-phone")
    # Keyboard: the skip link comes first and leads to the content.
    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Enter")
    assert page.url.endswith("#main")


def _alarm_state(page: Page, name: str) -> str:
    return str(page.locator(f"#alarms tr[data-alarm={name}] td").nth(1).inner_text())


def _wait_alarm(page: Page, console: Console, name: str, state: str, timeout: float = 40) -> None:
    deadline = time.monotonic() + timeout
    while True:
        page.goto(console.url("/ui/health"))
        if _alarm_state(page, name) == state:
            return
        assert time.monotonic() < deadline, f"{name} never became {state}"
        time.sleep(0.5)


def test_health_page_shows_the_key_alarm_and_its_clearing(
    console: Console, new_page: Callable[..., Page]
) -> None:
    page = new_page()
    sign_in(page, console, "admin")
    _wait_alarm(page, console, "KeyDisabled", "OK")
    assert page.locator("#key-state").inner_text() == "Enabled"
    assert page.locator("#checks tbody tr").count() >= 8
    page.get_by_role("button", name="Verify the audit trail").click()
    assert "verified" in page.locator("#verify-result").inner_text()
    made = console.cli("snapshot", "create")
    assert made.returncode == 0, made.stderr
    page.goto(console.url("/ui/health"))
    page.locator("#snapshots button").first.click()
    result = page.locator("#verify-result").inner_text()
    assert "snapshot" in result and "verified" in result, result
    shot(page, console, "health")
    disabled = console.cli("key", "disable")
    assert disabled.returncode == 0, disabled.stderr
    try:
        _wait_alarm(page, console, "KeyDisabled", "ALARM")
        assert page.locator("#key-state").inner_text() == "Disabled"
        assert "inaccessible" in page.locator("#availability").inner_text()
        shot(page, console, "health-alarm")
        # Entries cannot be opened meanwhile: a clear key error, no content.
        page.goto(console.url(f"/ui/entries/{console.entries['runbook']}"))
        assert page.locator("#error-code").inner_text() == "KEY_UNAVAILABLE"
    finally:
        enabled = console.cli("key", "enable")
        assert enabled.returncode == 0, enabled.stderr
    _wait_alarm(page, console, "KeyDisabled", "OK")
    history = page.locator("#alarm-history").inner_text()
    assert re.search(r"KeyDisabled\s+OK → ALARM", history), history
    assert re.search(r"KeyDisabled\s+ALARM → OK", history), history


def test_canary_never_in_logs_or_on_disk(
    console: Console, persistent_page: tuple[Page, Path]
) -> None:
    """After pages have shown, searched and refused entry text (here, and in whichever
    of the tests above ran before on this server), it appears in no server log line
    (the server logs at DEBUG), in no file of the home, and in no file of a real
    browser profile (no-store: its disk cache keeps no page; Post/Redirect/Get: its
    session history keeps no form body)."""
    page, profile = persistent_page
    wrong = "skb_wrong-token-that-must-not-be-kept"
    page.goto(console.url("/ui/login"))
    page.get_by_label("Bearer token").fill(wrong)
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url("**/ui/login?failed=1")
    sign_in(page, console, "writer")
    page.goto(console.url(f"/ui/entries/{console.entries['runbook']}"))
    assert CANARY in page.locator("#entry-content").inner_text()
    page.goto(console.url("/ui/search?q=restart+broker&mode=keyword"))
    page.get_by_role("link", name="Restarting the message queue").first.click()
    assert CANARY in page.locator("#entry-content").inner_text()
    page.go_back()
    page.go_forward()
    page.goto(console.url("/ui/entries/new"))
    page.get_by_label("Content (Markdown)").fill(f"Posted {CANARY} through the form.")
    page.get_by_label("Tags (comma separated)").fill("Not a valid tag!!" * 20)
    page.get_by_role("button", name="Save").click()  # refused: the tag is invalid
    assert page.locator("#error-code").inner_text() == "VALIDATION_ERROR"
    time.sleep(1)  # let the server flush its log
    stderr = console.stderr()
    assert CANARY not in stderr
    assert "Team B" not in stderr and "blue-lagoon" not in stderr
    for token in console.tokens.values():
        assert token not in stderr
    needle = CANARY.encode()
    for path in console.home.rglob("*"):
        if path.is_file():
            assert needle not in path.read_bytes(), path
    page.context.close()  # the profile is flushed to disk
    files = [p for p in profile.rglob("*") if p.is_file()]
    assert any("Cache" in str(p) for p in files) or files  # Chromium did write a profile
    secrets = [needle, wrong.encode(), console.tokens["writer"].encode()]
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            assert secret not in data, path
        assert needle.decode().encode("utf-16-le") not in data, path


def test_every_control_has_a_label(console: Console, new_page: Callable[..., Page]) -> None:
    page = new_page()
    page.goto(console.url("/ui/login"))
    pages = ["/ui/entries", "/ui/search?q=queue", "/ui/entries/new", "/ui/import", "/ui/health"]
    unlabelled = page.evaluate(_UNLABELLED)
    sign_in(page, console, "admin")
    for path in [*pages, f"/ui/entries/{console.entries['runbook']}/edit"]:
        page.goto(console.url(path))
        unlabelled += [f"{path}: {name}" for name in page.evaluate(_UNLABELLED)]
        assert page.locator("main#main").count() == 1 and page.locator("h1").count() == 1
    assert unlabelled == []


_UNLABELLED = """
[...document.querySelectorAll('input:not([type=hidden]), select, textarea, button')]
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')
                && !(el.tagName === 'BUTTON' && el.textContent.trim()))
  .map(el => el.name || el.id || el.tagName)
"""


def test_bad_input_gets_a_stable_code_and_writes_nothing(
    console: Console, new_page: Callable[..., Page], tmp_path: Path
) -> None:
    page = new_page()
    sign_in(page, console, "writer")
    for path in (
        "/ui/entries?page=abc",
        "/ui/entries?page=0",
        "/ui/entries?type=bogus",
        "/ui/entries/not-a-uuid",
        "/ui/search?q=x&mode=bogus",
        "/ui/search?q=x&offset=-1",
    ):
        r = page.goto(console.url(path))
        assert r.status == 400, path
        assert page.locator("#error-code").inner_text() == "VALIDATION_ERROR", path
    page.goto(console.url("/ui/namespaces"))
    before = page.locator("tbody").inner_text()
    # An upload just over the bound (under the form bound) and one far over it.
    for size in (MAX_UPLOAD_BYTES + 10, 3 * 1024 * 1024):
        big = tmp_path / f"big-{size}.md"
        big.write_text("# Big\n\n" + "word " * (size // 5))
        page.goto(console.url("/ui/import"))
        page.locator("#file").set_input_files(str(big))
        page.get_by_role("button", name="Import").click()
        assert page.locator("#error-code").inner_text() == "VALIDATION_ERROR", size
        assert "bytes" in page.locator(".error").inner_text()
    # An entry whose tags are invalid is refused whole.
    page.goto(console.url("/ui/entries/new"))
    page.get_by_label("Content (Markdown)").fill("half-written entry must not exist")
    page.get_by_label("Tags (comma separated)").fill("x" * 500)
    page.get_by_role("button", name="Save").click()
    assert page.locator("#error-code").inner_text() == "VALIDATION_ERROR"
    page.goto(console.url("/ui/namespaces"))
    assert page.locator("tbody").inner_text() == before  # the counts did not move


def test_over_tls_the_cookie_is_secure_and_hsts_is_sent(
    console: Console, browser: Any, tmp_path: Path
) -> None:
    """A second serve of the same knowledge base, over HTTPS with a test CA's cert."""
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1")
    cert, key, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    leaf.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    ca.cert_pem.write_to_path(str(ca_file))
    port = free_port()
    env = server_env(console.home, console.database_url, SEALEDKB_ALARMS_ENABLED="false")
    args = ["serve", "--transport", "http", "--port", str(port)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sealedkb", *args, "--tls-cert", str(cert), "--tls-key", str(key)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"https://127.0.0.1:{port}"
    trusted = ssl.create_default_context(cafile=str(ca_file))
    context = None
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", verify=trusted, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "TLS serve did not start"
            time.sleep(0.2)
        context = browser.new_context(ignore_https_errors=True)  # the test CA is not Chromium's
        page = context.new_page()
        r = page.goto(base + "/ui/login")
        assert "max-age=" in r.all_headers()["strict-transport-security"]
        page.get_by_label("Bearer token").fill(console.tokens["reader"])
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url("**/ui/entries")
        (cookie,) = context.cookies()
        assert cookie["secure"] and cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    finally:
        if context is not None:
            context.close()
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
