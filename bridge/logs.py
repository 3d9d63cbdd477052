"""Structured logs: one JSON object per line, with the request id where there is one."""

from __future__ import annotations

import json
import logging
import re
import sys
import uuid
from typing import Any

from flask import Flask, Response, g, has_request_context, request

REQUEST_ID_HEADER = "X-Request-Id"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
# Attributes of every LogRecord; anything else given through `extra=` is ours to print.
_STANDARD_ATTRS = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if has_request_context() and "request_id" not in record.__dict__:
            entry["request_id"] = getattr(g, "request_id", None)
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_") and value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


JsonFormatter.converter = __import__("time").gmtime


def configure_logging(level: str = "INFO") -> None:
    """Route every log line through one JSON handler on stderr (idempotent)."""
    root = logging.getLogger()
    for handler in root.handlers:
        if getattr(handler, "_refund_bridge", False):
            break
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(JsonFormatter())
        handler._refund_bridge = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)


def _assign_request_id() -> None:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = given if _VALID_REQUEST_ID.match(given) else uuid.uuid4().hex


def _echo_request_id(response: Response) -> Response:
    request_id = getattr(g, "request_id", None)
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def init_app(app: Flask) -> None:
    if not app.testing:
        configure_logging(app.config["BRIDGE_SETTINGS"].log_level)
    app.before_request(_assign_request_id)
    app.after_request(_echo_request_id)
