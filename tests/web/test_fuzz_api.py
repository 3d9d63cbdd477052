"""schemathesis against the live app, for every operation of its OpenAPI description.

The app is the real one (its store on SQLite, the session's real Directus with COOCO's orders,
the RideNDine sandbox process); the description is the one it serves. For each operation,
requests are generated that fit the description (positive) and that break it (negative), each
sent twice over: with valid credentials (a service token, a Directus admin's or a customer's
token, the metrics token, or a Standard Webhooks signature over the exact bytes sent, with a
fresh timestamp), and as generated (no credentials at all). Valid requests are steered to real
orders and refunds so that they reach the business logic, not only the validation.

Every answer must: not be a 5xx (`not_a_server_error`), have a status, content type, headers and
body the description declares (problem+json included), and be a 4xx for data that breaks the
description (`negative_data_rejection`).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.core.parameters import ParameterLocation
from standardwebhooks.webhooks import Webhook

from bridge import create_app
from bridge.openapi import SPEC_PATH, build_spec
from devstack.directus import DirectusServer
from devstack.sandbox import SandboxProcess
from directus_client import DirectusClient
from tests.support import reliability
from tests.support.helpers import (
    SERVICE_TOKEN,
    WEBHOOK_SECRET,
    make_order,
    make_settings,
    make_user,
)

# Examples per operation, mode and kind of credentials (FUZZ_EXAMPLES to explore longer).
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "40"))
METRICS_TOKEN = "metrics-token-for-fuzzing-0123"
WEBHOOK_PATH = "/ridendine/webhooks/refund-status"
OPERATIONS = sorted(
    (method.upper(), path)
    for path, operations in build_spec()["paths"].items()
    for method in operations
)
# Requests that break the description need something to break: a parameter or a body.
TAKES_INPUT = {
    (method.upper(), path)
    for path, operations in build_spec()["paths"].items()
    for method, operation in operations.items()
    if operation.get("parameters") or operation.get("requestBody")
}
CASES = [
    pytest.param(method, path, mode, id=f"{method}-{path}-{mode.value}")
    for method, path in OPERATIONS
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)
    if mode == GenerationMode.POSITIVE or (method, path) in TAKES_INPUT
]
CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_headers_conformance,
    schemathesis.checks.response_schema_conformance,
    schemathesis.checks.negative_data_rejection,
]


@dataclass
class FuzzTarget:
    app: Flask
    client: FlaskClient
    schema: Any
    tokens: list[str]
    customer_token: str
    user_ids: list[str]
    order_ids: list[str]
    refund_ids: list[str]
    statuses: Counter[int] = field(default_factory=Counter)
    answers: defaultdict[tuple[str, str, bool], Counter[int]] = field(
        default_factory=lambda: defaultdict(Counter)
    )
    cases: int = 0


def _pick(options: list[str], *seed: Any) -> str:
    """A stable choice (the same case picks the same option, so hypothesis can shrink)."""
    digest = hashlib.sha256(repr(seed).encode()).digest()
    return options[digest[0] % len(options)]


@pytest.fixture(scope="module")
def target(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    ridendine_sandbox: SandboxProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[FuzzTarget]:
    folder: Path = tmp_path_factory.mktemp("fuzz-api")
    app = create_app(
        {
            "BRIDGE_SETTINGS": make_settings(
                cooco_directus.url,
                cooco_directus.admin_token,
                ridendine_api_url=ridendine_sandbox.url,
                metrics_token=METRICS_TOKEN,
            ),
            "DATABASE_URL": f"sqlite:///{folder / 'bridge.sqlite3'}",
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    customer = make_user(directus_admin)
    admin = make_user(directus_admin, admin=True)
    # Large orders, so that generated amounts and percentages are often refundable.
    orders = [
        make_order(directus_admin, amount_paid_cents=10**9, customer=customer["id"])
        for _ in range(3)
    ]
    orders.append(make_order(directus_admin, payment_status="PENDING"))
    client = app.test_client()
    refund_ids = []
    for order in orders[:2]:
        answer = client.post(
            "/ridendine/refunds",
            json={
                "order_id": order["id"],
                "reason": "chef_rejected",
                "percent": 1,
                "requested_by": "admin",
            },
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
        )
        assert answer.status_code == 202, answer.get_data(as_text=True)
        refund_ids.append(answer.get_json()["refund"]["id"])
    schema = schemathesis.openapi.from_wsgi(SPEC_PATH, app)
    fuzz = FuzzTarget(
        app=app,
        client=client,
        schema=schema,
        tokens=[SERVICE_TOKEN, admin["token"], customer["token"]],
        customer_token=customer["token"],
        user_ids=[customer["id"], admin["id"]],
        order_ids=[order["id"] for order in orders],
        refund_ids=refund_ids,
    )
    yield fuzz
    reliability.record(
        "test_fuzz_api",
        cases=fuzz.cases,
        operations=len(OPERATIONS),
        statuses=dict(sorted(fuzz.statuses.items())),
        server_errors=sum(n for status, n in fuzz.statuses.items() if status >= 500),
        by_operation={
            f"{method} {path} {'credentials' if credentials else 'none'}": dict(counts)
            for (method, path, credentials), counts in sorted(fuzz.answers.items())
        },
    )


def _steer(case: Any, fuzz: FuzzTarget) -> None:
    """Point a valid case at real orders and refunds (never a negative one: that would make it
    valid and its acceptance a false alarm)."""
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("order_id"), str | int):
        body["order_id"] = _pick(fuzz.order_ids, body)
        if body.get("reason") == "customer_cancel":
            body.pop("requested_by", None)  # a customer's token derives it
        else:
            body.setdefault("requested_by", "admin")  # a service token must say it
    if isinstance(body, dict) and "external_order_id" in body:
        body["external_order_id"] = _pick(fuzz.order_ids, body)
    if case.query and "order_id" in case.query:
        case.query["order_id"] = _pick(fuzz.order_ids, case.query)
    if case.path_parameters and "refund_id" in case.path_parameters:
        case.path_parameters["refund_id"] = _pick(fuzz.refund_ids, case.path_parameters)
    if case.headers and "X-Directus-User-Id" in case.headers:
        # A random uuid names no user (401): act for a real one, or for no one.
        acting = _pick([*fuzz.user_ids, ""], case.headers)
        if acting:
            case.headers["X-Directus-User-Id"] = acting
        else:
            del case.headers["X-Directus-User-Id"]


def _credentials(kwargs: dict[str, Any], case: Any, fuzz: FuzzTarget) -> None:
    headers = kwargs["headers"]
    path = case.operation.path
    if path == WEBHOOK_PATH:
        body = kwargs.get("data") or b""
        if isinstance(body, str):
            body = body.encode()
        # Keep a generated id or timestamp that breaks the description (the case must stay
        # negative); a valid one gets a fresh timestamp, so that the signature can verify.
        webhook_id = str(headers.get("webhook-id") or f"msg_{uuid.uuid4().hex}")
        timestamp = str(headers.get("webhook-timestamp") or "")
        if timestamp.isdigit() and len(timestamp) <= 12:
            timestamp = str(int(time.time()))
        try:
            signed_at = int(timestamp)
            signature = Webhook(WEBHOOK_SECRET).sign(
                webhook_id, _datetime(signed_at), body.decode("utf-8")
            )
        except (ValueError, OverflowError, OSError, UnicodeDecodeError):
            signature = "v1,bm90LWEtc2lnbmF0dXJl"
        headers.update(
            {
                "webhook-id": webhook_id,
                "webhook-timestamp": timestamp,
                "webhook-signature": signature,
            }
        )
    elif path == "/metrics":
        headers["Authorization"] = f"Bearer {METRICS_TOKEN}"
    elif case.operation.definition.raw.get("security"):
        token = _pick(fuzz.tokens, case.body, case.query, case.path_parameters)
        headers["Authorization"] = f"Bearer {token}"


def _datetime(seconds: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(seconds, UTC)


def _headers_negated(case: Any) -> bool:
    """Whether the case breaks the description in its headers (credentials included): then
    credentials are not added, or the case would become valid."""
    if case.meta is None or case.meta.generation.mode != GenerationMode.NEGATIVE:
        return False
    headers = case.meta.components.get(ParameterLocation.HEADER)
    parameter = getattr(case.meta.phase.data, "parameter", None)
    negated = headers is not None and headers.mode == GenerationMode.NEGATIVE
    return negated or parameter in ("Authorization", "webhook-signature")


def _send(case: Any, fuzz: FuzzTarget, *, credentials: bool) -> Any:
    positive = case.meta is None or case.meta.generation.mode == GenerationMode.POSITIVE
    if credentials and positive:
        _steer(case, fuzz)
    kwargs = case.as_transport_kwargs()
    kwargs["headers"] = dict(kwargs.get("headers") or {})
    if "json" in kwargs:
        # The exact bytes sent: a webhook's signature is over them.
        kwargs["data"] = json.dumps(kwargs.pop("json")).encode()
        kwargs["headers"].setdefault("Content-Type", "application/json")
    if credentials and not _headers_negated(case):
        _credentials(kwargs, case, fuzz)
    response = fuzz.client.open(**kwargs)
    fuzz.cases += 1
    fuzz.statuses[response.status_code] += 1
    fuzz.answers[(case.operation.method.upper(), case.operation.path, credentials)][
        response.status_code
    ] += 1
    case.validate_response(response, checks=CHECKS)
    return response


@pytest.mark.slow
@pytest.mark.parametrize("credentials", [True, False], ids=["credentials", "no-credentials"])
@pytest.mark.parametrize(("method", "path", "mode"), CASES)
def test_every_answer_matches_the_description(
    target: FuzzTarget, method: str, path: str, mode: GenerationMode, credentials: bool
) -> None:
    operation = target.schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        _send(case, target, credentials=credentials)

    run()


def test_valid_credentials_reach_the_business_logic(
    target: FuzzTarget, directus_admin: DirectusClient
) -> None:
    """The fuzzing is not only bounced at the door: a valid case on a fresh order is a 202 as
    described, and the generated cases with credentials created refunds, read them, and had
    webhooks recorded."""
    order = make_order(directus_admin, amount_paid_cents=5000)
    case = target.schema["/ridendine/refunds"]["POST"].Case(
        body={"order_id": order["id"], "reason": "chef_rejected", "requested_by": "admin"},
        media_type="application/json",
    )
    kwargs = case.as_transport_kwargs()
    kwargs["headers"] = {
        **(kwargs.get("headers") or {}),
        "Authorization": f"Bearer {SERVICE_TOKEN}",
    }
    answer = target.client.open(**kwargs)
    assert answer.status_code == 202, answer.get_data(as_text=True)
    case.validate_response(answer, checks=CHECKS)

    if target.cases > 100:  # after the generated cases (not when this test runs alone)
        answers = target.answers
        assert answers[("POST", "/ridendine/refunds", True)][202] > 0, answers
        assert answers[("GET", "/ridendine/refunds/{refund_id}", True)][200] > 0, answers
        assert answers[("GET", "/ridendine/refunds", True)][200] > 0, answers
        assert answers[("POST", WEBHOOK_PATH, True)][200] > 0, answers
        assert answers[("POST", WEBHOOK_PATH, False)][200] == 0, answers
