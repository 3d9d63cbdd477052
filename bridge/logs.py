"""Structured logs: one JSON object per line (docs/observability.md).

Every line carries the request id when there is one (the caller's `X-Request-Id`, when it is a
safe token, else a new one), and the refund and order ids once code names them with `bind()`
(for the rest of the request) or `bound()` (for a block, e.g. one outbox job). The app writes
its own access line per request (method, route, path, status, duration), instead of
gunicorn's. A `RedactingFilter` on the handler removes the configured tokens and secrets, and
anything shaped like a bearer token or a webhook secret, from every line: the last line of
defence, since no code should log them in the first place.
"""

from __future__ import annotations

import json
import logging
import random
import re
import sys
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from flask import Flask, Response, g, has_request_context, request

if TYPE_CHECKING:
    from bridge.config import Settings

REQUEST_ID_HEADER = "X-Request-Id"
ACCESS_LOGGER = "bridge.access"
REDACTED = "[REDACTED]"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Attributes of every LogRecord; anything else given through `extra=` is ours to print.
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}
# Ids that `bind()` and `bound()` add to every line of the request or block.
_context: ContextVar[dict[str, Any] | None] = ContextVar("refund_bridge_log_context", default=None)
# Shapes of secrets that must never be printed, whatever their value.
_SECRET_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?i)\b(bearer)\s+[A-Za-z0-9._~+/=:-]{8,}"), r"\1 " + REDACTED),
    (
        re.compile(r"(?i)\b(authorization[\"']?\s*[:=]\s*[\"']?basic)\s+[A-Za-z0-9+/=]+"),
        r"\1 " + REDACTED,
    ),
    (re.compile(r"whsec_[A-Za-z0-9+/=]+"), "whsec_" + REDACTED),
    (re.compile(r"\b[sr]k_(live|test)_[A-Za-z0-9]+"), REDACTED),
)
# One scan that finds every place where one of the shapes above could start: text without a
# hit (nearly every string logged) skips the four substitutions. Looser than the shapes, never
# stricter, so nothing they would redact is missed.
_SECRET_HINT = re.compile(r"(?i)bearer|authorization|whsec_|[sr]k_(?:live|test)_")
# Shorter configured values are not looked for: they would redact ordinary words.
MIN_SECRET_CHARS = 8

access_log = logging.getLogger(ACCESS_LOGGER)


# -- context: request id, refund id, order id -----------------------------------------------


def bind(**fields: Any) -> None:
    """Add fields (e.g. `refund_id=`, `order_id=`) to every later line of this request or
    block; None values are ignored."""
    current = dict(_context.get() or {})
    current.update({key: value for key, value in fields.items() if value is not None})
    _context.set(current)


@contextmanager
def bound(**fields: Any) -> Iterator[None]:
    """`bind()` for the duration of a block (an outbox job, a command's step)."""
    token = _context.set(dict(_context.get() or {}))
    bind(**fields)
    try:
        yield
    finally:
        _context.reset(token)


def context_fields() -> dict[str, Any]:
    fields = dict(_context.get() or {})
    if has_request_context():
        request_id = getattr(g, "request_id", None)
        if request_id:
            fields.setdefault("request_id", request_id)
    return fields


# -- formatting and redaction ---------------------------------------------------------------


# The encoder `json.dumps(entry, default=str)` would build anew for every line.
_ENCODER = json.JSONEncoder(default=str)


class JsonFormatter(logging.Formatter):
    converter = time.gmtime  # type: ignore[assignment]
    # The last second formatted (its number, its text): lines come many a second, and strftime
    # is a good part of a line's cost (docs/performance.md).
    _second: tuple[int, str] = (-1, "")

    def _timestamp(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        cached = self._second
        if cached[0] != second:
            cached = (second, self.formatTime(record, "%Y-%m-%dT%H:%M:%S"))
            self._second = cached
        return f"{cached[1]}.{int(record.msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self._timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in context_fields().items():
            if key not in record.__dict__:
                entry[key] = value
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and value is not None:
                entry[key] = value
        if record.exc_text:
            entry["exc"] = record.exc_text
        elif record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = record.stack_info
        return _ENCODER.encode(entry)


def secrets_of(settings: Settings) -> tuple[str, ...]:
    """Every token, key and secret in the settings (what the redacting filter looks for)."""
    found: list[str] = [
        settings.directus_token,
        settings.ridendine_api_key,
        *settings.api_tokens,
    ]
    for secret in settings.webhook_secrets:
        found.append(secret)
        found.append(secret.removeprefix("whsec_"))
    for optional in (
        settings.webhook_bearer_token,
        settings.flow_secret,
        settings.stripe_api_key,
        settings.metrics_token,
        settings.flow_service_token,
    ):
        if optional:
            found.append(optional)
    password = _url_password(settings.database_url)
    if password:
        found.append(password)
    return tuple(found)


def _url_password(url: str | None) -> str | None:
    if not url:
        return None
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).password
    except Exception:  # noqa: BLE001 - a URL we cannot parse has no password for us
        return None


