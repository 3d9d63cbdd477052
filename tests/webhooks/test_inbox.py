"""The inbox's matching and its crash safety, on the real store (no Directus: its URL leads
nowhere, which also proves the webhook's answer never waits for it)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update

from bridge import create_app
from bridge.jobs import outbox
from bridge.services import Services
from bridge.store.models import InboxEvent, InboxState, OutboxJob, OutboxState, Refund, utcnow
from bridge.webhooks import inbox
from bridge.webhooks.schemas import parse_event
from tests.support.helpers import make_settings, unique_id
from tests.support.webhook_helpers import (
    WEBHOOK_URL,
    drain_inbox,
    event_body,
    inbox_count,
    jobs,
    load_refund,
    make_due,
    make_pending_refund,
    new_ridendine_id,
    post_event,
    sign,
)


@pytest.fixture
def services(app: Flask) -> Services:
    services: Services = app.extensions["bridge.services"]
    return services


def an_order(amount: int = 5000) -> dict[str, Any]:
    order_id = unique_id("ord")
    return {
        "id": order_id,
        "ridendine_order_id": f"rdn-{order_id}",
        "amount_paid_cents": amount,
        "currency": "EUR",
    }


def the_event(services: Services, event_id: int = 1) -> InboxEvent:
    with services.store.session() as session:
        event = session.get(InboxEvent, event_id)
        assert event is not None
        session.expunge(event)
        return event


def test_without_a_known_id_the_oldest_pending_refund_of_that_amount_matches(
    app: Flask, services: Services
) -> None:
    order = an_order(10_000)
    older = make_pending_refund(
        services, order, amount_cents=3000, created_at=utcnow() - timedelta(minutes=5)
    )
    other_amount = make_pending_refund(services, order, amount_cents=2000)
    newer = make_pending_refund(services, order, amount_cents=3000)
    ridendine_id = new_ridendine_id()
    post_event(app.test_client(), event_body(ridendine_id, order["id"], 3000))

    matched = load_refund(services, older)
    assert matched.status == "REFUNDED"
    assert matched.ridendine_refund_id == ridendine_id
    assert load_refund(services, newer).status == "PENDING"
    assert load_refund(services, other_amount).status == "PENDING"
    event = the_event(services)
    assert event.state == InboxState.APPLIED and event.refund_id == older


def test_a_known_id_wins_over_the_amount(app: Flask, services: Services) -> None:
    order = an_order()
    ridendine_id = new_ridendine_id()
    by_id = make_pending_refund(
        services, order, amount_cents=5000, ridendine_refund_id=ridendine_id
    )
    same_amount = make_pending_refund(services, order, amount_cents=4000)
    post_event(app.test_client(), event_body(ridendine_id, order["id"], 4000))
    refund = load_refund(services, by_id)
    assert refund.status == "REFUNDED" and refund.refunded_amount_cents == 4000
    assert refund.needs_review  # the amount differs from the request
    assert load_refund(services, same_amount).status == "PENDING"


def test_no_refund_of_ours_is_left_to_the_worker_without_asking_directus(
    app: Flask, services: Services
) -> None:
    started = time.monotonic()
    response = post_event(
        app.test_client(), event_body(new_ridendine_id(), unique_id("ord"), 100, "FAILED")
    )
    elapsed = time.monotonic() - started
    assert response.get_json() == {"status": "accepted"}
    assert elapsed < 1.0, elapsed
    [resolve] = jobs(services, "resolve_event")
    assert resolve.state == OutboxState.PENDING and resolve.attempts == 0
    event = the_event(services)
    assert event.state == InboxState.RECEIVED
    assert "checked in Directus" in (event.last_error or "")


def test_an_id_of_another_order_is_not_applied(app: Flask, services: Services) -> None:
    order = an_order()
    ridendine_id = new_ridendine_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=ridendine_id)
    post_event(app.test_client(), event_body(ridendine_id, unique_id("other"), 5000))
    assert load_refund(services, refund_id).status == "PENDING"
    event = the_event(services)
    assert event.state == InboxState.FAILED
    assert order["id"] in (event.last_error or "")
    assert [job.kind for job in jobs(services, "alert_admins")] == ["alert_admins"]


def test_another_currency_is_flagged(app: Flask, services: Services) -> None:
    order = an_order()
    ridendine_id = new_ridendine_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=ridendine_id)
    post_event(app.test_client(), event_body(ridendine_id, order["id"], 5000, currency_code="usd"))
    refund = load_refund(services, refund_id)
    assert refund.status == "REFUNDED"
    assert refund.needs_review and "'usd'" in (refund.review_reason or "")


def test_a_result_before_the_submission_s_answer_waits_for_the_id(
    app: Flask, services: Services
) -> None:
    order = an_order()
    # Requested 5000; RideNDine's answer (with its refund id) has not been recorded yet, and
    # the result reports another amount, so neither the id nor the amount matches.
    refund_id = make_pending_refund(services, order, amount_cents=5000)
    ridendine_id = new_ridendine_id()
    post_event(app.test_client(), event_body(ridendine_id, order["id"], 4900))
    drain_inbox(services)
    [resolve] = jobs(services, "resolve_event")
    assert resolve.state == OutboxState.PENDING
    assert "waiting for the RideNDine refund id" in (resolve.last_error or "")
    # The submission's answer arrives and records RideNDine's id.
    with services.store.session() as session:
        session.execute(
            update(Refund).where(Refund.id == refund_id).values(ridendine_refund_id=ridendine_id)
        )
    make_due(services)
    drain_inbox(services)
    refund = load_refund(services, refund_id)
    assert refund.status == "REFUNDED"
    assert refund.refunded_amount_cents == 4900 and refund.needs_review
    assert the_event(services).state == InboxState.APPLIED


def test_a_crash_after_recording_loses_nothing(services: Services) -> None:
    order = an_order()
    ridendine_id = new_ridendine_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=ridendine_id)
    body = event_body(ridendine_id, order["id"], 5000)
    recorded = inbox.record(
        services,
        webhook_id="msg_crash",
        payload=parse_event(body),
        raw_body=body,
        headers={},
    )
    assert not recorded.duplicate and recorded.job_id is not None
    # The web process dies right after the commit: the event and its job are in the store,
    # nothing applied yet; the worker applies it.
    assert load_refund(services, refund_id).status == "PENDING"
    [job] = jobs(services, "process_event")
    assert job.state == OutboxState.PENDING and job.locked_by is None
    assert drain_inbox(services) == 1
    assert load_refund(services, refund_id).status == "REFUNDED"
    assert the_event(services).state == InboxState.APPLIED


def test_a_group_of_deliveries_is_recorded_in_one_transaction_with_duplicates_told(
    services: Services,
) -> None:
    order = an_order()
    ridendine_id = new_ridendine_id()
    body = event_body(ridendine_id, order["id"], 5000)
    other = event_body(new_ridendine_id(), order["id"], 1000, "FAILED")
    payload, other_payload = parse_event(body), parse_event(other)
    first = inbox.Delivery("msg_group_1", payload, body, {})
    outcomes = inbox.write_deliveries(
        services.store,
        [
            first,
            inbox.Delivery("msg_group_1", payload, body, {}),  # the same delivery again
            inbox.Delivery("msg_group_2", payload, body, {}),  # the same result, new id
            inbox.Delivery("msg_group_3", other_payload, other, {}),
        ],
    )
    assert [getattr(o, "duplicate", None) for o in outcomes] == [False, True, True, False]
    # Against what is stored already: duplicates too, and nothing new written.
    again = inbox.write_deliveries(services.store, [first])
    assert [getattr(o, "duplicate", None) for o in again] == [True]
    assert inbox_count(services) == 2
    assert [job.payload["event_id"] for job in jobs(services, "process_event")] == [
        outcomes[0].event_id,  # type: ignore[union-attr]
        outcomes[3].event_id,  # type: ignore[union-attr]
    ]


def test_with_a_stripe_key_a_refunded_result_waits_for_stripe(database_url: str) -> None:
    settings = make_settings("http://127.0.0.1:9", "unused", stripe_api_key="rk_test_unused")
    app = create_app(
        {"BRIDGE_SETTINGS": settings, "DATABASE_URL": database_url, "AUTO_MIGRATE": True}
    )
    services: Services = app.extensions["bridge.services"]
    order = an_order()
    ridendine_id = new_ridendine_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=ridendine_id)
    post_event(app.test_client(), event_body(ridendine_id, order["id"], 5000))
    assert load_refund(services, refund_id).status == "PENDING"
    assert the_event(services).state == InboxState.RECEIVED
    assert [job.kind for job in jobs(services, "verify_refunded")] == ["verify_refunded"]


def test_processing_that_keeps_failing_ends_failed_and_alerts(
    services: Services, monkeypatch: pytest.MonkeyPatch
) -> None:
    order = an_order()
    body = event_body(new_ridendine_id(), order["id"], 5000)
    recorded = inbox.record(
        services,
        webhook_id="msg_dead",
        payload=parse_event(body),
        raw_body=body,
        headers={},
    )
    assert outbox.claim(services, owner="me", kinds=("process_event",)) == [recorded.job_id]

    def broken(*_args: Any) -> None:
        raise RuntimeError("the ledger is broken")

    monkeypatch.setattr(inbox, "match_local", broken)
    with services.store.session() as session:
        job = session.get(OutboxJob, recorded.job_id)
        assert job is not None
        job.attempts = outbox.MAX_ATTEMPTS - 1  # the last try of its schedule
    assert outbox.run_job(services, recorded.job_id or 0, owner="me") == OutboxState.DEAD
    event = the_event(services)
    assert event.state == InboxState.FAILED
    assert "the ledger is broken" in (event.last_error or "")
    [alert] = jobs(services, "alert_admins")
    assert "inbox replay" in alert.payload["message"]


def test_concurrent_duplicates_on_postgresql_are_recorded_once(postgres_url: str) -> None:
    app = create_app(
        {
            "BRIDGE_SETTINGS": make_settings("http://127.0.0.1:9", "unused"),
            "DATABASE_URL": postgres_url,
            "AUTO_MIGRATE": True,
        }
    )
    services: Services = app.extensions["bridge.services"]
    order = an_order()
    ridendine_id = new_ridendine_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=ridendine_id)
    body = event_body(ridendine_id, order["id"], 5000)
    answers: list[str] = []
    barrier = threading.Barrier(10)

    def deliver(index: int) -> None:
        # Half re-send the same delivery, half are new deliveries of the same result.
        headers = sign(body, webhook_id="msg_pg_same" if index % 2 else f"msg_pg_{index}")
        barrier.wait(timeout=10)
        response = app.test_client().post(WEBHOOK_URL, data=body, headers=headers)
        answers.append(f"{response.status_code} {response.get_json()['status']}")

    threads = [threading.Thread(target=deliver, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(answers) == ["200 accepted"] + ["200 duplicate"] * 9
    drain_inbox(services)
    refund = load_refund(services, refund_id)
    assert [change.to_status for change in refund.history] == ["PENDING", "REFUNDED"]
    assert len(jobs(services, "notify_result")) == 1
    services.store.dispose()
