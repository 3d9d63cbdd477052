"""The RideNDine sandbox's own behaviour: the partner's API as the contract describes it, signed
webhooks a receiver can verify, retries, scenarios, and the /_sandbox/ control endpoints."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from standardwebhooks import Webhook

from devstack.net import free_port
from devstack.sandbox import Receiver, ScriptedAnswer
from ridendine_sandbox import (
    Behaviour,
    SandboxConfig,
    SandboxConfigError,
    config_from_env,
    create_app,
    get_sandbox,
)
from tests.support.helpers import RIDENDINE_KEY, WEBHOOK_SECRET, unique_id

AUTH = {"Authorization": f"Bearer {RIDENDINE_KEY}"}


def refund_body(**overrides: Any) -> dict[str, Any]:
    order = unique_id("ord")
    body: dict[str, Any] = {
        "ridendine_order_id": f"rdn-{order}",
        "external_order_id": order,
        "amount_cents": 5000,
        "reason": "chef_rejected",
        "requested_by": "admin",
    }
    body.update(overrides)
    return body


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def make_config(receiver_url: str | None, **overrides: Any) -> SandboxConfig:
    behaviour = Behaviour(
        delay_seconds=0.05,
        gap_seconds=0.3,
        late_delay_seconds=1.5,
        bridge_webhook_url=receiver_url,
    )
    config = SandboxConfig(
        api_key=RIDENDINE_KEY,
        webhook_secret=WEBHOOK_SECRET,
        behaviour=behaviour,
        max_attempts=4,
        retry_base_seconds=0.05,
        retry_max_seconds=0.2,
        delivery_timeout_seconds=2.0,
        early_wait_seconds=5.0,
    )
    return replace(config, **overrides)


@pytest.fixture
def sandbox_app(receiver: Receiver) -> Iterator[Flask]:
    app = create_app(make_config(f"{receiver.url}/ridendine/webhooks/refund-status"))
    yield app
    get_sandbox(app).close()


@pytest.fixture
def sandbox(sandbox_app: Flask) -> FlaskClient:
    return sandbox_app.test_client()


def create(
    client: FlaskClient, body: dict[str, Any], key: str | None = None, headers: Any = None
) -> Any:
    return client.post(
        "/refunds/create",
        json=body,
        headers={**AUTH, "Idempotency-Key": key or unique_id("key"), **(headers or {})},
    )


def settle(client: FlaskClient, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Wait until `count` deliveries ended (delivered, failed or not sent)."""
    deadline = time.monotonic() + timeout
    while True:
        found = client.get("/_sandbox/deliveries").get_json()["deliveries"]
        done = [d for d in found if d["state"] in ("delivered", "failed", "not_sent")]
        if len(done) >= count:
            return done
        assert time.monotonic() < deadline, f"only {len(done)} of {count} deliveries ended"
        time.sleep(0.02)


def verified(request: Any) -> dict[str, Any]:
    """The event, after checking its Standard Webhooks signature over the raw body."""
    event: dict[str, Any] = Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)
    return event


# -- POST /refunds/create ----------------------------------------------------------------


def test_the_api_key_is_required(sandbox: FlaskClient) -> None:
    body = refund_body()
    missing = sandbox.post("/refunds/create", json=body, headers={"Idempotency-Key": "k1"})
    wrong = sandbox.post(
        "/refunds/create",
        json=body,
        headers={"Authorization": "Bearer not-the-key", "Idempotency-Key": "k1"},
    )
    basic = sandbox.post(
        "/refunds/create",
        json=body,
        headers={"Authorization": f"Basic {RIDENDINE_KEY}", "Idempotency-Key": "k1"},
    )
    for answer in (missing, wrong, basic):
        assert answer.status_code == 401
        assert answer.get_json()["error"]["code"] == "unauthorized"
    recorded = sandbox.get("/_sandbox/requests?idempotency_key=k1").get_json()
    assert recorded["count"] == 3
    assert [r["authorized"] for r in recorded["requests"]] == [False, False, False]
    assert sandbox.get("/_sandbox/refunds").get_json()["count"] == 0


