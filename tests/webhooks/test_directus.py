"""Refund results end to end against the real Directus and the SMTP sink (issue 5's "done when"):
a signed webhook changes the order once and e-mails the customer, the chef and the admins once,
however often it arrives, in whatever order, and whether Directus is up or not."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from bridge import create_app
from bridge.config import Settings
from bridge.jobs import outbox
from bridge.services import Services
from bridge.store.models import InboxEvent, InboxState, OutboxState
from bridge.webhooks.inbox import UNMATCHED_ALERT_AFTER
from devstack.directus import DirectusServer
from devstack.smtp import ReceivedMail, SmtpSink
from directus_client import DirectusClient
from tests.support.helpers import make_order, make_settings, make_user, unique_id
from tests.support.webhook_helpers import (
    drain,
    event_body,
    inbox_count,
    jobs,
    load_refund,
    make_due,
    make_pending_refund,
    new_ridendine_id,
    post_event,
    refund_by_ridendine_id,
    sign,
    sync_result_flow,
    wait_for_jobs_done,
)

ADMINS = "admins@example.com"
# After the expected e-mails arrived, how long to wait for an unexpected extra one.
QUIET_SECONDS = 1.5


@pytest.fixture(scope="module")
def people(cooco_directus: DirectusServer, directus_admin: DirectusClient) -> dict[str, Any]:
    return {"customer": make_user(directus_admin), "chef": make_user(directus_admin)}


@pytest.fixture
def settings_for_results(directus: DirectusServer) -> Settings:
    return make_settings(
        directus.url,
        directus.admin_token,
        refund_reasons=("chef_rejected", "customer_cancel", "goodwill"),
    )


@pytest.fixture
def app(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    settings_for_results: Settings,
    database_url: str,
) -> Iterator[Flask]:
    app = create_app(
        {
            "BRIDGE_SETTINGS": settings_for_results,
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    services: Services = app.extensions["bridge.services"]
    sync_result_flow(directus_admin)  # the bridge finds its id itself (flows.sync.find_flow_id)
    yield app
    services.directus.close()


@pytest.fixture
def services(app: Flask) -> Services:
    services: Services = app.extensions["bridge.services"]
    return services


def order_with_people(
    client: DirectusClient, people: dict[str, Any], amount: int = 5000
) -> dict[str, Any]:
    return make_order(
        client,
        amount_paid_cents=amount,
        customer=people["customer"]["id"],
        chef=people["chef"]["id"],
    )


def mails_about(sink: SmtpSink, order_id: str, expected: int) -> list[ReceivedMail]:
    """The e-mails that mention the order, once `expected` arrived and no more came."""
    if expected:
        sink.wait_for(order_id, expected, timeout=30)
    time.sleep(QUIET_SECONDS)
    found = sink.matching(order_id)
    assert len(found) == expected, [(m.rcpt_to, m.subject) for m in found]
    return found


def recipients(mails: list[ReceivedMail]) -> list[tuple[str, ...]]:
    return sorted(m.rcpt_to for m in mails)


def order_now(client: DirectusClient, order_id: str) -> dict[str, Any]:
    return client.get_item("orders", order_id)


def test_refunded_updates_the_order_the_item_and_sends_three_emails(
    app: Flask,
    services: Services,
    directus_admin: DirectusClient,
    people: dict[str, Any],
    smtp_sink: SmtpSink,
) -> None:
    order = order_with_people(directus_admin, people)
    ridendine_id = new_ridendine_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=ridendine_id)

    response = post_event(app.test_client(), event_body(ridendine_id, order["id"], 5000))

    assert response.status_code == 200
    assert response.get_json() == {"status": "accepted"}
    refund = load_refund(services, refund_id)
    assert refund.status == "REFUNDED"  # applied to the ledger before the answer
    wait_for_jobs_done(services)

    current = order_now(directus_admin, order["id"])
    assert current["payment_status"] == "REFUNDED"
    assert current["status"] == "CANCELLED"
    item = directus_admin.get_item("refunds", refund_id)
    assert item["status"] == "REFUNDED"
    assert item["refunded_amount_cents"] in (5000, "5000")
    history = item["status_history"]
    # The field has no cast-json special yet, so Directus (SQLite) may hand back its text.
    history = json.loads(history) if isinstance(history, str) else history
    assert [(h["from_status"], h["to_status"]) for h in history] == [
        (None, "PENDING"),
        ("PENDING", "REFUNDED"),
    ]
    mails = mails_about(smtp_sink, order["id"], 3)
    assert recipients(mails) == sorted(
        [(people["customer"]["email"],), (people["chef"]["email"],), (ADMINS,)]
    )
    assert all("50.00 EUR" in m.subject + m.text() for m in mails)


def test_a_partial_refund_gives_partially_refunded_and_keeps_admin_edits(
    app: Flask,
    services: Services,
    directus_admin: DirectusClient,
    people: dict[str, Any],
    smtp_sink: SmtpSink,
) -> None:
    order = order_with_people(directus_admin, people, amount=10_000)
    # RideNDine's id is not known yet: matched by order and amount (the oldest PENDING one).
    first = make_pending_refund(services, order, amount_cents=4000, reason="goodwill")
    second = make_pending_refund(services, order, amount_cents=4000, reason="goodwill")
    ridendine_id = new_ridendine_id()
    post_event(app.test_client(), event_body(ridendine_id, order["id"], 4000))
    # An admin edits another field of the order meanwhile.
    directus_admin.update_item("orders", order["id"], {"currency": "CHF"})

    wait_for_jobs_done(services)

    assert load_refund(services, first).status == "REFUNDED"
    assert load_refund(services, first).ridendine_refund_id == ridendine_id
    assert load_refund(services, second).status == "PENDING"
    current = order_now(directus_admin, order["id"])
    assert current["payment_status"] == "PARTIALLY_REFUNDED"
    assert current["status"] == "DELIVERED"  # goodwill does not cancel
    assert current["currency"] == "CHF"  # the admin's edit survived
    mails_about(smtp_sink, order["id"], 3)


def test_the_same_webhook_ten_times_five_at_once_changes_once_and_mails_three(
    app: Flask,
    services: Services,
    directus_admin: DirectusClient,
    people: dict[str, Any],
    smtp_sink: SmtpSink,
) -> None:
    order = order_with_people(directus_admin, people)
    ridendine_id = new_ridendine_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=ridendine_id)
    body = event_body(ridendine_id, order["id"], 5000)
    headers = sign(body, webhook_id=f"msg_{unique_id('dup')}")
    answers: list[str] = []
    lock = threading.Lock()

    def deliver(delivery_headers: dict[str, str]) -> None:
        response = app.test_client().post(
            "/ridendine/webhooks/refund-status", data=body, headers=delivery_headers
        )
        assert response.status_code == 200
        with lock:
            answers.append(response.get_json()["status"])

    threads = [threading.Thread(target=deliver, args=(headers,)) for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    # The partner redelivers later: the same webhook-id re-signed, and new webhook-ids.
    for _ in range(3):
        deliver(sign(body, webhook_id=headers["webhook-id"]))
    for _ in range(2):
        deliver(sign(body))
    wait_for_jobs_done(services)
    for _ in range(2):  # and once more after everything was applied
        deliver(sign(body))

    assert sorted(answers) == ["accepted"] + ["duplicate"] * 11
    assert inbox_count(services) == 1
    refund = load_refund(services, refund_id)
    assert [change.to_status for change in refund.history] == ["PENDING", "REFUNDED"]
    assert len(jobs(services, "notify_result")) == 1
    assert len(jobs(services, "apply_order")) == 1
    mails_about(smtp_sink, order["id"], 3)


def test_failed_then_refunded(
    app: Flask,
    services: Services,
    directus_admin: DirectusClient,
    people: dict[str, Any],
    smtp_sink: SmtpSink,
) -> None:
    order = order_with_people(directus_admin, people)
    ridendine_id = new_ridendine_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=ridendine_id)
    client = app.test_client()

    post_event(
        client,
        event_body(ridendine_id, order["id"], 5000, "FAILED", failure_reason="card expired"),
    )
    wait_for_jobs_done(services)
    refund = load_refund(services, refund_id)
    assert refund.status == "FAILED" and refund.failure_reason == "card expired"
    assert not refund.needs_review
    current = order_now(directus_admin, order["id"])
    assert (current["payment_status"], current["status"]) == ("PAID", "DELIVERED")
    failed_mails = mails_about(smtp_sink, order["id"], 3)
    customer_mail = next(m for m in failed_mails if people["customer"]["email"] in m.rcpt_to)
    assert "did not go through" in customer_mail.subject + customer_mail.text()

    post_event(client, event_body(ridendine_id, order["id"], 5000, "REFUNDED"))
    wait_for_jobs_done(services)
    refund = load_refund(services, refund_id)
    assert refund.status == "REFUNDED"
    assert refund.needs_review and refund.review_reason == "refunded after it had failed"
    current = order_now(directus_admin, order["id"])
    assert (current["payment_status"], current["status"]) == ("REFUNDED", "CANCELLED")
    assert directus_admin.get_item("refunds", refund_id)["needs_review"] in (True, 1)
    # Three for FAILED, three for REFUNDED, one alert to the admins about the review.
    mails = mails_about(smtp_sink, order["id"], 7)
    assert sum(1 for m in mails if m.rcpt_to == (ADMINS,)) == 3


def test_refunded_then_failed(
    app: Flask,
    services: Services,
    directus_admin: DirectusClient,
    people: dict[str, Any],
    smtp_sink: SmtpSink,
) -> None:
    order = order_with_people(directus_admin, people)
    ridendine_id = new_ridendine_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=ridendine_id)
    client = app.test_client()
    post_event(client, event_body(ridendine_id, order["id"], 5000, "REFUNDED"))
    wait_for_jobs_done(services)
    mails_about(smtp_sink, order["id"], 3)
    # An admin sets the order back by hand: the late FAILED must not touch it.
    directus_admin.update_item("orders", order["id"], {"status": "DELIVERED"})

    response = post_event(client, event_body(ridendine_id, order["id"], 5000, "FAILED"))
    assert response.get_json() == {"status": "accepted"}
    wait_for_jobs_done(services)

    refund = load_refund(services, refund_id)
    assert refund.status == "REFUNDED"
    assert refund.needs_review
    assert "FAILED after" in (refund.review_reason or "")
    current = order_now(directus_admin, order["id"])
    assert (current["payment_status"], current["status"]) == ("REFUNDED", "DELIVERED")
    item = directus_admin.get_item("refunds", refund_id)
    assert item["status"] == "REFUNDED" and item["needs_review"] in (True, 1)
    mails = mails_about(smtp_sink, order["id"], 4)  # + one alert, no customer e-mail
    alert = [m for m in mails if m.rcpt_to == (ADMINS,) and "needs review" in m.subject]
    assert len(alert) == 1
    assert len(jobs(services, "apply_order")) == 1


def test_failed_for_a_refund_never_seen_is_recorded_flagged_and_reported(
    app: Flask,
    services: Services,
    directus_admin: DirectusClient,
    people: dict[str, Any],
    smtp_sink: SmtpSink,
) -> None:
    order = order_with_people(directus_admin, people)
    ridendine_id = new_ridendine_id()
    response = post_event(
        app.test_client(),
        event_body(
            ridendine_id, order["id"], 1234, "FAILED", reason="customer_cancel", currency_code="chf"
        ),
    )
    assert response.status_code == 200
    assert refund_by_ridendine_id(services, ridendine_id) is None  # Directus is asked later
    wait_for_jobs_done(services)

    refund = refund_by_ridendine_id(services, ridendine_id)
    assert refund is not None
    assert refund.source == "ridendine"
    assert refund.status == "FAILED"
    assert refund.amount_cents == 1234
    assert (refund.currency, refund.reason) == ("CHF", "customer_cancel")
    assert refund.ridendine_order_id == order["ridendine_order_id"]
    assert refund.needs_review and "outside COOCO" in (refund.review_reason or "")
    current = order_now(directus_admin, order["id"])
    assert (current["payment_status"], current["status"]) == ("PAID", "DELIVERED")
    assert directus_admin.get_item("refunds", refund.id)["source"] == "ridendine"
    mails = mails_about(smtp_sink, order["id"], 4)  # the result to three, plus the alert
    assert sum(1 for m in mails if m.rcpt_to == (ADMINS,)) == 2


def test_refunded_for_a_refund_never_seen_updates_the_order(
    app: Flask,
    services: Services,
    directus_admin: DirectusClient,
    people: dict[str, Any],
    smtp_sink: SmtpSink,
) -> None:
    order = order_with_people(directus_admin, people)
    ridendine_id = new_ridendine_id()
    post_event(app.test_client(), event_body(ridendine_id, order["id"], 5000, "REFUNDED"))
    wait_for_jobs_done(services)
    refund = refund_by_ridendine_id(services, ridendine_id)
    assert refund is not None and refund.source == "ridendine" and refund.needs_review
    assert refund.reason == "unspecified"
    assert refund.currency == "EUR"  # the order's
    current = order_now(directus_admin, order["id"])
    assert current["payment_status"] == "REFUNDED"
    assert current["status"] == "DELIVERED"  # no reason given: nothing says it cancels
    mails_about(smtp_sink, order["id"], 4)


def test_an_unknown_order_stays_unmatched_is_retried_and_reported(
    app: Flask, services: Services, smtp_sink: SmtpSink
) -> None:
    order_id = unique_id("ghost")
    response = post_event(app.test_client(), event_body(new_ridendine_id(), order_id, 700))
    assert response.status_code == 200
    for _ in range(UNMATCHED_ALERT_AFTER):
        make_due(services)
        drain(services)
    with services.store.session() as session:
        event = session.scalar(select(InboxEvent))
        assert event is not None
        assert event.state == InboxState.UNMATCHED
        assert event.attempts == UNMATCHED_ALERT_AFTER + 1  # process + resolves
        assert order_id in (event.last_error or "")
        assert event.next_attempt_at is not None
    resolve = jobs(services, "resolve_event")
    assert len(resolve) == 1 and resolve[0].state == OutboxState.PENDING
    alerts = mails_about(smtp_sink, order_id, 1)
    assert alerts[0].rcpt_to == (ADMINS,)
    assert "inbox replay" in alerts[0].text()


def test_an_order_missing_in_directus_flags_the_refund_and_alerts(
    app: Flask, services: Services, smtp_sink: SmtpSink
) -> None:
    order = {
        "id": unique_id("gone"),
        "ridendine_order_id": "rdn-gone",
        "amount_paid_cents": 5000,
        "currency": "EUR",
    }
    ridendine_id = new_ridendine_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=ridendine_id)
    post_event(app.test_client(), event_body(ridendine_id, order["id"], 5000))
    # One worker pass (the refunds item cannot be written either: Directus refuses an item
    # related to a missing order, so that job stays in its backoff).
    drain(services)
    [apply_order] = jobs(services, "apply_order")
    assert apply_order.state == OutboxState.DEAD
    assert apply_order.attempts == 1  # gave up at once: retrying cannot bring the order back
    refund = load_refund(services, refund_id)
    assert refund.needs_review
    assert "could not be updated in Directus" in (refund.review_reason or "")
    # The admins hear of it (and of the result itself: the notification goes to them too).
    smtp_sink.wait_for("could not be updated in Directus", 1, timeout=30)
    mails = smtp_sink.matching(order["id"])
    assert mails and all(m.rcpt_to == (ADMINS,) for m in mails)


@pytest.mark.slow
def test_directus_down_fifty_webhooks_accepted_then_applied_once(
    app: Flask,
    services: Services,
    directus: DirectusServer,
    directus_admin: DirectusClient,
    people: dict[str, Any],
    smtp_sink: SmtpSink,
) -> None:
    orders = [order_with_people(directus_admin, people) for _ in range(50)]
    events = []
    for order in orders:
        ridendine_id = new_ridendine_id()
        refund_id = make_pending_refund(services, order, ridendine_refund_id=ridendine_id)
        events.append((order, refund_id, event_body(ridendine_id, order["id"], 5000)))
    client = app.test_client()
    directus.stop()
    try:
        started = time.monotonic()
        for _order, _refund_id, body in events:
            response = post_event(client, body)
            assert response.status_code == 200, response.get_data(as_text=True)
            assert response.get_json() == {"status": "accepted"}
        elapsed = time.monotonic() - started
        assert elapsed < 20, f"50 webhooks took {elapsed:.1f}s: the answer waited for Directus"
        # A worker tick while Directus is down: the job is kept and retried, nothing lost.
        assert outbox.drain(services, limit=1) == 1
        assert any(j.last_error for j in jobs(services) if j.state == OutboxState.PENDING)
    finally:
        directus.start()
    wait_for_jobs_done(services, timeout=240)

    for order, refund_id, _body in events:
        assert load_refund(services, refund_id).status == "REFUNDED"
        current = order_now(directus_admin, order["id"])
        assert (current["payment_status"], current["status"]) == ("REFUNDED", "CANCELLED")
    order_ids = [order["id"] for order, _r, _b in events]
    counter = MailCounter(smtp_sink, order_ids)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and min(counter.counts().values()) < 3:
        time.sleep(0.2)
    time.sleep(QUIET_SECONDS)
    counts = counter.counts()
    assert set(counts.values()) == {3}, counts


class MailCounter:
    """E-mails per order id, reading each message of the (session-wide) sink once."""

    def __init__(self, sink: SmtpSink, order_ids: list[str]) -> None:
        self.sink = sink
        self.seen = 0
        self.found = dict.fromkeys(order_ids, 0)

    def counts(self) -> dict[str, int]:
        messages = self.sink.messages
        for message in messages[self.seen :]:
            text = message.subject + message.text()
            for order_id in self.found:
                if order_id in text:
                    self.found[order_id] += 1
        self.seen = len(messages)
        return dict(self.found)
