"""The worker's batches against the real Directus and the SMTP sink (bridge/directus/batch.py):
a webhook is applied to the ledger while it is answered; a claimed batch of results costs one
read of the orders, one batch write per collection and one Flow call per result; one bad item
does not hold up the others; while Directus does not answer, its jobs wait and run as soon as
it answers again, without waiting out their backoff; a new refund's item is one request."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select

from bridge import create_app, worker
from bridge.directus import batch
from bridge.directus.projection import upsert_refund_item
from bridge.ledger import ledger
from bridge.services import Services
from bridge.store.models import InboxEvent, InboxState, OutboxJob, OutboxState, Refund, RefundStatus
from bridge.worker import Worker, WorkerOptions
from devstack.directus import DirectusServer
from devstack.smtp import SmtpSink
from directus_client import DirectusClient
from tests.support.helpers import count_requests, make_order, make_settings, make_user, unique_id
from tests.support.webhook_helpers import (
    event_body,
    jobs,
    load_refund,
    make_pending_refund,
    new_ridendine_id,
    post_event,
    sync_result_flow,
)

ADMINS = "admins@example.com"


@pytest.fixture(scope="module")
def people(cooco_directus: DirectusServer, directus_admin: DirectusClient) -> dict[str, Any]:
    return {"customer": make_user(directus_admin), "chef": make_user(directus_admin)}


@pytest.fixture
def app(
    cooco_directus: DirectusServer, directus_admin: DirectusClient, database_url: str
) -> Iterator[Flask]:
    settings = make_settings(cooco_directus.url, cooco_directus.admin_token)
    app = create_app(
        {"BRIDGE_SETTINGS": settings, "DATABASE_URL": database_url, "AUTO_MIGRATE": True}
    )
    sync_result_flow(directus_admin)
    yield app
    app.extensions["bridge.services"].directus.close()


@pytest.fixture
def services(app: Flask) -> Services:
    services: Services = app.extensions["bridge.services"]
    return services


def an_order(admin: DirectusClient, people: dict[str, Any], amount: int = 5000) -> dict[str, Any]:
    return make_order(
        admin,
        amount_paid_cents=amount,
        customer=people["customer"]["id"],
        chef=people["chef"]["id"],
    )


def test_a_batch_of_results_costs_one_write_per_collection(
    app: Flask,
    services: Services,
    directus_admin: DirectusClient,
    people: dict[str, Any],
    smtp_sink: SmtpSink,
) -> None:
    client = app.test_client()
    whole = [an_order(directus_admin, people) for _ in range(4)]
    halved = an_order(directus_admin, people, amount=6000)
    results = [(order, 5000) for order in whole] + [(halved, 3000), (halved, 3000)]
    for order, amount in results:
        ridendine_id = new_ridendine_id()
        make_pending_refund(services, order, amount_cents=amount, ridendine_refund_id=ridendine_id)
        answer = post_event(client, event_body(ridendine_id, order["id"], amount))
        assert answer.status_code == 200 and answer.json == {"status": "accepted"}

    # Recorded when answered, then applied to the ledger by the worker's process_event jobs
    # (post_event runs them as the worker does), each done once.
    with services.store.session() as session:
        states = session.scalars(select(InboxEvent.state)).all()
    assert states == [InboxState.APPLIED] * 6
    processing = jobs(services, "process_event")
    assert [(j.state, j.attempts, j.locked_by) for j in processing] == [("done", 1, None)] * 6

    counted = count_requests(services.directus)
    ran = Worker(services, WorkerOptions()).drain_due()
    assert ran == 18  # apply_order, project_refund and notify_result of each result

    assert counted.pop("GET /flows", 0) <= 1  # the Flow's id, looked up once per process
    # The ledger knows what each order's customer paid: no order is read first; the batch
    # update answers with what the e-mails show.
    assert counted == {
        "PATCH /items/orders": 1,
        "PATCH /items/refunds": 1,
        "POST /items/refunds": 1,  # the items the ledger's refunds did not have yet
        "POST /flows/trigger": 6,
    }
    for order in [*whole, halved]:
        stored = directus_admin.get_item("orders", order["id"])
        assert (stored["payment_status"], stored["status"]) == ("REFUNDED", "CANCELLED")
    items = directus_admin.query_items(
        "refunds", filter={"order_id": {"_eq": halved["id"]}}, fields=["status"]
    )
    assert [item["status"] for item in items] == ["REFUNDED", "REFUNDED"]
    assert all(j.state == OutboxState.DONE for j in jobs(services))
    # Each result told once to each of its three addresses; the e-mail shows the order as
    # the batch left it.
    mails = smtp_sink.wait_for(whole[0]["id"], 3)
    assert sorted(m.rcpt_to[0] for m in mails) == sorted(
        [people["customer"]["email"], people["chef"]["email"], ADMINS]
    )
    (admin_mail,) = [m for m in mails if m.rcpt_to == (ADMINS,)]
    assert "payment REFUNDED" in admin_mail.text()
    assert len(smtp_sink.wait_for(halved["id"], 6)) == 6


def test_a_lone_result_costs_three_directus_requests(
    app: Flask,
    services: Services,
    directus_admin: DirectusClient,
    people: dict[str, Any],
    smtp_sink: SmtpSink,
) -> None:
    order = an_order(directus_admin, people, amount=8000)
    ridendine_id = new_ridendine_id()
    refund_id = make_pending_refund(
        services, order, amount_cents=2000, ridendine_refund_id=ridendine_id
    )
    # Its item exists, as the request that recorded it left it.
    upsert_refund_item(services, load_refund(services, refund_id), create_first=True)
    post_event(app.test_client(), event_body(ridendine_id, order["id"], 2000))

    counted = count_requests(services.directus)
    assert Worker(services, WorkerOptions()).drain_due() == 3
    counted.pop("GET /flows", 0)  # the Flow's id, looked up once per process
    # The order's paid amount is the ledger's (kept from the request): it is not read; its
    # update answers with what the e-mail shows.
    assert counted == {
        "PATCH /items/orders": 1,
        "PATCH /items/refunds": 1,
        "POST /flows/trigger": 1,
    }
    stored = directus_admin.get_item("orders", order["id"])
    assert (stored["payment_status"], stored["status"]) == ("PARTIALLY_REFUNDED", "CANCELLED")
    mails = smtp_sink.wait_for(order["id"], 3)
    (admin_mail,) = [m for m in mails if m.rcpt_to == (ADMINS,)]
    assert "payment PARTIALLY_REFUNDED" in admin_mail.text()
    assert people["customer"]["email"] in {m.rcpt_to[0] for m in mails}


def test_flow_calls_are_made_side_by_side_and_each_recorded_as_it_answers(
    app: Flask,
    services: Services,
    directus_admin: DirectusClient,
    people: dict[str, Any],
    smtp_sink: SmtpSink,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert services.settings.worker_flow_calls == 4  # the default
    client = app.test_client()
    orders = [an_order(directus_admin, people) for _ in range(6)]
    for order in orders:
        ridendine_id = new_ridendine_id()
        make_pending_refund(services, order, ridendine_refund_id=ridendine_id)
        assert post_event(client, event_body(ridendine_id, order["id"], 5000)).status_code == 200
    in_flight = 0
    most_in_flight = 0
    done_when_called: list[int] = []
    lock = threading.Lock()
    real_trigger = batch.trigger_flow

    def watched_trigger(services_: Services, body: dict[str, Any]) -> None:
        nonlocal in_flight, most_in_flight
        with services.store.session() as session:
            done_when_called.append(
                len(
                    session.scalars(
                        select(OutboxJob.id).where(
                            OutboxJob.kind == "notify_result", OutboxJob.state == "done"
                        )
                    ).all()
                )
            )
        with lock:
            in_flight += 1
            most_in_flight = max(most_in_flight, in_flight)
        try:
            time.sleep(0.3)  # long enough for the calls to overlap
            real_trigger(services_, body)
        finally:
            with lock:
                in_flight -= 1

    monkeypatch.setattr(batch, "trigger_flow", watched_trigger)
    Worker(services, WorkerOptions()).drain_due()

    assert 2 <= most_in_flight <= 4
    # The calls after the first four started when one had answered, and that one was already
    # recorded done: a worker killed then would not repeat it.
    assert sorted(done_when_called)[-1] >= 1
    assert all(j.state == OutboxState.DONE for j in jobs(services, "notify_result"))
    for order in orders:
        assert len(smtp_sink.wait_for(order["id"], 3)) == 3


def test_one_bad_item_does_not_hold_up_the_others(
    app: Flask, services: Services, directus_admin: DirectusClient, people: dict[str, Any]
) -> None:
    client = app.test_client()
    good = an_order(directus_admin, people)
    # An order the ledger knows but Directus does not (deleted there meanwhile).
    gone = {"id": unique_id("gone"), "ridendine_order_id": "rdn-gone", "amount_paid_cents": 5000}
    refunds = {}
    for order in (good, gone):
        ridendine_id = new_ridendine_id()
        refunds[order["id"]] = make_pending_refund(
            services, order, ridendine_refund_id=ridendine_id
        )
        assert post_event(client, event_body(ridendine_id, order["id"], 5000)).status_code == 200

    Worker(services, WorkerOptions()).drain_due()

    stored = directus_admin.get_item("orders", good["id"])
    assert (stored["payment_status"], stored["status"]) == ("REFUNDED", "CANCELLED")
    assert directus_admin.get_item("refunds", refunds[good["id"]])["status"] == "REFUNDED"
    for job in jobs(services):
        if job.refund_id == refunds[good["id"]]:
            assert job.state == OutboxState.DONE, (job.kind, job.last_error)
    dead = {j.kind: j.last_error for j in jobs(services) if j.state == OutboxState.DEAD}
    assert set(dead) == {"apply_order", "project_refund"}
    assert "not in Directus" in (dead["apply_order"] or "")
    flagged = load_refund(services, refunds[gone["id"]])
    assert flagged.status == RefundStatus.REFUNDED and flagged.needs_review


def test_while_directus_is_down_its_jobs_wait_then_run_as_soon_as_it_answers(
    app: Flask,
    services: Services,
    directus_admin: DirectusClient,
    people: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(worker, "DIRECTUS_PROBE_SECONDS", 0.0)
    client = app.test_client()
    order = an_order(directus_admin, people)
    ridendine_id = new_ridendine_id()
    refund_id = make_pending_refund(services, order, ridendine_refund_id=ridendine_id)
    real = services.directus
    services.directus = DirectusClient("http://127.0.0.1:9", "unused", retries=0)
    try:
        assert post_event(client, event_body(ridendine_id, order["id"], 5000)).status_code == 200
        draining = Worker(services, WorkerOptions())
        assert draining.drain_due() == 3
        waiting = [j for j in jobs(services) if j.kind != "process_event"]
        assert {j.kind for j in waiting} == {"apply_order", "project_refund", "notify_result"}
        for job in waiting:
            assert (job.state, job.attempts) == (OutboxState.PENDING, 1)
            assert (job.last_error or "").startswith("Directus unavailable")
            assert job.next_attempt_at > job.updated_at  # its backoff, were Directus not probed
        # Still down: nothing is sent (no attempt is spent on a Directus that does not answer).
        assert draining.drain_due() == 0
        assert all(j.attempts == 1 for j in jobs(services) if j.kind != "process_event")
    finally:
        services.directus.close()
        services.directus = real

    # Directus answers again: the next tick finds it and runs the jobs now.
    assert draining.drain_due() == 3
    stored = directus_admin.get_item("orders", order["id"])
    assert (stored["payment_status"], stored["status"]) == ("REFUNDED", "CANCELLED")
    assert directus_admin.get_item("refunds", refund_id)["status"] == "REFUNDED"
    with services.store.session() as session:
        done = session.scalars(select(OutboxJob.attempts).where(OutboxJob.state == "done")).all()
    assert sorted(done) == [1, 2, 2, 2]


def test_a_new_refund_is_projected_with_one_request(
    services: Services, directus_admin: DirectusClient, people: dict[str, Any]
) -> None:
    order = an_order(directus_admin, people)
    refund = load_refund(services, make_pending_refund(services, order))
    counted = count_requests(services.directus)

    upsert_refund_item(services, refund, create_first=True)  # just recorded: created at once
    assert counted == {"POST /items/refunds": 1}
    # Already there (another job was first): updated.
    upsert_refund_item(services, refund, create_first=True)
    assert counted == {"POST /items/refunds": 2, "PATCH /items/refunds": 1}
    with services.store.session() as session:
        stored = session.get(Refund, refund.id)
        assert stored is not None
        ledger.mark_for_review(stored, "checked by the test", source="operator")
    changed = load_refund(services, refund.id)
    counted.clear()
    upsert_refund_item(services, changed)  # a later change of a known refund: one PATCH
    assert counted == {"PATCH /items/refunds": 1}
    item = directus_admin.get_item("refunds", refund.id)
    assert (item["status"], item["needs_review"]) == ("PENDING", True)
