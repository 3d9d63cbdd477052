"""Structured logs: one JSON object per line, request ids, refund and order ids, access lines,
and no secret ever printed."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bridge import create_app
from bridge.config import Settings
from bridge.logs import (
    ACCESS_LOGGER,
    REDACTED,
    RedactingFilter,
    bind,
    bound,
    configure_logging,
    context_fields,
    make_handler,
    secrets_of,
)
from bridge.services import Services
from bridge.store.models import Refund
from devstack.directus import DirectusServer
from devstack.sandbox import SandboxProcess
from directus_client import DirectusClient
from tests.support.helpers import (
    RIDENDINE_KEY,
    SERVICE_TOKEN,
    WEBHOOK_SECRET,
    make_order,
    make_settings,
)
from tests.support.webhook_helpers import WEBHOOK_URL, event_body, sign, sync_result_flow
from tests.support.webhook_helpers import wait_for_jobs_done as drain_all

# The loggers under test: ours and the clients'. Not the root: other threads of the session
# (the SMTP sink's `mail.log`, a server's) log there at any moment.
CAPTURED_LOGGERS = ("bridge", "directus_client", "flows")


class Capture:
    """Every line our loggers write through our JSON handler while the test runs."""

    def __init__(self, settings: Settings) -> None:
        self.stream = io.StringIO()
        self.handler = make_handler(self.stream, secrets_of(settings))

    def lines(self) -> list[str]:
        return [line for line in self.stream.getvalue().splitlines() if line]

    def entries(self, logger: str | None = None) -> list[dict[str, Any]]:
        found = [json.loads(line) for line in self.lines()]
        return [e for e in found if logger is None or e["logger"] == logger]


@pytest.fixture
def capture(settings: Settings) -> Iterator[Capture]:
    with capturing(settings) as found:
        yield found


@contextmanager
def capturing(settings: Settings) -> Iterator[Capture]:
    found = Capture(settings)
    loggers = [logging.getLogger(name) for name in CAPTURED_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.addHandler(found.handler)
        logger.setLevel(logging.INFO)
    try:
        yield found
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.removeHandler(found.handler)
            logger.setLevel(level)


# -- a whole refund, request to notification ------------------------------------------------


@pytest.fixture
def flow_settings(cooco_directus: DirectusServer, ridendine_sandbox: SandboxProcess) -> Settings:
    return make_settings(
        cooco_directus.url, cooco_directus.admin_token, ridendine_api_url=ridendine_sandbox.url
    )


@pytest.fixture
def flow_app(
    flow_settings: Settings, database_url: str, directus_admin: DirectusClient
) -> Iterator[Flask]:
    app = create_app(
        {
            "BRIDGE_SETTINGS": flow_settings,
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    sync_result_flow(directus_admin)
    yield app
    app.extensions["bridge.services"].close()


def test_a_full_flow_logs_json_lines_with_request_ids(
    flow_app: Flask, flow_settings: Settings, directus_admin: DirectusClient
) -> None:
    client = flow_app.test_client()
    services: Services = flow_app.extensions["bridge.services"]
    order = make_order(directus_admin, amount_paid_cents=3100)
    with capturing(flow_settings) as capture:
        answer = client.post(
            "/ridendine/refunds",
            json={"order_id": order["id"], "reason": "customer_cancel", "requested_by": "admin"},
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}", "X-Request-Id": "req-refund-1"},
        )
        assert answer.status_code == 202, answer.get_json()
        assert answer.headers["X-Request-Id"] == "req-refund-1"
        refund_id = answer.get_json()["refund"]["id"]
        with services.store.session() as session:
            refund = session.get(Refund, refund_id)
            assert refund is not None and refund.ridendine_refund_id
            ridendine_refund_id = refund.ridendine_refund_id
        body = event_body(ridendine_refund_id, order["id"], 3100, "REFUNDED")
        hook = client.post(
            WEBHOOK_URL, data=body, headers={**sign(body), "X-Request-Id": "req-webhook-1"}
        )
        assert hook.status_code == 200
        drain_all(services)
        # An unexpected request id (not a safe token) is replaced by a fresh one.
        odd = client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
        fresh_id = odd.headers["X-Request-Id"]
        assert fresh_id != "bad id with spaces" and len(fresh_id) == 32
        assert int(fresh_id, 16) >= 0  # 32 hex digits
        again = client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
        assert again.headers["X-Request-Id"] != fresh_id  # a new one for each request

    lines = capture.lines()
    assert len(lines) >= 5
    entries = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all(
        isinstance(e, dict) and {"ts", "level", "logger", "message"} <= set(e) for e in entries
    )

    access = [e for e in entries if e["logger"] == ACCESS_LOGGER]
    assert [(e["method"], e["route"], e["status"], e["request_id"]) for e in access] == [
        ("POST", "/ridendine/refunds", 202, "req-refund-1"),
        ("POST", "/ridendine/webhooks/refund-status", 200, "req-webhook-1"),
        ("GET", "/healthz", 200, fresh_id),
        ("GET", "/healthz", 200, again.headers["X-Request-Id"]),
    ]
    assert all(isinstance(e["duration_ms"], int | float) for e in access)
    # The refund request's lines name the refund and the order once they are known.
    request_access = access[0]
    assert (request_access["refund_id"], request_access["order_id"]) == (refund_id, order["id"])
    assert access[1]["order_id"] == order["id"]
    assert "refund_id" not in access[2] and "order_id" not in access[2]
    # Every line written during a request carries that request's id.
    in_requests = [e for e in entries if e.get("request_id") in ("req-refund-1", "req-webhook-1")]
    assert len(in_requests) > len(access[:2])
    # The outbox's lines (after the requests) name their refund.
    job_lines = [e for e in entries if "job_kind" in e]
    assert all(e["refund_id"] == refund_id for e in job_lines if e.get("refund_id"))

    everything = "\n".join(lines)
    for secret in (SERVICE_TOKEN, RIDENDINE_KEY, WEBHOOK_SECRET, flow_settings.directus_token):
        assert secret not in everything


# -- request ids and bound fields -----------------------------------------------------------


def test_request_ids_and_bound_fields_stay_in_their_request(
    app: Flask, client: FlaskClient, capture: Capture
) -> None:
    @app.get("/_test/bind/<refund_id>")
    def _bound(refund_id: str) -> dict[str, Any]:
        bind(order_id="ord-7", nothing=None)
        logging.getLogger("bridge.test").info("inside")
        return {"ok": True}

    assert client.get("/_test/bind/rf_1", headers={"X-Request-Id": "abc-1"}).status_code == 200
    assert client.get("/healthz", headers={"X-Request-Id": "abc-2"}).status_code == 200
    inside, first, second = capture.entries()
    assert inside == {
        **inside,
        "message": "inside",
        "request_id": "abc-1",
        "refund_id": "rf_1",
        "order_id": "ord-7",
    }
    assert "nothing" not in inside
    assert (first["request_id"], first["refund_id"], first["path"]) == (
        "abc-1",
        "rf_1",
        "/_test/bind/rf_1",
    )
    assert second["request_id"] == "abc-2"
    assert "refund_id" not in second and "order_id" not in second  # nothing leaks


def test_unmatched_urls_log_the_path_and_no_query(client: FlaskClient, capture: Capture) -> None:
    assert client.get("/nowhere?token=abcdefghijkl").status_code == 404
    (entry,) = capture.entries()
    assert (entry.get("route"), entry["path"], entry["status"]) == (
        None,
        "/nowhere",
        404,
    )
    assert "abcdefghijkl" not in json.dumps(entry)


def test_bound_is_undone_after_its_block() -> None:
    with bound(refund_id="rf_2", order_id="o2"):
        assert context_fields() == {"refund_id": "rf_2", "order_id": "o2"}
        with bound(refund_id="rf_3"):
            assert context_fields() == {"refund_id": "rf_3", "order_id": "o2"}
        assert context_fields()["refund_id"] == "rf_2"
    assert context_fields() == {}


# -- secrets never printed ------------------------------------------------------------------


def test_secrets_are_redacted_from_messages_args_extras_and_tracebacks(
    settings: Settings, capture: Capture
) -> None:
    log = logging.getLogger("bridge.test")
    token = settings.api_tokens[0]
    log.warning("token in message %s", token)
    log.warning("nested", extra={"details": {"headers": {"auth": f"Bearer {token}"}, "n": 3}})
    try:
        raise RuntimeError(f"failed with key {settings.ridendine_api_key}")
    except RuntimeError:
        log.exception("it broke")
    # Not configured anywhere, but shaped like a bearer token and a webhook secret.
    other_secret = "whsec_c29tZS1vdGhlci1zZWNyZXQtdmFsdWU="
    log.warning("shapes: Authorization: Bearer %s and %s", "opaque-value-12345", other_secret)
    log.warning("stripe %s", "sk_live_abcdefghijklmnop")
    # Another part of the session logging meanwhile (as the SMTP sink does) is not captured.
    logging.getLogger("mail.log").warning("Peer: ('127.0.0.1', 40000)")
    text = capture.stream.getvalue()
    for secret in (token, settings.ridendine_api_key, other_secret, "opaque-value-12345"):
        assert secret not in text
    assert "sk_live_abcdefghijklmnop" not in text
    message, nested, broke, shapes, stripe_line = capture.entries("bridge.test")
    assert message["message"] == f"token in message {REDACTED}"
    assert nested["details"] == {"headers": {"auth": f"Bearer {REDACTED}"}, "n": 3}
    assert f"failed with key {REDACTED}" in broke["exc"]
    assert shapes["message"] == f"shapes: Authorization: Bearer {REDACTED} and whsec_{REDACTED}"
    assert stripe_line["message"] == f"stripe {REDACTED}"


def test_ordinary_text_is_left_alone() -> None:
    redact = RedactingFilter(["short", "a-long-enough-secret"]).redact
    assert redact("a short note, bearer of news") == "a short note, bearer of news"
    assert redact("x a-long-enough-secret y") == f"x {REDACTED} y"


def test_secrets_of_settings_cover_every_credential() -> None:
    settings = make_settings(
        "http://127.0.0.1:9",
        "directus-token-abcdef",
        stripe_api_key="rk_test_0123456789",
        metrics_token="metrics-token-0123456789",
        database_url="postgresql+psycopg://bridge:db-password-123@127.0.0.1/bridge",
    )
    found = set(secrets_of(settings))
    assert {
        "directus-token-abcdef",
        RIDENDINE_KEY,
        SERVICE_TOKEN,
        WEBHOOK_SECRET,
        WEBHOOK_SECRET.removeprefix("whsec_"),
        "rk_test_0123456789",
        "metrics-token-0123456789",
        "db-password-123",
        settings.flow_secret,
    } <= found


def test_an_unexpected_error_logs_once_without_the_token(
    app: Flask, client: FlaskClient, capture: Capture
) -> None:
    @app.get("/_test/boom")
    def _boom() -> None:
        raise ValueError(f"downstream said no to {SERVICE_TOKEN}")

    answer = client.get("/_test/boom", headers={"Authorization": f"Bearer {SERVICE_TOKEN}"})
    assert answer.status_code == 500
    assert SERVICE_TOKEN not in answer.get_data(as_text=True)
    assert SERVICE_TOKEN not in capture.stream.getvalue()
    errors = [e for e in capture.entries() if e["level"] == "ERROR"]
    assert len(errors) == 1 and REDACTED in errors[0]["exc"]
    assert errors[0]["request_id"] == answer.headers["X-Request-Id"]


def test_configure_logging_is_idempotent_and_learns_the_secrets(settings: Settings) -> None:
    root = logging.getLogger()
    level = root.level
    before = list(root.handlers)
    try:
        configure_logging("INFO")
        configure_logging("WARNING", settings)
        ours = [h for h in root.handlers if getattr(h, "_refund_bridge", False)]
        assert len(ours) == 1
        (redactor,) = [f for f in ours[0].filters if isinstance(f, RedactingFilter)]
        assert redactor.redact(settings.directus_token + "!") == REDACTED + "!"
        assert root.level == logging.WARNING
    finally:
        for handler in root.handlers[:]:
            if handler not in before:
                root.removeHandler(handler)
        root.setLevel(level)
