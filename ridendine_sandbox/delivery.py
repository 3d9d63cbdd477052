"""Webhook delivery like a real partner's: signed with Standard Webhooks, sent by a small fixed
pool of threads, retried with capped exponential backoff when the answer is not 2xx.

One dispatcher thread keeps a heap of due messages and hands them to the pool; a retry goes
back on the heap instead of sleeping in a worker, so a slow receiver never holds more than the
pool's threads.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests
from standardwebhooks import Webhook

from ridendine_sandbox.config import SandboxConfig

log = logging.getLogger(__name__)

RESPONSE_EXCERPT_CHARS = 2000


def now_iso() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Attempt:
    number: int
    at: str
    status_code: int | None
    error: str | None
    response_body: str
    duration_ms: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "at": self.at,
            "status_code": self.status_code,
            "error": self.error,
            "response_body": self.response_body,
            "duration_ms": self.duration_ms,
        }


@dataclass(eq=False)
class Message:
    """One webhook message. A copy re-sent with the same webhook-id is a Message of its own."""

    delivery_id: int
    webhook_id: str
    url: str | None
    event: dict[str, Any]
    body: str
    kind: str
    due_in_seconds: float
    state: str = "scheduled"  # scheduled, delivering, delivered, failed, cancelled, not_sent
    attempts: list[Attempt] = field(default_factory=list)
    first_attempt_done: threading.Event = field(default_factory=threading.Event)

    def as_dict(self) -> dict[str, Any]:
        return {
            "delivery_id": self.delivery_id,
            "webhook_id": self.webhook_id,
            "kind": self.kind,
            "url": self.url,
            "refund_id": self.event.get("refund_id"),
            "external_order_id": self.event.get("external_order_id"),
            "status": self.event.get("status"),
            "event": self.event,
            "body": self.body,
            "due_in_seconds": self.due_in_seconds,
            "state": self.state,
            "attempts": [attempt.as_dict() for attempt in self.attempts],
        }


def signed_headers(
    config: SandboxConfig, webhook_id: str, body: str, at: datetime | None = None
) -> dict[str, str]:
    """The headers of one attempt: a fresh timestamp and signature each time, the same id."""
    timestamp = at or datetime.now(tz=UTC)
    headers = {"Content-Type": "application/json", "User-Agent": "RideNDine-Sandbox/1"}
    if config.webhook_secret:
        headers["webhook-id"] = webhook_id
        headers["webhook-timestamp"] = str(int(timestamp.timestamp()))
        headers["webhook-signature"] = Webhook(config.webhook_secret).sign(
            webhook_id, timestamp, body
        )
    if config.webhook_bearer_token:
        headers["Authorization"] = f"Bearer {config.webhook_bearer_token}"
    return headers


class Deliverer:
    """Sends messages when due, retries those not answered 2xx, stops cleanly on `close()`."""

    def __init__(self, config: SandboxConfig, lock: threading.RLock) -> None:
        self.config = config
        self._cond = threading.Condition(lock)
        self._heap: list[tuple[float, int, Message]] = []
        self._order = itertools.count()
        self._closed = False
        self._dispatcher: threading.Thread | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self._sessions: list[requests.Session] = []

    def schedule(self, message: Message, delay: float) -> None:
        with self._cond:
            if self._closed:
                message.state = "cancelled"
                message.first_attempt_done.set()
                return
            if self._dispatcher is None:
                self._start()
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), message))
            self._cond.notify()

    def cancel_pending(self) -> None:
        """Drop every message not yet sent (a reset); one in flight finishes its attempt."""
        with self._cond:
            for _, _, message in self._heap:
                message.state = "cancelled"
                message.first_attempt_done.set()
            self._heap.clear()

    def pending(self) -> int:
        with self._cond:
            return len(self._heap)

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            dispatcher, pool = self._dispatcher, self._pool
        self.cancel_pending()
        if dispatcher is not None:
            dispatcher.join(timeout)
        if pool is not None:
            # Attempts in flight end within the delivery timeout.
            pool.shutdown(wait=True, cancel_futures=True)
        with self._cond:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()

    # -- inside ---------------------------------------------------------------------------

    def _start(self) -> None:
        self._pool = ThreadPoolExecutor(
            max_workers=self.config.delivery_workers, thread_name_prefix="sandbox-webhook"
        )
        self._dispatcher = threading.Thread(
            target=self._dispatch, name="sandbox-webhook-dispatcher", daemon=True
        )
        self._dispatcher.start()

    def _dispatch(self) -> None:
        with self._cond:
            while not self._closed:
                if not self._heap:
                    self._cond.wait()
                    continue
                due, _, message = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                message.state = "delivering"
                assert self._pool is not None
                self._pool.submit(self._attempt, message)

    def _session(self) -> requests.Session:
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
            with self._cond:
                self._sessions.append(session)
        return session

    def _attempt(self, message: Message) -> None:
        number = len(message.attempts) + 1
        started = time.monotonic()
        status_code: int | None = None
        error: str | None = None
        excerpt = ""
        if message.url is None:
            error = "no bridge webhook URL is configured"
        else:
            try:
                response = self._session().post(
                    message.url,
                    data=message.body.encode("utf-8"),
                    headers=signed_headers(self.config, message.webhook_id, message.body),
                    timeout=(3.05, self.config.delivery_timeout_seconds),
                    allow_redirects=False,
                )
                status_code = response.status_code
                excerpt = response.text[:RESPONSE_EXCERPT_CHARS]
            except requests.RequestException as exc:
                error = type(exc).__name__
        attempt = Attempt(
            number=number,
            at=now_iso(),
            status_code=status_code,
            error=error,
            response_body=excerpt,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
        delivered = status_code is not None and 200 <= status_code < 300
        retry_in: float | None = None
        with self._cond:
            message.attempts.append(attempt)
            if delivered:
                message.state = "delivered"
            elif message.url is None:
                message.state = "not_sent"
            elif message.state == "cancelled" or number >= self.config.max_attempts:
                message.state = "cancelled" if message.state == "cancelled" else "failed"
            else:
                retry_in = min(
                    self.config.retry_max_seconds,
                    self.config.retry_base_seconds * 2 ** (number - 1),
                )
                message.state = "scheduled"
        log.info(
            "webhook %s (%s %s) attempt %d: %s",
            message.webhook_id,
            message.event.get("refund_id"),
            message.event.get("status"),
            number,
            status_code if status_code is not None else error,
        )
        message.first_attempt_done.set()
        if retry_in is not None:
            self.schedule(message, retry_in)
