"""The transactional outbox: dedupe, leases, retries with backoff, dead jobs, draining."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import select, update

from bridge.jobs import outbox
from bridge.services import Services
from bridge.store import db
from bridge.store.models import OutboxJob, OutboxState, utcnow
from directus_client import DirectusClient
from tests.support.helpers import make_settings

CALLS: list[tuple[str, int]] = []


@pytest.fixture
def services(database_url: str) -> Iterator[Services]:
    store = db.Store(database_url)
    db.upgrade(store.engine)
    services = Services(
        settings=make_settings("http://127.0.0.1:9", "unused"),
        store=store,
        directus=DirectusClient("http://127.0.0.1:9", "unused"),
    )
    CALLS.clear()
    yield services
    services.close()


@outbox.handler("test_ok")
def _ok(services: Services, job: OutboxJob) -> None:
    CALLS.append(("ok", job.id))


@outbox.handler("test_retry")
def _retry(services: Services, job: OutboxJob) -> None:
    CALLS.append(("retry", job.id))
    raise outbox.RetryLater("partner down", delay=job.payload.get("delay"))


@outbox.handler("test_crash")
def _crash(services: Services, job: OutboxJob) -> None:
    raise ValueError("unexpected")


@outbox.handler("test_give_up")
def _give_up(services: Services, job: OutboxJob) -> None:
    raise outbox.GiveUp("never")


@outbox.on_dead("test_give_up")
def _dead(services: Services, job: OutboxJob) -> None:
    CALLS.append(("dead", job.id))


def enqueue(services: Services, kind: str, key: str, **kwargs: Any) -> int | None:
    with services.store.session() as session:
        return outbox.enqueue(session, kind, key, **kwargs)


def job(services: Services, job_id: int) -> OutboxJob:
    with services.store.session() as session:
        found = session.get(OutboxJob, job_id)
        assert found is not None
        return found


def test_enqueue_is_idempotent_by_key(services: Services) -> None:
    first = enqueue(services, "test_ok", "k1")
    assert first is not None
    assert enqueue(services, "test_ok", "k1") is None
    with services.store.session() as session:
        assert len(session.scalars(select(OutboxJob)).all()) == 1


def test_drain_runs_due_jobs_once(services: Services) -> None:
    ids = [enqueue(services, "test_ok", f"k{i}") for i in range(3)]
    later = enqueue(services, "test_ok", "later", run_at=utcnow() + timedelta(hours=1))
    assert outbox.drain(services) == 3
    assert sorted(c[1] for c in CALLS) == sorted(ids)
    assert all(job(services, i).state == OutboxState.DONE for i in ids if i)
    assert later is not None and job(services, later).state == OutboxState.PENDING
    assert outbox.drain(services) == 0


def test_retry_later_reschedules_with_delay(services: Services) -> None:
    job_id = enqueue(services, "test_retry", "r1", payload={"delay": 120})
    assert job_id is not None
    before = utcnow()
    outbox.drain(services)
    retried = job(services, job_id)
    assert retried.state == OutboxState.PENDING
    assert retried.attempts == 1
    assert retried.last_error == "partner down"
    assert timedelta(seconds=119) <= retried.next_attempt_at - before <= timedelta(seconds=125)
    assert outbox.drain(services) == 0  # not due yet


def test_unexpected_exception_is_retried_with_backoff(services: Services) -> None:
    job_id = enqueue(services, "test_crash", "c1")
    assert job_id is not None
    outbox.drain(services)
    crashed = job(services, job_id)
    assert crashed.state == OutboxState.PENDING
    assert crashed.last_error == "ValueError: unexpected"
    wait = (crashed.next_attempt_at - utcnow()).total_seconds()
    assert 3 <= wait <= 6.5  # first step of the schedule, 5 s +-20 %


def test_give_up_is_dead_at_once_and_calls_on_dead(services: Services) -> None:
    job_id = enqueue(services, "test_give_up", "g1")
    assert job_id is not None
    outbox.drain(services)
    assert job(services, job_id).state == OutboxState.DEAD
    assert [("dead", job_id)] == CALLS


def test_schedule_lasts_over_24_hours_then_dead(services: Services) -> None:
    rng = random.Random(1)
    delays = [outbox.backoff_delay(n, rng) for n in range(1, outbox.MAX_ATTEMPTS)]
    assert all(d is not None for d in delays)
    assert sum(d for d in delays if d) > 24 * 3600
    assert delays[0] is not None and delays[0] < 10
    assert outbox.backoff_delay(outbox.MAX_ATTEMPTS) is None

    job_id = enqueue(services, "test_retry", "exhaust")
    assert job_id is not None
    for _ in range(outbox.MAX_ATTEMPTS):
        with services.store.session() as session:  # make it due again at once
            session.execute(update(OutboxJob).values(next_attempt_at=utcnow()))
        outbox.drain(services)
    exhausted = job(services, job_id)
    assert exhausted.state == OutboxState.DEAD
    assert exhausted.attempts == outbox.MAX_ATTEMPTS


def test_leased_job_is_not_taken_until_the_lease_expires(services: Services) -> None:
    job_id = enqueue(services, "test_ok", "lease", lease_to="web-1", lease_seconds=60)
    assert job_id is not None
    assert outbox.claim(services, owner="worker-1") == []
    with services.store.session() as session:  # the web process died; the lease ran out
        session.execute(update(OutboxJob).values(locked_until=utcnow() - timedelta(seconds=1)))
    assert outbox.claim(services, owner="worker-1") == [job_id]
    # The old owner cannot finish it any more.
    assert outbox.run_job(services, job_id, owner="web-1") == OutboxState.PENDING
    assert outbox.run_job(services, job_id, owner="worker-1") == OutboxState.DONE


def test_run_now_does_the_leased_job(services: Services) -> None:
    job_id = enqueue(services, "test_ok", "inline", lease_to="web-2")
    assert outbox.run_now(services, job_id, owner="web-2") == OutboxState.DONE
    assert outbox.run_now(services, None, owner="web-2") is None


def test_unknown_kind_is_dead(services: Services) -> None:
    job_id = enqueue(services, "no_such_kind", "x")
    assert job_id is not None
    outbox.drain(services)
    assert job(services, job_id).state == OutboxState.DEAD
    assert "no handler" in (job(services, job_id).last_error or "")


def test_claims_on_postgresql_skip_locked_rows(postgres_url: str) -> None:
    store = db.Store(postgres_url)
    db.upgrade(store.engine)
    services = Services(
        settings=make_settings("http://127.0.0.1:9", "unused"),
        store=store,
        directus=DirectusClient("http://127.0.0.1:9", "unused"),
    )
    for i in range(10):
        enqueue(services, "test_ok", f"pg{i}")
    first = outbox.claim(services, owner="w1", limit=6)
    second = outbox.claim(services, owner="w2", limit=6)
    assert len(first) == 6 and len(second) == 4
    assert not set(first) & set(second)
    services.close()
