"""Housekeeping: finished outbox jobs and applied webhook events past retention are deleted;
nothing that still needs work or a person is."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, insert, select

from bridge.cli import load_commands
from bridge.config import Settings
from bridge.services import Services
from bridge.store import db, housekeeping
from bridge.store.models import (
    IdempotencyRecord,
    InboxEvent,
    InboxState,
    OutboxJob,
    OutboxState,
    utcnow,
)
from bridge.worker import Worker, WorkerOptions
from directus_client import DirectusClient
from tests.support.helpers import make_settings, settings_env

OLD = timedelta(days=91)
RECENT = timedelta(days=89)


@pytest.fixture
def services(database_url: str) -> Iterator[Services]:
    store = db.Store(database_url)
    db.upgrade(store.engine)
    services = Services(
        settings=make_settings("http://127.0.0.1:9", "unused", retention_days=90),
        store=store,
        directus=DirectusClient("http://127.0.0.1:9", "unused"),
    )
    yield services
    services.close()


def add_job(services: Services, key: str, state: str, age: timedelta) -> None:
    at = utcnow() - age
    finished = at if state != OutboxState.PENDING else None
    with services.store.session() as session:
        session.execute(
            insert(OutboxJob).values(
                kind="project_refund",
                dedupe_key=key,
                payload={},
                state=state,
                attempts=1,
                next_attempt_at=at,
                created_at=at,
                updated_at=at,
                done_at=finished,
            )
        )


def add_event(services: Services, key: str, state: str, age: timedelta) -> None:
    at = utcnow() - age
    with services.store.session() as session:
        session.execute(
            insert(InboxEvent).values(
                webhook_id=f"msg_{key}",
                dedupe_key=key,
                ridendine_refund_id=f"re_{key}",
                external_order_id="ord-1",
                amount_cents=100,
                status="REFUNDED",
                payload={},
                raw_body=b"{}",
                headers={},
                state=state,
                attempts=1,
                received_at=at,
                processed_at=at if state == InboxState.APPLIED else None,
            )
        )


def keys(services: Services) -> tuple[set[str], set[str]]:
    with services.store.session() as session:
        jobs = set(session.scalars(select(OutboxJob.dedupe_key)))
        events = set(session.scalars(select(InboxEvent.dedupe_key)))
    return jobs, events


@pytest.fixture
def rows(services: Services) -> None:
    add_job(services, "done-old", OutboxState.DONE, OLD)
    add_job(services, "dead-old", OutboxState.DEAD, OLD)
    add_job(services, "done-recent", OutboxState.DONE, RECENT)
    add_job(services, "pending-old", OutboxState.PENDING, OLD)
    add_event(services, "applied-old", InboxState.APPLIED, OLD)
    add_event(services, "applied-recent", InboxState.APPLIED, RECENT)
    add_event(services, "unmatched-old", InboxState.UNMATCHED, OLD)
    add_event(services, "failed-old", InboxState.FAILED, OLD)
    add_event(services, "received-old", InboxState.RECEIVED, OLD)


def test_deletes_only_finished_rows_past_retention(services: Services, rows: None) -> None:
    report = housekeeping.run(services)
    assert (report.outbox_jobs, report.inbox_events) == (2, 1)
    jobs, events = keys(services)
    assert jobs == {"done-recent", "pending-old"}
    assert events == {"applied-recent", "unmatched-old", "failed-old", "received-old"}
    again = housekeeping.run(services)
    assert (again.outbox_jobs, again.inbox_events) == (0, 0)


def test_dry_run_counts_and_deletes_nothing(services: Services, rows: None) -> None:
    before = keys(services)
    report = housekeeping.run(services, dry_run=True)
    assert (report.outbox_jobs, report.inbox_events, report.dry_run) == (2, 1, True)
    assert keys(services) == before


def test_large_backlogs_go_in_batches(services: Services) -> None:
    total = housekeeping.DELETE_BATCH * 2 + 7
    for index in range(total):
        add_job(services, f"old-{index}", OutboxState.DONE, OLD)
    assert housekeeping.run(services).outbox_jobs == total
    with services.store.session() as session:
        assert session.scalar(select(func.count()).select_from(OutboxJob)) == 0


def test_the_command(services: Services, rows: None, settings: Settings, database_url: str) -> None:
    env = settings_env(settings, database_url)
    dry = CliRunner().invoke(load_commands(), ["housekeeping", "--dry-run"], env=env)
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["outbox_jobs"] == 2
    shorter = CliRunner().invoke(
        load_commands(), ["housekeeping", "--retention-days", "1"], env=env
    )
    assert shorter.exit_code == 0, shorter.output
    assert json.loads(shorter.output) | {"cutoff": None} == {
        "cutoff": None,
        "outbox_jobs": 3,
        "inbox_events": 2,
        "idempotency_keys": 0,
        "dry_run": False,
    }


def test_idempotency_keys_past_retention_are_deleted(services: Services) -> None:
    with services.store.session() as session:
        for key, age in (("old", OLD), ("recent", RECENT)):
            session.add(
                IdempotencyRecord(
                    caller="service:x", key=key, request_hash="h", created_at=utcnow() - age
                )
            )
    assert housekeeping.run(services, dry_run=True).idempotency_keys == 1
    assert housekeeping.run(services).idempotency_keys == 1
    with services.store.session() as session:
        assert list(session.scalars(select(IdempotencyRecord.key))) == ["recent"]


def test_the_worker_runs_it_daily(services: Services) -> None:
    worker = Worker(services, WorkerOptions())
    worker.start()
    try:
        assert worker.scheduler is not None
        job = worker.scheduler.get_job("housekeeping")
        assert job is not None
        assert job.trigger.interval == timedelta(hours=24)
        assert {j.id for j in worker.scheduler.get_jobs()} == {
            "outbox",
            "leases",
            "pending_refunds",
            "waiting_refunds",
            "housekeeping",
        }
    finally:
        worker.shutdown()
