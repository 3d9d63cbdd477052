"""The inbox's matching and its crash safety, on the real store (no Directus: its URL leads
nowhere, which also proves the webhook's answer never waits for it)."""

from __future__ import annotations

import sqlite3
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import update

from bridge import create_app
from bridge.jobs import outbox
from bridge.services import Services
from bridge.store import db
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


def record(services: Services, webhook_id: str, body: bytes) -> inbox.Recorded:
    """A delivery recorded as the webhook's view records it (verified and parsed)."""
    return inbox.record(
        services, webhook_id=webhook_id, payload=parse_event(body), raw_body=body, headers={}
    )


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
    recorded = record(services, "msg_crash", body)
    assert not recorded.duplicate and recorded.job_id is not None
    # The web process dies right after the commit: the event and its job are in the store,
    # nothing applied yet; the worker applies it.
    assert load_refund(services, refund_id).status == "PENDING"
    [job] = jobs(services, "process_event")
    assert job.state == OutboxState.PENDING and job.locked_by is None
    assert drain_inbox(services) == 1
    assert load_refund(services, refund_id).status == "REFUNDED"
    assert the_event(services).state == InboxState.APPLIED


def test_a_recorded_delivery_is_checkpointed_by_the_thread_that_recorded_it(
    settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The inbox's group writer runs the store's paced WAL checkpoint after the group (only a
    # checkpoint writes to the SQLite file itself in WAL mode; docs/performance.md).
    monkeypatch.setattr(db, "SQLITE_CHECKPOINT_INTERVAL_SECONDS", 0.0)
    path = tmp_path / "checkpointed.sqlite3"
    app = create_app(
        {"BRIDGE_SETTINGS": settings, "DATABASE_URL": f"sqlite:///{path}", "AUTO_MIGRATE": True}
    )
    services: Services = app.extensions["bridge.services"]
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    before = path.read_bytes()
    body = event_body(new_ridendine_id(), an_order()["id"], 5000)
    recorded = record(services, "msg_checkpointed", body)
    assert not recorded.duplicate
    assert path.read_bytes() != before
    services.store.dispose()


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
    recorded = record(services, "msg_dead", body)
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


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store_services(request: pytest.FixtureRequest) -> Services:
    """An app on SQLite and on PostgreSQL in turn."""
    url = request.getfixturevalue("database_url" if request.param == "sqlite" else "postgres_url")
    app = create_app(
        {
            "BRIDGE_SETTINGS": make_settings("http://127.0.0.1:9", "unused"),
            "DATABASE_URL": url,
            "AUTO_MIGRATE": True,
        }
    )
    services: Services = app.extensions["bridge.services"]
    request.addfinalizer(services.store.dispose)
    return services


def test_a_recorded_delivery_reads_back_through_the_orm_as_it_was_given(
    any_store_services: Services,
) -> None:
    """The inbox writes its rows with the driver, not the ORM (docs/performance.md): they must
    read back exactly as the ORM's own would, on either store."""
    services = any_store_services
    order = an_order()
    body = event_body(new_ridendine_id(), order["id"], 5000)
    payload = parse_event(body)
    headers = {"webhook-id": "msg_rows", "user-agent": "RideNDine/1 ünïcode"}
    before = utcnow()
    [recorded] = inbox.write_deliveries(
        services.store, [inbox.Delivery("msg_rows", payload, body, headers)]
    )
    after = utcnow()
    assert isinstance(recorded, inbox.Recorded) and not recorded.duplicate
    with services.store.read_session() as session:
        event = session.get(InboxEvent, recorded.event_id)
        job = session.get(OutboxJob, recorded.job_id)
        assert event is not None and job is not None
        session.expunge_all()
    assert event.webhook_id == "msg_rows"
    assert event.dedupe_key == inbox.dedupe_key(payload)
    assert (event.ridendine_refund_id, event.external_order_id) == (
        payload["refund_id"],
        order["id"],
    )
    assert (event.amount_cents, event.status) == (5000, "REFUNDED")
    assert event.payload == payload and event.headers == headers
    assert event.raw_body == body
    assert (event.state, event.attempts, event.refund_id) == (InboxState.RECEIVED, 0, None)
    assert event.next_attempt_at is None and event.last_error is None
    assert event.processed_at is None
    assert before <= event.received_at <= after
    assert event.received_at.tzinfo is not None
    assert (job.kind, job.dedupe_key, job.payload) == (
        inbox.JOB_PROCESS_EVENT,
        f"event:{event.id}",
        {"event_id": event.id},
    )
    assert (job.state, job.attempts, job.refund_id) == (OutboxState.PENDING, 0, None)
    assert job.locked_by is None and job.locked_until is None and job.done_at is None
    assert job.next_attempt_at == job.created_at == job.updated_at == event.received_at
    # And the worker takes it like any other job.
    assert outbox.claim(services, owner="me", kinds=(inbox.JOB_PROCESS_EVENT,)) == [job.id]


def test_sqlite_timestamps_are_stored_as_sqlalchemy_stores_them(services: Services) -> None:
    """Ordering and comparisons in SQL (due jobs, housekeeping) compare the stored text."""
    body = event_body(new_ridendine_id(), an_order()["id"], 5000)
    [recorded] = inbox.write_deliveries(
        services.store, [inbox.Delivery("msg_text", parse_event(body), body, {})]
    )
    with services.store.session() as session:
        job = session.get(OutboxJob, recorded.job_id)  # type: ignore[union-attr]
        assert job is not None
        job.locked_until = job.created_at  # written by the ORM
    with services.store.engine.connect() as connection:
        by_driver, by_orm = connection.exec_driver_sql(
            "SELECT created_at, locked_until FROM outbox_jobs WHERE id = ?",
            (recorded.job_id,),  # type: ignore[union-attr]
        ).one()
    assert by_driver == by_orm


def test_the_inbox_writes_again_after_its_postgresql_connection_was_cut(
    postgres_url: str,
) -> None:
    app = create_app(
        {
            "BRIDGE_SETTINGS": make_settings("http://127.0.0.1:9", "unused"),
            "DATABASE_URL": postgres_url,
            "AUTO_MIGRATE": True,
        }
    )
    services: Services = app.extensions["bridge.services"]
    client = app.test_client()
    order = an_order()
    first = event_body(new_ridendine_id(), order["id"], 5000)
    assert post_event(client, first).status_code == 200
    # A server restart or an idle timeout ends the inbox's own connection.
    with services.store.engine.begin() as connection:
        cut = connection.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).all()
    assert cut, "the inbox's connection was not found"
    services.store.engine.dispose()  # the pool's connections were cut too (not what is tested)
    second = event_body(new_ridendine_id(), order["id"], 1000)
    response = client.post(WEBHOOK_URL, data=second, headers=sign(second))
    assert response.status_code == 200 and response.get_json() == {"status": "accepted"}
    assert inbox_count(services) == 2
    services.store.dispose()
