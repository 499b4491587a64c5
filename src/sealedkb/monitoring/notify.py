"""Alarm notifications: the log (always), a webhook and a command hook.

Why these three: the log is there even when nothing else is configured; a
webhook (JSON POST) reaches chat, paging and Alertmanager-style receivers; a
command hook covers everything else (mail, a ticket tool) without sealedkb
knowing about it. Delivery failures are logged and never raised: a dead
receiver must not stop the alarm evaluator.

A notification carries the alarm's name, states, a reason written by sealedkb
(counts, thresholds, ages), the time and the runbook link — never plaintext,
key material, SQL, entry ids or queries. The webhook URL is treated as a secret
(it may hold a token) and is never logged.

With ``SEALEDKB_ALARM_WEBHOOK_SECRET`` set, the body is signed:
``X-Sealedkb-Signature: sha256=<hex HMAC-SHA256(secret, body)>``; receivers
should compare in constant time.
"""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from sealedkb import __version__
from sealedkb.config import Settings
from sealedkb.crypto.digest import hmac_sha256
from sealedkb.errors import ConfigError

log = logging.getLogger("sealedkb.alarms")

SIGNATURE_HEADER = "X-Sealedkb-Signature"
COMMAND_TIMEOUT = 30.0
BACKOFF_BASE = 0.5  # seconds before the first retry; doubles each time


def signature(secret: bytes, body: bytes) -> str:
    """The signature header value of ``body``."""
    return "sha256=" + hmac_sha256(secret, body).hex()


@dataclass(frozen=True)
class Notification:
    alarm: str
    state: str
    previous_state: str
    reason: str
    time: str
    runbook_url: str
    test: bool = False
    value: float | None = None
    threshold: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "alarm": self.alarm,
            "state": self.state,
            "previous_state": self.previous_state,
            "reason": self.reason,
            "time": self.time,
            "runbook_url": self.runbook_url,
            "test": self.test,
            "value": self.value,
            "threshold": self.threshold,
            "source": "sealedkb",
        }

    def body(self) -> bytes:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Delivery:
    """What happened to one notification (for ``alarms test`` and the tests)."""

    webhook: bool | None  # None: no webhook configured
    command: bool | None  # None: no command configured


class Notifier:
    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        webhook_secret: bytes | None = None,
        timeout: float = 5.0,
        retries: int = 3,
        command: str | None = None,
        backoff: float = BACKOFF_BASE,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if webhook_url is not None:
            parts = urlsplit(webhook_url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    "alarm webhook URL must be an http:// or https:// URL",
                    field="alarm_webhook_url",
                )
        self.webhook_url = webhook_url
        self.webhook_secret = webhook_secret
        self.timeout = timeout
        self.retries = retries
        self.command = shlex.split(command) if command else None
        self.backoff = backoff
        self._sleep = sleep

    @classmethod
    def from_settings(cls, settings: Settings) -> Notifier:
        return cls(
            webhook_url=(
                settings.alarm_webhook_url.get_secret_value()
                if settings.alarm_webhook_url
                else None
            ),
            webhook_secret=(
                settings.alarm_webhook_secret.get_secret_value().encode()
                if settings.alarm_webhook_secret
                else None
            ),
            timeout=settings.alarm_webhook_timeout,
            retries=settings.alarm_webhook_retries,
            command=settings.alarm_command,
        )

    def send(self, note: Notification) -> Delivery:
        level = logging.WARNING if note.state == "ALARM" else logging.INFO
        if note.previous_state == "ALARM" or note.state == "ALARM":
            level = logging.WARNING
        log.log(
            level,
            "alarm %s: %s -> %s%s: %s (runbook: %s)",
            note.alarm,
            note.previous_state,
            note.state,
            " [test]" if note.test else "",
            note.reason,
            note.runbook_url,
        )
        body = note.body()
        webhook = self._post(body, note.alarm) if self.webhook_url else None
        command = self._run_command(body, note.alarm) if self.command else None
        return Delivery(webhook, command)

    def _post(self, body: bytes, alarm: str) -> bool:
        assert self.webhook_url is not None
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"sealedkb/{__version__}",
        }
        if self.webhook_secret is not None:
            headers[SIGNATURE_HEADER] = signature(self.webhook_secret, body)
        delay = self.backoff
        for attempt in range(1, self.retries + 2):
            req = urllib.request.Request(  # noqa: S310 - scheme checked in __init__
                self.webhook_url, data=body, headers=headers, method="POST"
            )
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:  # noqa: S310
                    if 200 <= resp.status < 300:
                        return True
                    problem = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                problem = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                reason = getattr(exc, "reason", exc)
                problem = type(reason).__name__ if not isinstance(reason, str) else "unreachable"
            log.warning(
                "alarm %s: webhook delivery attempt %d of %d failed: %s",
                alarm,
                attempt,
                self.retries + 1,
                problem,
            )
            if attempt <= self.retries:
                self._sleep(delay)
                delay *= 2
        log.error("alarm %s: webhook not delivered after %d attempts", alarm, self.retries + 1)
        return False

    def _run_command(self, body: bytes, alarm: str) -> bool:
        assert self.command is not None
        try:
            proc = subprocess.run(
                self.command,
                input=body,
                capture_output=True,
                timeout=COMMAND_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("alarm %s: notification command failed: %s", alarm, type(exc).__name__)
            return False
        if proc.returncode != 0:
            log.error("alarm %s: notification command exited with %d", alarm, proc.returncode)
            return False
        return True
