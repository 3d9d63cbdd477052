"""An SMTP sink (aiosmtpd) on 127.0.0.1 that keeps every message for tests to read.

With `maildir`, each message is also written there as an .eml file (what `make dev` shows),
named `<sink start time>-<n>.eml` so that a later run never overwrites an earlier run's mail.

A recipient whose address starts with `refused-` is refused (550), as a mail server refuses an
unknown mailbox: tests use it to see what a failed e-mail does.
"""

from __future__ import annotations

import email
import email.policy
import threading
import time
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller

from devstack.net import free_port, wait_until


@dataclass(frozen=True)
class ReceivedMail:
    mail_from: str
    rcpt_to: tuple[str, ...]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message.get("Subject", ""))

    @property
    def to(self) -> str:
        return str(self.message.get("To", ""))

    def text(self) -> str:
        """The body, HTML and plain parts joined."""
        parts = []
        for part in self.message.walk():
            if part.get_content_maintype() == "text":
                parts.append(str(part.get_content()))
        return "\n".join(parts)


REFUSED_PREFIX = "refused-"


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, rcpt_options: list[str]
    ) -> str:
        if address.lower().startswith(REFUSED_PREFIX):
            return "550 5.1.1 No such mailbox here"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        raw = envelope.original_content or envelope.content
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        mail = ReceivedMail(envelope.mail_from, tuple(envelope.rcpt_tos), message)
        self.sink._add(mail, raw)
        return "250 Message accepted for delivery"


class SmtpSink:
    def __init__(self, port: int = 0, maildir: Path | None = None) -> None:
        self.port = port or free_port()
        self.maildir = maildir
        self._messages: list[ReceivedMail] = []
        self._lock = threading.Lock()
        self._run_name = time.strftime("%Y%m%d-%H%M%S")
        self._controller = Controller(_Handler(self), hostname="127.0.0.1", port=self.port)

    def start(self) -> None:
        if self.maildir:
            self.maildir.mkdir(parents=True, exist_ok=True)
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def _add(self, mail: ReceivedMail, raw: bytes) -> None:
        with self._lock:
            self._messages.append(mail)
            count = len(self._messages)
        if self.maildir:
            # Written aside, then renamed: a reader never sees half a message.
            path = self.maildir / f"{self._run_name}-{count:05d}.eml"
            partial = path.with_suffix(".part")
            partial.write_bytes(raw)
            partial.replace(path)

    @property
    def messages(self) -> list[ReceivedMail]:
        with self._lock:
            return list(self._messages)

    def to(self, address: str) -> list[ReceivedMail]:
        """Messages whose envelope recipients include `address`."""
        return [m for m in self.messages if address.lower() in (r.lower() for r in m.rcpt_to)]

    def matching(self, needle: str) -> list[ReceivedMail]:
        """Messages whose subject or body mentions `needle`."""
        return [m for m in self.messages if needle in m.subject or needle in m.text()]

    def wait_for(self, needle: str, count: int, timeout: float = 20.0) -> list[ReceivedMail]:
        """Wait until at least `count` messages mention `needle`; return them."""
        wait_until(
            lambda: len(self.matching(needle)) >= count,
            timeout=timeout,
            interval=0.1,
            what=f"{count} e-mail(s) mentioning {needle!r}",
        )
        return self.matching(needle)
