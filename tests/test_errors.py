"""Every error is problem+json (contract section 6): Flask's own and unexpected ones too."""

from __future__ import annotations

import logging

import pytest
from flask import Flask
from flask.testing import FlaskClient

PROBLEM = "application/problem+json"


def assert_problem(response: object, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status  # type: ignore[attr-defined]
    assert response.mimetype == PROBLEM  # type: ignore[attr-defined]
    body = response.get_json()  # type: ignore[attr-defined]
    for key in ("type", "title", "status", "detail", "code"):
        assert key in body, key
    assert body["status"] == status
    assert body["code"] == code
    return body  # type: ignore[no-any-return]


def test_unknown_url_is_problem_json(client: FlaskClient) -> None:
    assert_problem(client.get("/no/such/page"), 404, "not_found")


def test_wrong_method_is_problem_json_with_allow(client: FlaskClient) -> None:
    response = client.delete("/healthz")
    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["Allow"]


def test_body_over_64_kib_is_413(app: Flask, client: FlaskClient) -> None:
    @app.post("/echo-size")
    def echo_size() -> dict[str, int]:
        from flask import request

        return {"size": len(request.get_data())}

    assert client.post("/echo-size", data=b"x" * 1000).status_code == 200
    assert_problem(client.post("/echo-size", data=b"x" * (64 * 1024 + 1)), 413, "payload_too_large")


def test_unexpected_exception_is_500_without_trace_and_logged_once(
    app: Flask, client: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    app.config["PROPAGATE_EXCEPTIONS"] = False

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("secret-token-in-message")

    with caplog.at_level(logging.ERROR):
        response = client.get("/boom", headers={"X-Request-Id": "req-123"})
    body = assert_problem(response, 500, "internal_error")
    text = response.get_data(as_text=True)
    assert "secret-token-in-message" not in text
    assert "Traceback" not in text
    assert body["request_id"] == "req-123"
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert getattr(records[0], "request_id", None) == "req-123"


def test_request_id_is_echoed_or_made(client: FlaskClient) -> None:
    given = client.get("/healthz", headers={"X-Request-Id": "abc-1"})
    assert given.headers["X-Request-Id"] == "abc-1"
    made = client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})
    assert made.headers["X-Request-Id"] != "bad id with spaces"
    assert len(made.headers["X-Request-Id"]) == 32