def test_the_idempotency_key_is_required(sandbox: FlaskClient) -> None:
    answer = sandbox.post("/refunds/create", json=refund_body(), headers=AUTH)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "idempotency_key_required"
    too_long = create(sandbox, refund_body(), key="k" * 256)
    assert too_long.status_code == 400


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"amount_cents": None}, "amount_cents"),
        ({"amount_cents": "5000"}, "amount_cents"),
        ({"amount_cents": 0}, "amount_cents"),
        ({"amount_cents": 50.5}, "amount_cents"),
        ({"amount_cents": True}, "amount_cents"),
        ({"requested_by": "chef"}, "requested_by"),
        ({"external_order_id": 42}, "external_order_id"),
        ({"ridendine_order_id": ""}, "ridendine_order_id"),
        ({"reason": None}, "reason"),
        ({"currency": "EUR"}, "currency"),
    ],
)
def test_the_body_is_the_contracts_exactly(
    sandbox: FlaskClient, change: dict[str, Any], field: str
) -> None:
    body = refund_body()
    for name, value in change.items():
        if value is None:
            del body[name]
        else:
            body[name] = value
    answer = create(sandbox, body)
    assert answer.status_code == 400
    error = answer.get_json()["error"]
    assert error["code"] == "invalid_request"
    assert field in error["fields"]
    assert field in error["message"]


