"""The ledger projected into Directus's refunds collection (the `project_refund` job)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from bridge.config import Settings
from bridge.directus.projection import enqueue_projection
from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.services import Services, make_directus
from bridge.store import db
from bridge.store.models import OutboxJob, OutboxState, Refund, RefundStatus
from directus_client import DirectusClient
from tests.support.helpers import count_requests, make_order, new_refund, unique_id


@pytest.fixture
def services(
    cooco_directus: object, directus_settings: Settings, database_url: str
) -> Iterator[Services]:
    store = db.Store(database_url)
    db.upgrade(store.engine)
    services = Services(
        settings=directus_settings, store=store, directus=make_directus(directus_settings)
    )
    yield services
    services.close()


def record_refund(services: Services, order_id: str) -> str:
    with services.store.session() as session:
        refund = new_refund(order_id, amount=1_250)
        session.add(refund)
        enqueue_projection(session, refund)
        return refund.id


def projection_jobs(services: Services, refund_id: str) -> list[OutboxJob]:
    with services.store.session() as session:
        return list(session.query(OutboxJob).filter_by(refund_id=refund_id, kind="project_refund"))


def test_a_refund_is_created_then_updated_in_directus(
    services: Services, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin)
    refund_id = record_refund(services, order["id"])
    outbox.drain(services)
    item = directus_admin.get_item("refunds", refund_id)
    assert (item["order_id"], item["amount_cents"], item["status"]) == (
        order["id"],
        1_250,
        "PENDING",
    )
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        ledger.transition(refund, RefundStatus.REFUNDED, source="webhook")
        enqueue_projection(session, refund)
    outbox.drain(services)
    item = directus_admin.get_item("refunds", refund_id)
    assert item["status"] == "REFUNDED"
    assert [h["to_status"] for h in item["status_history"]] == ["PENDING", "REFUNDED"]


def test_an_order_missing_in_directus_gives_up_at_once(services: Services) -> None:
    refund_id = record_refund(services, unique_id("gone"))
    outbox.drain(services)
    (job,) = projection_jobs(services, refund_id)
    # Retrying for a day cannot create the missing order: the job is dead on the first try.
    assert job.state == OutboxState.DEAD
    assert job.attempts == 1
    assert "does not exist in Directus" in (job.last_error or "")


def test_a_projection_also_completes_the_ones_queued_before_it(
    services: Services, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin)
    with services.store.session() as session:
        refund = new_refund(order["id"], amount=1_250)
        session.add(refund)
        running = enqueue_projection(session, refund, lease_to="request:me")
        refund_id = refund.id
    with services.store.session() as session:  # a later change: its own job, queued
        stored = session.get(Refund, refund_id)
        assert stored is not None
        ledger.mark_for_review(stored, "checked by the test", source="operator")
        queued = enqueue_projection(session, stored)
    with services.store.session() as session:  # another one, whose job a worker holds
        stored = session.get(Refund, refund_id)
        assert stored is not None
        ledger.transition(stored, RefundStatus.REFUNDED, source="webhook")
        held = enqueue_projection(session, stored, lease_to="worker:other")
    assert running is not None and queued is not None and held is not None
    counted = count_requests(services.directus)

    assert outbox.run_job(services, running, owner="request:me") == "done"

    # Never projected before: created at once, with the ledger's state as the run read it.
    assert counted == {"POST /items/refunds": 1}
    item = directus_admin.get_item("refunds", refund_id)
    assert (item["status"], item["needs_review"]) == ("REFUNDED", True)
    jobs = {job.id: job for job in projection_jobs(services, refund_id)}
    assert jobs[running].state == OutboxState.DONE
    assert jobs[queued].state == OutboxState.DONE  # covered by the run: not written again
    assert (jobs[queued].last_error or "").startswith("superseded")
    # The worker holding a job does it (the same values again), it is not taken from it.
    assert (jobs[held].state, jobs[held].locked_by) == (OutboxState.PENDING, "worker:other")

    counted.clear()
    assert outbox.run_job(services, held, owner="worker:other") == "done"
    assert counted == {"PATCH /items/refunds": 1}  # projected before: updated, not created
