"""Refund results checked against Stripe (mocked with `responses` at BRIDGE_STRIPE_API_BASE):
stale PENDING refunds settled from Stripe's word, REFUNDED webhooks applied only when Stripe
confirms them, and refunds flagged when nobody can say. Directus is real."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import responses
from flask import Flask
from sqlalchemy import select, update

from bridge import create_app
from bridge.config import Settings
from bridge.services import Services
from bridge.store.models import InboxEvent, InboxState, OutboxJob, OutboxState, Refund, utcnow
from bridge.webhooks import stripe_check
from bridge.worker import Worker, WorkerOptions
from devstack.directus import DirectusServer
from directus_client import DirectusClient
from tests.support.helpers import make_order, make_settings
from tests.support.webhook_helpers import (
    event_body,
    make_pending_refund,
    post_event,
    sync_result_flow,
)

STRIPE_BASE = "https://stripe.example"
STRIPE_KEY = "rk_test_read_only_0123456789"


def stripe_refund(
    refund_id: str, status: str, amount: int, currency: str = "eur", **extra: Any
) -> dict[str, Any]:
    return {
        "id": refund_id,
        "object": "refund",
        "amount": amount,
        "currency": currency,
        "status": status,
        "created": int(utcnow().timestamp()),
        **extra,
    }


def mock_stripe_refund(
    mock: responses.RequestsMock, body: dict[str, Any], status: int = 200
) -> None:
    mock.add(responses.GET, f"{STRIPE_BASE}/v1/refunds/{body['id']}", json=body, status=status)


def new_re_id() -> str:
    import uuid

    return f"re_{uuid.uuid4().hex[:20]}"


# -- the client and the verdicts (no Directus) ---------------------------------------------------


@pytest.fixture
def stripe_settings() -> Settings:
    return make_settings(
        "http://127.0.0.1:9", "unused", stripe_api_key=STRIPE_KEY, stripe_api_base=STRIPE_BASE
    )


def test_no_key_no_client(settings: Settings) -> None:
    assert stripe_check.make_client(settings) is None


@responses.activate
def test_client_asks_the_configured_base_with_the_key(stripe_settings: Settings) -> None:
    responses.add(
        responses.GET,
        f"{STRIPE_BASE}/v1/refunds/re_123",
        json=stripe_refund("re_123", "succeeded", 5000, failure_reason=None),
    )
    client = stripe_check.make_client(stripe_settings)
    assert client is not None
    found = stripe_check.fetch_refund(client, "re_123")
    assert found == stripe_check.StripeRefund(
        id="re_123",
        status="succeeded",
        amount_cents=5000,
        currency="EUR",
        failure_reason=None,
        created=found.created,
    )
    (call,) = responses.calls
    assert call.request.headers["Authorization"] == f"Bearer {STRIPE_KEY}"


@responses.activate
def test_missing_refund_and_unusable_answers(stripe_settings: Settings) -> None:
    error = {
        "error": {
            "type": "invalid_request_error",
            "code": "resource_missing",
            "message": "No such refund: 're_gone'",
        }
    }
    responses.add(responses.GET, f"{STRIPE_BASE}/v1/refunds/re_gone", json=error, status=404)
    denied = {"error": {"type": "invalid_request_error", "message": "Invalid API Key provided"}}
    responses.add(responses.GET, f"{STRIPE_BASE}/v1/refunds/re_key", json=denied, status=401)
    client = stripe_check.make_client(stripe_settings)
    assert client is not None
    with pytest.raises(stripe_check.StripeRefundMissing):
        stripe_check.fetch_refund(client, "re_gone")
    with pytest.raises(stripe_check.StripeUnavailable) as raised:
        stripe_check.fetch_refund(client, "re_key")
    assert STRIPE_KEY not in str(raised.value)


@responses.activate
def test_listing_follows_pages(stripe_settings: Settings) -> None:
    first = [stripe_refund(f"re_{i}", "succeeded", 100 + i) for i in range(3)]
    second = [stripe_refund("re_9", "failed", 900)]
    responses.add(
        responses.GET,
        f"{STRIPE_BASE}/v1/refunds",
        json={"object": "list", "data": first, "has_more": True, "url": "/v1/refunds"},
        match=[
            responses.matchers.query_param_matcher({"limit": "100", "created[gte]": "1700000000"})
        ],
    )
    responses.add(
        responses.GET,
        f"{STRIPE_BASE}/v1/refunds",
        json={"object": "list", "data": second, "has_more": False, "url": "/v1/refunds"},
        match=[
            responses.matchers.query_param_matcher(
                {"limit": "100", "created[gte]": "1700000000", "starting_after": "re_2"}
            )
        ],
    )
    client = stripe_check.make_client(stripe_settings)
    assert client is not None
    from datetime import UTC, datetime

    found = stripe_check.list_refunds(client, created_since=datetime.fromtimestamp(1700000000, UTC))
    assert sorted(found) == ["re_0", "re_1", "re_2", "re_9"]
    assert found["re_9"].status == "failed"


@pytest.mark.parametrize(
    ("status", "amount", "currency", "check"),
    [
        ("succeeded", 5000, "eur", stripe_check.Check.CONFIRMED),
        ("succeeded", 4000, "eur", stripe_check.Check.MISMATCH),
        ("succeeded", 5000, "usd", stripe_check.Check.MISMATCH),
        ("failed", 5000, "eur", stripe_check.Check.FAILED),
        ("canceled", 5000, "eur", stripe_check.Check.FAILED),
        ("pending", 5000, "eur", stripe_check.Check.WAIT),
        ("requires_action", 5000, "eur", stripe_check.Check.WAIT),
    ],
)
def test_judge(status: str, amount: int, currency: str, check: stripe_check.Check) -> None:
    found = stripe_check.StripeRefund("re_1", status, amount, currency.upper())
    assert stripe_check.judge(found, amount_cents=5000, currency="EUR").check == check


def test_only_stripe_ids_are_asked_about() -> None:
    assert stripe_check.stripe_refund_id(None, "rdn-123") is None
    assert stripe_check.stripe_refund_id("re_known", "re_reported") == "re_known"
    assert stripe_check.stripe_refund_id("rdn-1", "re_reported") == "re_reported"


# -- with Directus: the worker and the webhook ---------------------------------------------------


@pytest.fixture
def bridge_settings(cooco_directus: DirectusServer) -> Settings:
    return make_settings(
        cooco_directus.url,
        cooco_directus.admin_token,
        stripe_api_key=STRIPE_KEY,
        stripe_api_base=STRIPE_BASE,
        pending_stale_seconds=1800,
        pending_review_seconds=7200,
    )


@pytest.fixture
def bridge(
    bridge_settings: Settings, database_url: str, directus_admin: DirectusClient
) -> Iterator[Flask]:
    app = create_app(
        {
            "BRIDGE_SETTINGS": bridge_settings,
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    app.extensions["bridge.services"].extras["flow_id:refund-result"] = sync_result_flow(
        directus_admin
    )
    yield app
    app.extensions["bridge.services"].directus.close()


@pytest.fixture
def services(bridge: Flask) -> Services:
    services: Services = bridge.extensions["bridge.services"]
    return services


@pytest.fixture
def stripe_api(cooco_directus: DirectusServer) -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(cooco_directus.url)
        yield mock


def stripe_calls(mock: responses.RequestsMock) -> list[Any]:
    return [c for c in mock.calls if c.request.url.startswith(STRIPE_BASE)]


def run_worker(services: Services) -> None:
    """What the worker's schedule does, at once: scan for stale refunds, drain, and again
    (the jobs a job queued), with every backoff skipped."""
    worker = Worker(services, WorkerOptions(housekeeping=False))
    for _ in range(4):
        with services.store.session() as session:
            session.execute(
                update(OutboxJob)
                .where(OutboxJob.state == OutboxState.PENDING)
                .values(next_attempt_at=utcnow() - timedelta(seconds=1))
            )
        worker.run_once()


def refund_now(services: Services, refund_id: str) -> Refund:
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        refund.history  # noqa: B018 - loaded before the session closes
        session.expunge(refund)
        return refund


def jobs_of(services: Services, refund_id: str, kind: str) -> list[OutboxJob]:
    with services.store.session() as session:
        found = list(
            session.scalars(
                select(OutboxJob).where(OutboxJob.refund_id == refund_id, OutboxJob.kind == kind)
            )
        )
        for job in found:
            session.expunge(job)
        return found


def stale_refund(
    services: Services, order: dict[str, Any], re_id: str | None, age: timedelta
) -> str:
    return make_pending_refund(
        services, order, ridendine_refund_id=re_id, created_at=utcnow() - age
    )


def test_pending_refund_whose_webhook_never_comes_is_applied_from_stripe(
    services: Services, stripe_api: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin, amount_paid_cents=5_000)
    re_id = new_re_id()
    refund_id = stale_refund(services, order, re_id, timedelta(minutes=45))
    mock_stripe_refund(stripe_api, stripe_refund(re_id, "succeeded", 5_000))

    run_worker(services)

    refund = refund_now(services, refund_id)
    assert refund.status == "REFUNDED"
    assert refund.refunded_amount_cents == 5_000
    assert not refund.needs_review
    last = refund.history[-1]
    assert (last.to_status, last.source) == ("REFUNDED", "reconciliation")
    assert re_id in (last.detail or "")
    stored = directus_admin.get_item("orders", order["id"])
    assert (stored["payment_status"], stored["status"]) == ("REFUNDED", "CANCELLED")
    assert directus_admin.get_item("refunds", refund_id)["status"] == "REFUNDED"
    assert [j.state for j in jobs_of(services, refund_id, "notify_result")] == ["done"]
    assert len(stripe_calls(stripe_api)) == 1  # asked once, not on every scan


def test_a_fresh_pending_refund_is_not_asked_about(
    services: Services, stripe_api: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin)
    refund_id = stale_refund(services, order, new_re_id(), timedelta(minutes=10))
    run_worker(services)
    assert stripe_calls(stripe_api) == []
    assert refund_now(services, refund_id).status == "PENDING"


@pytest.mark.parametrize("stripe_status", ["failed", "canceled"])
def test_stripe_failed_or_canceled_is_applied_like_failed(
    stripe_status: str,
    services: Services,
    stripe_api: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=2_000)
    re_id = new_re_id()
    refund_id = stale_refund(services, order, re_id, timedelta(hours=1))
    mock_stripe_refund(
        stripe_api,
        stripe_refund(re_id, stripe_status, 2_000, failure_reason="expired_or_canceled_card"),
    )

    run_worker(services)

    refund = refund_now(services, refund_id)
    assert refund.status == "FAILED"
    assert stripe_status in (refund.failure_reason or "")
    assert refund.history[-1].source == "reconciliation"
    assert directus_admin.get_item("orders", order["id"])["payment_status"] == "PAID"
    assert directus_admin.get_item("refunds", refund_id)["status"] == "FAILED"


def test_stripe_pending_waits_and_is_asked_again_next_period(
    services: Services, stripe_api: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin)
    re_id = new_re_id()
    refund_id = stale_refund(services, order, re_id, timedelta(minutes=40))
    mock_stripe_refund(stripe_api, stripe_refund(re_id, "pending", order["amount_paid_cents"]))

    run_worker(services)
    assert refund_now(services, refund_id).status == "PENDING"
    assert not refund_now(services, refund_id).needs_review
    assert len(stripe_calls(stripe_api)) == 1
    # One stale period later it is asked again.
    with services.store.session() as session:
        session.execute(
            update(Refund)
            .where(Refund.id == refund_id)
            .values(created_at=utcnow() - timedelta(minutes=70))
        )
    run_worker(services)
    assert len(stripe_calls(stripe_api)) == 2


def test_stripe_refunded_another_amount_is_flagged_not_applied(
    services: Services, stripe_api: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin, amount_paid_cents=6_000)
    re_id = new_re_id()
    refund_id = stale_refund(services, order, re_id, timedelta(hours=1))
    mock_stripe_refund(stripe_api, stripe_refund(re_id, "succeeded", 5_999))

    run_worker(services)

    refund = refund_now(services, refund_id)
    assert refund.status == "PENDING"
    assert refund.needs_review
    assert "5999" in (refund.review_reason or "")
    assert len(jobs_of(services, refund_id, "alert_admins")) == 1
    assert bool(directus_admin.get_item("refunds", refund_id)["needs_review"])


def test_without_stripe_a_long_pending_refund_is_flagged_once(
    cooco_directus: DirectusServer, database_url: str, directus_admin: DirectusClient
) -> None:
    settings = make_settings(cooco_directus.url, cooco_directus.admin_token)  # no Stripe key
    app = create_app(
        {"BRIDGE_SETTINGS": settings, "DATABASE_URL": database_url, "AUTO_MIGRATE": True}
    )
    services: Services = app.extensions["bridge.services"]
    services.extras["flow_id:refund-result"] = sync_result_flow(directus_admin)
    order = make_order(directus_admin)
    waiting = stale_refund(services, order, "re_unasked", timedelta(hours=1))
    too_long = stale_refund(services, make_order(directus_admin), None, timedelta(hours=3))

    run_worker(services)
    run_worker(services)

    assert not refund_now(services, waiting).needs_review  # stale, not yet past the review limit
    flagged = refund_now(services, too_long)
    assert flagged.status == "PENDING" and flagged.needs_review
    assert "no result after 2 h PENDING" in (flagged.review_reason or "")
    alerts = jobs_of(services, too_long, "alert_admins")
    assert [a.state for a in alerts] == ["done"]  # told once, however often the worker looks
    checks = jobs_of(services, too_long, stripe_check.JOB_CHECK_PENDING)
    assert len(checks) == 1
    assert bool(directus_admin.get_item("refunds", too_long)["needs_review"])
    services.directus.close()


# -- REFUNDED webhooks checked before they are applied -------------------------------------------


def inbox_event(services: Services, re_id: str) -> InboxEvent:
    with services.store.session() as session:
        event = session.scalar(select(InboxEvent).where(InboxEvent.ridendine_refund_id == re_id))
        assert event is not None
        session.expunge(event)
        return event


def test_forged_refunded_webhook_that_stripe_says_failed_is_not_applied_and_flagged(
    bridge: Flask,
    services: Services,
    stripe_api: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=7_000)
    re_id = new_re_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=re_id)
    mock_stripe_refund(stripe_api, stripe_refund(re_id, "failed", 7_000))

    response = post_event(bridge.test_client(), event_body(re_id, order["id"], 7_000))
    assert response.status_code == 200
    # Held, not applied inline: Stripe is asked by the worker, not during the webhook.
    assert stripe_calls(stripe_api) == []
    assert refund_now(services, refund_id).status == "PENDING"
    run_worker(services)

    refund = refund_now(services, refund_id)
    assert refund.status == "PENDING"
    assert refund.needs_review
    assert "not applied" in (refund.review_reason or "") and "failed" in (
        refund.review_reason or ""
    )
    event = inbox_event(services, re_id)
    assert event.state == InboxState.FAILED
    assert "Stripe" in (event.last_error or "")
    stored = directus_admin.get_item("orders", order["id"])
    assert (stored["payment_status"], stored["status"]) == ("PAID", "DELIVERED")
    assert bool(directus_admin.get_item("refunds", refund_id)["needs_review"])
    assert len(jobs_of(services, refund_id, "alert_admins")) == 1
    assert jobs_of(services, refund_id, "notify_result") == []  # nobody told "refunded"


def test_refunded_webhook_that_stripe_confirms_is_applied(
    bridge: Flask,
    services: Services,
    stripe_api: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=8_000)
    re_id = new_re_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=re_id)
    mock_stripe_refund(stripe_api, stripe_refund(re_id, "succeeded", 8_000))

    assert (
        post_event(bridge.test_client(), event_body(re_id, order["id"], 8_000)).status_code == 200
    )
    run_worker(services)

    refund = refund_now(services, refund_id)
    assert (refund.status, refund.needs_review) == ("REFUNDED", False)
    assert refund.history[-1].source == "webhook"
    assert inbox_event(services, re_id).state == InboxState.APPLIED
    assert directus_admin.get_item("orders", order["id"])["payment_status"] == "REFUNDED"


def test_refunded_webhook_waits_while_stripe_cannot_answer(
    bridge: Flask,
    services: Services,
    stripe_api: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=1_500)
    re_id = new_re_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=re_id)
    unavailable = {"error": {"type": "api_error", "message": "try later"}}
    stripe_api.add(responses.GET, f"{STRIPE_BASE}/v1/refunds/{re_id}", json=unavailable, status=401)

    assert (
        post_event(bridge.test_client(), event_body(re_id, order["id"], 1_500)).status_code == 200
    )
    Worker(services, WorkerOptions(housekeeping=False)).drain_due()

    (verify,) = jobs_of(services, refund_id, stripe_check.JOB_VERIFY_REFUNDED)
    assert verify.state == OutboxState.PENDING and verify.attempts == 1
    assert "Stripe" in (verify.last_error or "")
    assert refund_now(services, refund_id).status == "PENDING"
    assert inbox_event(services, re_id).state == InboxState.RECEIVED
    # Stripe answers again: the held event is applied.
    stripe_api.replace(
        responses.GET,
        f"{STRIPE_BASE}/v1/refunds/{re_id}",
        json=stripe_refund(re_id, "succeeded", 1_500),
    )
    run_worker(services)
    assert refund_now(services, refund_id).status == "REFUNDED"


def test_refunded_webhook_without_a_stripe_id_is_not_applied(
    bridge: Flask,
    services: Services,
    stripe_api: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=2_500)
    refund_id = make_pending_refund(services, order)
    partner_id = "rdn-refund-" + new_re_id()[3:]

    body = event_body(partner_id, order["id"], 2_500)
    assert post_event(bridge.test_client(), body).status_code == 200
    run_worker(services)

    refund = refund_now(services, refund_id)
    assert refund.status == "PENDING" and refund.needs_review
    assert "no Stripe refund id" in (refund.review_reason or "")
    assert stripe_calls(stripe_api) == []
    assert json.loads(body)["refund_id"] == refund.ridendine_refund_id  # matched, recorded


def test_a_replayed_event_is_checked_with_stripe_again(
    bridge: Flask,
    services: Services,
    stripe_api: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    from bridge.webhooks import inbox

    order = make_order(directus_admin, amount_paid_cents=3_300)
    re_id = new_re_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=re_id)
    mock_stripe_refund(stripe_api, stripe_refund(re_id, "canceled", 3_300))
    assert (
        post_event(bridge.test_client(), event_body(re_id, order["id"], 3_300)).status_code == 200
    )
    run_worker(services)
    event = inbox_event(services, re_id)
    assert event.state == InboxState.FAILED
    # RideNDine and Stripe sorted it out; an operator replays the event.
    stripe_api.replace(
        responses.GET,
        f"{STRIPE_BASE}/v1/refunds/{re_id}",
        json=stripe_refund(re_id, "succeeded", 3_300),
    )
    inbox.replay(services, event.id)
    assert inbox_event(services, re_id).state == InboxState.RECEIVED  # held for Stripe again
    run_worker(services)
    assert inbox_event(services, re_id).state == InboxState.APPLIED
    assert refund_now(services, refund_id).status == "REFUNDED"
    assert len(jobs_of(services, refund_id, stripe_check.JOB_VERIFY_REFUNDED)) == 2