class RedactingFilter(logging.Filter):
    """Replaces known secrets and secret-shaped text in a record by `[REDACTED]`."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.set_secrets(secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        # Longest first, so that a secret containing another is removed whole.
        unique = {s for s in secrets if s and len(s) >= MIN_SECRET_CHARS}
        self._secrets = tuple(sorted(unique, key=len, reverse=True))

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        if _SECRET_HINT.search(text) is not None:
            for pattern, replacement in _SECRET_SHAPES:
                text = pattern.sub(replacement, text)
        return text

    def _value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redact(value)
        if isinstance(value, dict):
            return {key: self._value(item) for key, item in value.items()}
        if isinstance(value, list | tuple):
            return [self._value(item) for item in value]
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string still gets logged
            message = str(record.msg)
        record.msg, record.args = self.redact(message), None
        for key, value in list(record.__dict__.items()):
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                record.__dict__[key] = self._value(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self.redact(record.stack_info)
        return True


def make_handler(
    stream: Any = None, secrets: Iterable[str] = (), level: int | str = logging.NOTSET
) -> logging.Handler:
    """A handler writing JSON lines to `stream` (default stderr), with the redacting filter."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RedactingFilter(secrets))
    handler.setLevel(level)
    return handler


def configure_logging(level: str = "INFO", settings: Settings | None = None) -> None:
    """Route every log line through one JSON handler on stderr (idempotent); with `settings`,
    the redacting filter also looks for their tokens and secrets."""
    secrets = secrets_of(settings) if settings is not None else ()
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "_refund_bridge", False):
            for existing in handler.filters:
                if isinstance(existing, RedactingFilter) and secrets:
                    existing.set_secrets(secrets)
            break
    else:
        handler = make_handler(secrets=secrets)
        handler._refund_bridge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def gunicorn_logconfig(level: str = "INFO", secrets: Iterable[str] = ()) -> dict[str, Any]:
    """gunicorn's `logconfig_dict`: its own lines (master, worker boots and exits) as JSON on
    stderr too, so that everything `serve` prints is one JSON object per line. Its access log
    stays off: the app writes its own access lines. `secrets` are redacted from its lines like
    from the app's (at DEBUG, gunicorn prints request lines, which may carry a token)."""
    handler = {
        "class": "logging.StreamHandler",
        "formatter": "json",
        "filters": ["redact"],
        "stream": "ext://sys.stderr",
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"json": {"()": JsonFormatter}},
        "filters": {"redact": {"()": RedactingFilter, "secrets": list(secrets)}},
        "handlers": {"console": handler, "error_console": handler},
        "root": {"level": level.upper(), "handlers": []},
        "loggers": {
            "gunicorn.error": {
                "level": level.upper(),
                "handlers": ["error_console"],
                "propagate": False,
            },
            "gunicorn.access": {"level": "INFO", "handlers": [], "propagate": False},
        },
    }


# -- per request ----------------------------------------------------------------------------


def _assign_request_id() -> None:
    _context.set(None)  # threads are reused between requests: start clean
    g.log_started = time.perf_counter()
    given = request.headers.get(REQUEST_ID_HEADER, "")
    # A correlation id, not a secret: no system call for it (uuid4 reads the OS's randomness).
    g.request_id = given if _VALID_REQUEST_ID.match(given) else f"{random.getrandbits(128):032x}"
    if request.view_args and isinstance(request.view_args.get("refund_id"), str):
        bind(refund_id=request.view_args["refund_id"][:64])


def _finish(response: Response) -> Response:
    request_id = getattr(g, "request_id", None)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    started = getattr(g, "log_started", None)
    if started is not None and access_log.isEnabledFor(logging.INFO):
        rule = request.url_rule
        method, path, status = request.method, request.path, response.status_code
        route = rule.rule if rule is not None else None
        # The record made and handled directly: `access_log.info()` would also walk the stack
        # for the caller's file and line, which the JSON line does not print.
        record = access_log.makeRecord(
            access_log.name,
            logging.INFO,
            "(access)",
            0,
            "%s %s %s",
            (method, route if route is not None else path, status),
            None,
            extra={
                "method": method,
                "route": route,
                "path": path,
                "status": status,
                "duration_ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        access_log.handle(record)
    return response


def init_app(app: Flask) -> None:
    if not app.testing:
        configure_logging(app.config["BRIDGE_SETTINGS"].log_level, app.config["BRIDGE_SETTINGS"])
    app.before_request(_assign_request_id)
    app.after_request(_finish)
