"""A client for RideNDine's refunds API (contract section 2), on requests.

One pooled keep-alive session with its own connect and read timeouts and NO retries inside: a
refund submission is retried by the outbox (bridge/refunds/submission.py), durably, with backoff
and always the same `Idempotency-Key`, so a retry loop here would only hide attempts from it.
Redirects are not followed (a POST must not silently turn into a GET elsewhere).

Errors follow the stripe-python style: one base class carrying the HTTP context, and subclasses
that say what the caller should do:
- `RideNDineRejectedError`: a definite "no" (a 4xx other than 408, 409, 429); never retry.
- `RideNDineUnavailableError`: no definite answer (connection error, 408, 409, 429, 5xx, or an
  unexpected answer); retry later with the same key, after `retry_after` seconds when given.
- `RideNDineTimeoutError`: a connect or read timeout (an `RideNDineUnavailableError`); after a
  read timeout RideNDine may have done the refund, which the same key makes safe to retry.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import requests
from requests.adapters import HTTPAdapter

from directus_client import read_environment_once, send_request

log = logging.getLogger(__name__)

CREATE_REFUND_PATH = "/refunds/create"
# Statuses that are not a definite answer although they are 4xx (contract section 2).
RETRYABLE_4XX = frozenset({408, 409, 429})
MAX_MESSAGE_CHARS = 500
# A Retry-After beyond this is capped: the outbox's own schedule takes over after it.
MAX_RETRY_AFTER_SECONDS = 6 * 3600.0


class RideNDineError(Exception):
    """Base of every error from the client, with the HTTP context when there was an answer."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        body: Any = None,
        method: str | None = None,
        url: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.body = body
        self.method = method
        self.url = url
        self.retry_after = retry_after

    def __str__(self) -> str:
        status = f"{self.status} " if self.status is not None else ""
        where = f" ({self.method} {self.url})" if self.method and self.url else ""
        return f"{status}{self.message}{where}"


class RideNDineRejectedError(RideNDineError):
    """RideNDine said no (a 4xx other than 408/409/429): the refund cannot be done as asked."""


class RideNDineUnavailableError(RideNDineError):
    """No definite answer: connection error, 408, 409, 429, 5xx or an unexpected answer."""


class RideNDineTimeoutError(RideNDineUnavailableError):
    """RideNDine did not answer within the connect or read timeout."""


@dataclass(frozen=True)
class RefundAccepted:
    """RideNDine's 2xx answer to a refund submission."""

    status: int
    refund_id: str | None
    body: Any


class RideNDineClient:
    """Talks to RideNDine's API with the bridge's API key."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        connect_timeout: float = 3.05,
        read_timeout: float = 10.0,
        pool_maxsize: int = 8,
        session: requests.Session | None = None,
        user_agent: str = "refund-bridge",
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = (connect_timeout, read_timeout)
        self.session = session or requests.Session()
        # max_retries=0: requests' default too, said explicitly because it matters here.
        adapter = HTTPAdapter(max_retries=0, pool_connections=2, pool_maxsize=pool_maxsize)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = user_agent
        self.session.headers["Accept"] = "application/json"
        read_environment_once(self.session, self.base_url)
        self._api_key = api_key

    def __repr__(self) -> str:  # never show the key
        return f"RideNDineClient({self.base_url!r})"

    def close(self) -> None:
        self.session.close()

    def create_refund(
        self,
        *,
        idempotency_key: str,
        ridendine_order_id: str,
        external_order_id: str,
        amount_cents: int,
        reason: str,
        requested_by: str,
    ) -> RefundAccepted:
        """POST /refunds/create with exactly the partner's fields; raise a RideNDineError
        subclass unless RideNDine answered 2xx."""
        body = {
            "ridendine_order_id": ridendine_order_id,
            "external_order_id": external_order_id,
            "amount_cents": amount_cents,
            "reason": reason,
            "requested_by": requested_by,
        }
        status, answer = self._post(CREATE_REFUND_PATH, body, idempotency_key=idempotency_key)
        refund_id = answer.get("refund_id") if isinstance(answer, dict) else None
        return RefundAccepted(
            status=status,
            refund_id=str(refund_id) if isinstance(refund_id, str | int) and refund_id else None,
            body=answer,
        )

    def _post(self, path: str, body: dict[str, Any], *, idempotency_key: str) -> tuple[int, Any]:
        url = f"{self.base_url}{path}"
        headers = {
            "Authorization": f"Bearer {self._api_key}",
            "Idempotency-Key": idempotency_key,
        }
        try:
            response = send_request(self.session, "POST", url, headers, body, timeout=self.timeout)
        except requests.Timeout as exc:
            raise RideNDineTimeoutError(
                f"RideNDine did not answer in time ({type(exc).__name__})", method="POST", url=url
            ) from exc
        except requests.RequestException as exc:
            raise RideNDineUnavailableError(
                f"RideNDine could not be reached ({type(exc).__name__})", method="POST", url=url
            ) from exc
        return response.status_code, _decode(response, "POST", url)


def _decode(response: requests.Response, method: str, url: str) -> Any:
    """The answer's JSON body when it is 2xx; else the matching RideNDineError."""
    status = response.status_code
    body: Any = None
    if response.content:
        try:
            body = response.json()
        except ValueError:
            body = response.text[:MAX_MESSAGE_CHARS]
    if 200 <= status < 300:
        return body
    message = error_message(body) or f"HTTP {status}"
    context: dict[str, Any] = {"status": status, "body": body, "method": method, "url": url}
    if 400 <= status < 500 and status not in RETRYABLE_4XX:
        raise RideNDineRejectedError(message, **context)
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    raise RideNDineUnavailableError(message, retry_after=retry_after, **context)


def error_message(body: Any) -> str | None:
    """RideNDine's human message from an error body, in the shapes APIs commonly use:
    {"message"}, {"error": "..."}, {"error": {"message"}}, {"detail"}, {"errors": [...]}."""
    found: Any = None
    if isinstance(body, str):
        found = body
    elif isinstance(body, dict):
        error = body.get("error")
        errors = body.get("errors")
        for candidate in (
            body.get("message"),
            error.get("message") if isinstance(error, dict) else error,
            body.get("detail"),
            body.get("title"),
            (errors[0].get("message") if isinstance(errors[0], dict) else errors[0])
            if isinstance(errors, list) and errors
            else None,
        ):
            if isinstance(candidate, str) and candidate.strip():
                found = candidate
                break
    if not isinstance(found, str) or not found.strip():
        return None
    return " ".join(found.split())[:MAX_MESSAGE_CHARS]


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), capped; None when
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    seconds: float
    if value.isdigit():
        seconds = float(value)
    else:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)
