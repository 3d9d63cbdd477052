"""The worker keeps refunds going while RideNDine is down (contract section 2): the same refund
is sent again with the same Idempotency-Key until a definite answer; when the retries run out it
is FAILED for review and the admins get an e-mail. Directus is real; RideNDine is mocked."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import responses
from flask import Flask
from sqlalchemy import select, update

from bridge import create_app
from bridge.jobs import outbox
from bridge.services import Services
from bridge.store.models import OutboxJob, OutboxState, Refund, RefundStatus, utcnow
from bridge.worker import Worker, WorkerOptions
from devstack.directus import DirectusServer
from devstack.net import wait_until
from devstack.smtp import SmtpSink
from directus_client import DirectusClient
from tests.support.helpers import RIDENDINE_URL, SERVICE_TOKEN, make_order, make_settings
from tests.support.webhook_helpers import sync_result_flow

CREATE_URL = f"{RIDENDINE_URL}/refunds/create"
ADMINS = "admins@example.com"


@pytest.fixture
def bridge(cooco_directus: DirectusServer, database_url: str) -> Iterator[Flask]:
    settings = make_settings(cooco_directus.url, cooco_directus.admin_token)
    app = create_app(
        {
            "BRIDGE_SETTINGS": settings,
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    yield app
    app.extensions["bridge.services"].directus.close()


@pytest.fixture
def services(bridge: Flask, directus_admin: DirectusClient) -> Services:
    services: Services = bridge.extensions["bridge.services"]
    services.extras["flow_id:refund-result"] = sync_result_flow(directus_admin)
    return services


@pytest.fixture
def ridendine(cooco_directus: DirectusServer) -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(cooco_directus.url)
        yield mock


def request_refund(bridge: Flask, order: dict[str, Any]) -> dict[str, Any]:
    response = bridge.test_client().post(
        "/ridendine/refunds",
        json={"order_id": order["id"], "reason": "chef_rejected", "requested_by": "admin"},
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    refund: dict[str, Any] = response.get_json()["refund"]
    return refund


def submission(services: Services, refund_id: str) -> OutboxJob:
    with services.store.session() as session:
        job = session.scalar(
            select(OutboxJob).where(
                OutboxJob.refund_id == refund_id, OutboxJob.kind == "submit_refund"
            )
        )
        assert job is not None
        session.expunge(job)
        return job


def skip_backoff(services: Services) -> None:
    """The next attempt of every waiting job is now (instead of hours from now)."""
    with services.store.session() as session:
        session.execute(
            update(OutboxJob)
            .where(OutboxJob.state == OutboxState.PENDING)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


def waiting_jobs(services: Services) -> list[str]:
    with services.store.session() as session:
        query = select(OutboxJob.kind).where(OutboxJob.state == OutboxState.PENDING)
        return list(session.scalars(query))


def run_until_settled(services: Services, worker: Worker) -> None:
    """Tick the worker (backoffs skipped) until no job waits. The jobs that follow a submission
    talk to Directus and its Flow, which take their own time, and after one Directus call fails
    or times out the worker holds Directus's jobs until its next ping (docs/worker.md): a fixed
    number of ticks, run back to back, would only pass while Directus never stumbles."""

    def settled() -> bool:
        skip_backoff(services)
        worker.drain_due()
        return not waiting_jobs(services)

    wait_until(settled, timeout=60.0, interval=0.1, what="every queued job to be done")


def ledger_refund(services: Services, refund_id: str) -> Refund:
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        session.expunge(refund)
        return refund


def test_ridendine_down_for_five_attempts_then_up(
    bridge: Flask,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=4_200)
    for status in (503, 502, 429, 408, 500):  # no definite answer, five times
        ridendine.add(responses.POST, CREATE_URL, json={"message": "busy"}, status=status)
    ridendine.add(responses.POST, CREATE_URL, json={"refund_id": "re_after_outage"}, status=200)

    refund = request_refund(bridge, order)  # the first attempt, inline: 503
    worker = Worker(services, WorkerOptions(batch_size=5))
    job = submission(services, refund["id"])
    delays = []
    while job.state == OutboxState.PENDING:
        delays.append((job.next_attempt_at - job.updated_at).total_seconds())
        skip_backoff(services)
        worker.drain_due()
        job = submission(services, refund["id"])
        assert len(delays) < 10

    calls = [c for c in ridendine.calls if c.request.url == CREATE_URL]
    assert len(calls) == 6
    assert {c.request.headers["Idempotency-Key"] for c in calls} == {refund["id"]}
    assert job.state == OutboxState.DONE and job.attempts == 6
    # The backoff grew with each failure (5 s, 30 s, 2 min, 5 min, 15 min, +-20 %).
    assert delays == sorted(delays) and delays[0] < 10 and delays[-1] > 600
    stored = ledger_refund(services, refund["id"])
    assert stored.status == RefundStatus.PENDING
    assert stored.ridendine_refund_id == "re_after_outage"
    assert not stored.needs_review
    # Submitted once: nothing more is sent, however long the worker runs.
    run_until_settled(services, worker)
    assert len([c for c in ridendine.calls if c.request.url == CREATE_URL]) == 6
    item = directus_admin.get_item("refunds", refund["id"])
    assert (item["status"], item["ridendine_refund_id"]) == ("PENDING", "re_after_outage")


def test_ridendine_down_for_good_ends_failed_for_review_and_admins_are_mailed(
    bridge: Flask,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    smtp_sink: SmtpSink,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=3_100)
    ridendine.add(responses.POST, CREATE_URL, json={"message": "down"}, status=503)

    refund = request_refund(bridge, order)  # the first attempt, inline
    worker = Worker(services, WorkerOptions())
    for _ in range(outbox.MAX_ATTEMPTS - 1):
        skip_backoff(services)
        worker.drain_due()
    job = submission(services, refund["id"])
    assert job.state == OutboxState.DEAD
    # What its death queued (the refund FAILED in Directus, the alert, the result's e-mail).
    run_until_settled(services, worker)

    calls = [c for c in ridendine.calls if c.request.url == CREATE_URL]
    assert len(calls) == outbox.MAX_ATTEMPTS
    assert {c.request.headers["Idempotency-Key"] for c in calls} == {refund["id"]}
    stored = ledger_refund(services, refund["id"])
    assert stored.status == RefundStatus.FAILED
    assert stored.needs_review
    assert "RideNDine never gave a definite answer" in (stored.review_reason or "")
    # Directus shows it, the order is untouched, and the admins got one e-mail.
    item = directus_admin.get_item("refunds", refund["id"])
    assert (item["status"], item["needs_review"]) == ("FAILED", True)
    assert directus_admin.get_item("orders", order["id"])["payment_status"] == "PAID"
    # Two mails to the admins: the alert, and the FAILED result (contract section 4; this order
    # has no customer or chef, so nobody else is told).
    mails = smtp_sink.wait_for(refund["id"], 2)
    results = [m for m in mails if f"Order {order['id']}: refund FAILED" in m.subject]
    alerts = [m for m in mails if m not in results]
    assert len(alerts) == 1
    assert ADMINS in alerts[0].rcpt_to
    assert "needs review" in alerts[0].subject
    assert len(results) == 1
    assert results[0].rcpt_to == (ADMINS,)
    with services.store.session() as session:
        alert_jobs = session.scalars(
            select(OutboxJob).where(
                OutboxJob.kind == "alert_admins", OutboxJob.refund_id == refund["id"]
            )
        ).all()
        assert [j.state for j in alert_jobs] == [OutboxState.DONE]