@pytest.mark.parametrize(
    ("data", "content_type"),
    [
        (b"{not json", "application/json"),
        (b"[1, 2]", "application/json"),
        (json.dumps(refund_body()).encode(), "text/plain"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_400(
    sandbox: FlaskClient, data: bytes, content_type: str
) -> None:
    answer = sandbox.post(
        "/refunds/create",
        data=data,
        headers={**AUTH, "Idempotency-Key": unique_id("key"), "Content-Type": content_type},
    )
    assert answer.status_code == 400
    assert answer.get_json()["error"]["message"]


def test_a_body_over_64_kib_is_413(sandbox: FlaskClient) -> None:
    answer = sandbox.post(
        "/refunds/create",
        data=b"{" + b" " * 70_000 + b"}",
        headers={**AUTH, "Idempotency-Key": "big", "Content-Type": "application/json"},
    )
    assert answer.status_code == 413
    assert answer.get_json()["error"]["message"]


def test_an_accepted_refund_answers_201_pending(sandbox: FlaskClient) -> None:
    answer = create(sandbox, refund_body())
    assert answer.status_code == 201
    body = answer.get_json()
    assert body["status"] == "pending"
    assert body["refund_id"].startswith("re_")


def test_the_same_key_and_body_replays_the_first_answer(
    sandbox: FlaskClient, receiver: Receiver
) -> None:
    body, key = refund_body(), unique_id("key")
    first = create(sandbox, body, key)
    again = create(sandbox, dict(reversed(list(body.items()))), key)
    assert again.status_code == first.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    recorded = sandbox.get(f"/_sandbox/requests?idempotency_key={key}").get_json()
    assert recorded["count"] == 2
    assert [r["replayed"] for r in recorded["requests"]] == [False, True]
    assert sandbox.get(f"/_sandbox/refunds?idempotency_key={key}").get_json()["count"] == 1
    settle(sandbox, 1)
    time.sleep(0.3)
    assert len(receiver.requests()) == 1


def test_the_same_key_with_another_body_is_409(sandbox: FlaskClient) -> None:
    body, key = refund_body(), unique_id("key")
    assert create(sandbox, body, key).status_code == 201
    other = create(sandbox, {**body, "amount_cents": 4999}, key)
    assert other.status_code == 409
    assert other.get_json()["error"]["code"] == "idempotency_key_reused"


def test_concurrent_calls_with_one_key_make_one_refund(sandbox_app: Flask) -> None:
    body, key = refund_body(), unique_id("key")
    answers: list[Any] = []

    def call() -> None:
        answers.append(create(sandbox_app.test_client(), body, key))

    threads = [threading.Thread(target=call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len({a.get_json()["refund_id"] for a in answers}) == 1
    assert get_sandbox(sandbox_app).refunds(idempotency_key=key)[0]["amount_cents"] == 5000
    assert len(get_sandbox(sandbox_app).refunds(idempotency_key=key)) == 1


# -- the result webhook ------------------------------------------------------------------


def test_the_webhook_is_signed_with_standard_webhooks(
    sandbox: FlaskClient, receiver: Receiver
) -> None:
    body = refund_body(reason="customer_cancel", requested_by="customer")
    refund_id = create(sandbox, body).get_json()["refund_id"]
    (request,) = receiver.wait_for(1)
    assert request.method == "POST"
    assert request.path == "/ridendine/webhooks/refund-status"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"].startswith("msg_")
    assert abs(int(request.headers["webhook-timestamp"]) - time.time()) < 10
    assert request.headers["webhook-signature"].startswith("v1,")
    assert "authorization" not in request.headers
    assert verified(request) == {
        "refund_id": refund_id,
        "external_order_id": body["external_order_id"],
        "amount_cents": 5000,
        "status": "REFUNDED",
        "reason": "customer_cancel",
        "currency_code": "EUR",
    }
    with pytest.raises(Exception, match="signature"):
        other = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo="
        Webhook(other).verify(request.body, request.headers)


def test_the_fail_scenario_sends_failed_with_a_reason(
    sandbox: FlaskClient, receiver: Receiver
) -> None:
    sandbox.patch("/_sandbox/settings", json={"scenario": "fail"})
    create(sandbox, refund_body())
    (request,) = receiver.wait_for(1)
    event = verified(request)
    assert event["status"] == "FAILED"
    assert event["failure_reason"] == "expired_or_canceled_card"


def test_a_webhook_not_answered_2xx_is_sent_again_with_the_same_id(
    sandbox: FlaskClient, receiver: Receiver
) -> None:
    receiver.answer(ScriptedAnswer(500), ScriptedAnswer(404), ScriptedAnswer(302))
    create(sandbox, refund_body())
    (delivery,) = settle(sandbox, 1)
    assert [a["status_code"] for a in delivery["attempts"]] == [500, 404, 302, 200]
    assert delivery["state"] == "delivered"
    requests = receiver.requests()
    assert len(requests) == 4
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1
    for request in requests:
        verified(request)


def test_delivery_gives_up_after_the_last_attempt(sandbox: FlaskClient, receiver: Receiver) -> None:
    receiver.default = ScriptedAnswer(503, b"down")
    create(sandbox, refund_body())
    (delivery,) = settle(sandbox, 1)
    assert delivery["state"] == "failed"
    assert len(delivery["attempts"]) == 4
    assert delivery["attempts"][-1]["response_body"] == "down"
    time.sleep(0.5)
    assert len(receiver.requests()) == 4


def test_an_unreachable_receiver_is_retried(sandbox: FlaskClient) -> None:
    closed = f"http://127.0.0.1:{free_port()}/hook"
    sandbox.patch("/_sandbox/settings", json={"bridge_webhook_url": closed})
    create(sandbox, refund_body())
    (delivery,) = settle(sandbox, 1)
    assert delivery["state"] == "failed"
    assert [a["error"] for a in delivery["attempts"]] == ["ConnectionError"] * 4


def test_without_a_webhook_url_nothing_is_sent(sandbox: FlaskClient) -> None:
    sandbox.patch("/_sandbox/settings", json={"bridge_webhook_url": None})
    create(sandbox, refund_body())
    (delivery,) = settle(sandbox, 1)
    assert delivery["state"] == "not_sent"
    assert len(delivery["attempts"]) == 1


def test_bearer_mode_sends_the_static_token(receiver: Receiver) -> None:
    config = make_config(
        receiver.url, webhook_secret=None, webhook_bearer_token="static-webhook-token-123"
    )
    app = create_app(config)
    try:
        create(app.test_client(), refund_body())
        (request,) = receiver.wait_for(1)
    finally:
        get_sandbox(app).close()
    assert request.headers["authorization"] == "Bearer static-webhook-token-123"
    assert "webhook-signature" not in request.headers
    assert json.loads(request.body)["status"] == "REFUNDED"


# -- scenarios ---------------------------------------------------------------------------


def test_duplicate_sends_the_same_id_again_and_the_same_event_under_new_ids(
    sandbox: FlaskClient, receiver: Receiver
) -> None:
    sandbox.patch("/_sandbox/settings", json={"scenario": "duplicate", "duplicates": 2})
    refund_id = create(sandbox, refund_body()).get_json()["refund_id"]
    requests = receiver.wait_for(5)
    ids = [r.headers["webhook-id"] for r in requests]
    counts = sorted(ids.count(i) for i in set(ids))
    assert counts == [1, 1, 3]
    events = [verified(r) for r in requests]
    assert all(e == events[0] for e in events)
    assert events[0]["refund_id"] == refund_id


def test_out_of_order_sends_failed_then_refunded(sandbox: FlaskClient, receiver: Receiver) -> None:
    sandbox.patch("/_sandbox/settings", json={"scenario": "out_of_order"})
    refund_id = create(sandbox, refund_body()).get_json()["refund_id"]
    requests = receiver.wait_for(2)
    assert [verified(r)["status"] for r in requests] == ["FAILED", "REFUNDED"]
    assert {verified(r)["refund_id"] for r in requests} == {refund_id}
    assert requests[0].headers["webhook-id"] != requests[1].headers["webhook-id"]


def test_refunded_then_failed(sandbox: FlaskClient, receiver: Receiver) -> None:
    sandbox.patch("/_sandbox/settings", json={"scenario": "refunded_then_failed"})
    create(sandbox, refund_body())
    assert [verified(r)["status"] for r in receiver.wait_for(2)] == ["REFUNDED", "FAILED"]


def test_early_delivers_the_webhook_before_answering(
    sandbox: FlaskClient, receiver: Receiver
) -> None:
    sandbox.patch("/_sandbox/settings", json={"scenario": "early", "delay_seconds": 5})
    answer = create(sandbox, refund_body())
    assert answer.status_code == 201
    (request,) = receiver.requests()
    assert verified(request)["refund_id"] == answer.get_json()["refund_id"]


def test_late_delivers_after_the_long_delay(sandbox: FlaskClient, receiver: Receiver) -> None:
    sandbox.patch("/_sandbox/settings", json={"scenario": "late", "late_delay_seconds": 1.0})
    started = time.monotonic()
    create(sandbox, refund_body())
    receiver.wait_for(1)
    assert time.monotonic() - started >= 1.0


def test_silent_never_sends(sandbox: FlaskClient, receiver: Receiver) -> None:
    sandbox.patch("/_sandbox/settings", json={"scenario": "silent"})
    assert create(sandbox, refund_body()).status_code == 201
    time.sleep(0.4)
    assert receiver.requests() == []
    assert sandbox.get("/_sandbox/deliveries").get_json()["count"] == 0


def test_reject_answers_4xx_with_a_message_and_sends_nothing(
    sandbox: FlaskClient, receiver: Receiver
) -> None:
    sandbox.patch(
        "/_sandbox/settings", json={"scenario": "reject", "reject_message": "Already refunded."}
    )
    body, key = refund_body(), unique_id("key")
    answer = create(sandbox, body, key)
    assert answer.status_code == 422
    assert answer.get_json() == {
        "error": {"code": "refund_rejected", "message": "Already refunded."}
    }
    again = create(sandbox, body, key)
    assert (again.status_code, again.get_json()) == (422, answer.get_json())
    time.sleep(0.3)
    assert receiver.requests() == []
    assert sandbox.get("/_sandbox/refunds").get_json()["count"] == 0


def test_flaky_answers_503_on_the_first_calls_with_a_key(
    sandbox: FlaskClient, receiver: Receiver
) -> None:
    sandbox.patch("/_sandbox/settings", json={"scenario": "flaky", "flaky_failures": 2})
    body, key = refund_body(), unique_id("key")
    answers = [create(sandbox, body, key) for _ in range(4)]
    assert [a.status_code for a in answers] == [503, 503, 201, 201]
    assert answers[0].headers["Retry-After"] == "1"
    assert answers[3].get_json() == answers[2].get_json()
    assert len(receiver.wait_for(1)) == 1
    other_key = create(sandbox, refund_body(), unique_id("key"))
    assert other_key.status_code == 503


def test_a_rule_sets_the_scenario_of_one_order(sandbox: FlaskClient, receiver: Receiver) -> None:
    failing, ok = refund_body(), refund_body()
    rule = {"external_order_id": failing["external_order_id"], "scenario": "fail"}
    assert sandbox.post("/_sandbox/rules", json=rule).status_code == 201
    create(sandbox, failing)
    create(sandbox, ok)
    statuses = {
        verified(r)["external_order_id"]: verified(r)["status"] for r in receiver.wait_for(2)
    }
    assert statuses == {
        failing["external_order_id"]: "FAILED",
        ok["external_order_id"]: "REFUNDED",
    }
    assert sandbox.get("/_sandbox/rules").get_json()["rules"] == {
        failing["external_order_id"]: {"scenario": "fail"}
    }


# -- control endpoints -------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"scenario": "explode"},
        {"delay_seconds": -1},
        {"duplicates": "2"},
        {"reject_status": 500},
        {"bridge_webhook_url": "ftp://example.com"},
        {"unknown": 1},
    ],
)
def test_settings_changes_are_checked(sandbox: FlaskClient, change: dict[str, Any]) -> None:
    answer = sandbox.patch("/_sandbox/settings", json=change)
    assert answer.status_code == 400
    assert answer.get_json()["error"]["code"] == "invalid_request"
    assert sandbox.get("/_sandbox/settings").get_json()["behaviour"]["scenario"] == "succeed"


def test_settings_show_no_secret(sandbox: FlaskClient) -> None:
    answer = sandbox.get("/_sandbox/settings")
    text = answer.get_data(as_text=True)
    assert answer.get_json()["signing"] is True
    assert WEBHOOK_SECRET not in text
    assert RIDENDINE_KEY not in text


def test_an_event_sent_by_hand_defaults_to_the_known_refund(
    sandbox: FlaskClient, receiver: Receiver
) -> None:
    sandbox.patch("/_sandbox/settings", json={"scenario": "silent"})
    body = refund_body()
    refund_id = create(sandbox, body).get_json()["refund_id"]
    sent = sandbox.post(
        "/_sandbox/events", json={"refund_id": refund_id, "status": "FAILED", "webhook_id": "w-1"}
    )
    assert sent.status_code == 202
    (request,) = receiver.wait_for(1)
    assert request.headers["webhook-id"] == "w-1"
    assert verified(request) == {
        "refund_id": refund_id,
        "external_order_id": body["external_order_id"],
        "amount_cents": 5000,
        "status": "FAILED",
        "reason": "chef_rejected",
        "currency_code": "EUR",
        "failure_reason": "expired_or_canceled_card",
    }


def test_an_event_for_an_unknown_refund_needs_order_and_amount(
    sandbox: FlaskClient, receiver: Receiver
) -> None:
    incomplete = sandbox.post("/_sandbox/events", json={"status": "REFUNDED"})
    assert incomplete.status_code == 400
    assert set(incomplete.get_json()["error"]["fields"]) == {"external_order_id", "amount_cents"}
    sent = sandbox.post(
        "/_sandbox/events",
        json={
            "status": "REFUNDED",
            "external_order_id": "ord-outside",
            "amount_cents": 700,
            "extra": {"items": [{"name": "Soup"}]},
        },
    )
    assert sent.status_code == 202
    event = verified(receiver.wait_for(1)[0])
    assert event["refund_id"].startswith("re_")
    assert (event["external_order_id"], event["amount_cents"]) == ("ord-outside", 700)
    assert event["items"] == [{"name": "Soup"}]


def test_reset_forgets_everything_and_cancels_pending_webhooks(
    sandbox: FlaskClient, receiver: Receiver
) -> None:
    sandbox.patch("/_sandbox/settings", json={"scenario": "late", "late_delay_seconds": 0.5})
    sandbox.post("/_sandbox/rules", json={"external_order_id": "x", "scenario": "fail"})
    create(sandbox, refund_body())
    assert sandbox.post("/_sandbox/reset").status_code == 200
    for kind in ("requests", "deliveries", "refunds"):
        assert sandbox.get(f"/_sandbox/{kind}").get_json()["count"] == 0
    assert sandbox.get("/_sandbox/rules").get_json()["rules"] == {}
    assert sandbox.get("/_sandbox/settings").get_json()["behaviour"]["scenario"] == "succeed"
    time.sleep(0.8)
    assert receiver.requests() == []


def test_unknown_paths_and_methods_answer_json(sandbox: FlaskClient) -> None:
    assert sandbox.get("/nowhere").get_json()["error"]["code"] == "not_found"
    wrong = sandbox.get("/refunds/create")
    assert wrong.status_code == 405
    assert wrong.get_json()["error"]["message"]


def test_close_stops_the_delivery_threads(receiver: Receiver) -> None:
    app = create_app(make_config(receiver.url))
    create(app.test_client(), refund_body())
    receiver.wait_for(1)
    sandbox = get_sandbox(app)
    dispatcher = sandbox.deliverer._dispatcher
    assert dispatcher is not None and dispatcher.is_alive()
    sandbox.close()
    assert not dispatcher.is_alive()
    late = sandbox.send_event({"status": "REFUNDED"}, url=receiver.url)
    assert late.state == "cancelled"


# -- configuration -----------------------------------------------------------------------


def test_config_falls_back_to_the_bridges_variables() -> None:
    config = config_from_env(
        {
            "BRIDGE_RIDENDINE_API_KEY": "bridge-key-0123456789",
            "BRIDGE_WEBHOOK_SECRETS": f"{WEBHOOK_SECRET}, whsec_b2xkLXNlY3JldC1vbGQtc2VjcmV0",
        },
        scenario="fail",
        delay_seconds=2.0,
        bridge_webhook_url=None,
    )
    assert config.api_key == "bridge-key-0123456789"
    assert config.webhook_secret == WEBHOOK_SECRET
    assert (config.behaviour.scenario, config.behaviour.delay_seconds) == ("fail", 2.0)


def test_config_prefers_the_sandboxes_own_variables() -> None:
    config = config_from_env(
        {
            "RIDENDINE_SANDBOX_API_KEY": "own-key-0123456789",
            "BRIDGE_RIDENDINE_API_KEY": "bridge-key-0123456789",
            "RIDENDINE_SANDBOX_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "RIDENDINE_SANDBOX_MAX_ATTEMPTS": "7",
            "RIDENDINE_SANDBOX_CURRENCY_CODE": "usd",
        }
    )
    assert (config.api_key, config.max_attempts, config.currency_code) == (
        "own-key-0123456789",
        7,
        "USD",
    )


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"RIDENDINE_SANDBOX_WEBHOOK_SECRET": WEBHOOK_SECRET}, "RIDENDINE_SANDBOX_API_KEY"),
        ({"RIDENDINE_SANDBOX_API_KEY": "k" * 20}, "RIDENDINE_SANDBOX_WEBHOOK_SECRET"),
        (
            {"RIDENDINE_SANDBOX_API_KEY": "k" * 20, "RIDENDINE_SANDBOX_WEBHOOK_SECRET": "plain"},
            "RIDENDINE_SANDBOX_WEBHOOK_SECRET",
        ),
        (
            {
                "RIDENDINE_SANDBOX_API_KEY": "k" * 20,
                "RIDENDINE_SANDBOX_WEBHOOK_SECRET": WEBHOOK_SECRET,
                "RIDENDINE_SANDBOX_MAX_ATTEMPTS": "many",
            },
            "RIDENDINE_SANDBOX_MAX_ATTEMPTS",
        ),
    ],
)
def test_a_bad_setting_names_its_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SandboxConfigError) as raised:
        config_from_env(env)
    assert raised.value.variable == variable
