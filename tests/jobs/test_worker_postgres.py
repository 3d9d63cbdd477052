"""Several real worker processes on one PostgreSQL store: every job exactly once, and a worker
killed with SIGKILL in the middle of a batch loses nothing and applies nothing twice."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from bridge.config import Settings
from bridge.jobs import outbox
from bridge.store import db
from bridge.store.models import OutboxJob, OutboxState
from tests.support.helpers import settings_env
from tests.support.worker_probe import (
    PROBE_KIND,
    IdempotentStandIn,
    WorkerProcess,
    create_probe_table,
    runs,
    runs_by_pid,
)

pytestmark = pytest.mark.slow


@pytest.fixture
def store(postgres_url: str) -> Iterator[db.Store]:
    store = db.Store(postgres_url)
    db.upgrade(store.engine)
    create_probe_table(store.engine)
    yield store
    store.dispose()


@pytest.fixture
def env(settings: Settings, postgres_url: str) -> dict[str, str]:
    return {**settings_env(settings, postgres_url), "BRIDGE_WORKER_LEASE_SECONDS": "5"}


def enqueue_probes(store: db.Store, count: int, **payload: object) -> list[int]:
    ids = []
    with store.session() as session:
        for index in range(count):
            job_id = outbox.enqueue(
                session, PROBE_KIND, f"probe:{index}:{os.urandom(4).hex()}", payload=dict(payload)
            )
            assert job_id is not None
            ids.append(job_id)
    return ids


def states(store: db.Store) -> dict[str, int]:
    with store.session() as session:
        rows = session.execute(
            select(OutboxJob.state, func.count()).group_by(OutboxJob.state)
        ).all()
    return {str(state): int(count) for state, count in rows}


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop_all(workers: list[WorkerProcess]) -> list[int]:
    for worker in workers:
        if worker.process.poll() is None:
            worker.process.send_signal(signal.SIGTERM)
    return [worker.wait(timeout=30) for worker in workers]


def test_three_workers_drain_500_jobs_each_exactly_once(
    store: db.Store, env: dict[str, str], tmp_path: Path
) -> None:
    # Small batches, so that the three workers really compete for the 500 jobs (with the
    # default batch of 300, two workers could take them all).
    workers = [
        WorkerProcess(env, str(tmp_path / f"w{i}.log"), "--batch-size", "20") for i in range(3)
    ]
    try:
        for worker in workers:
            worker.wait_started()
        started = time.monotonic()
        ids = enqueue_probes(store, 500, sleep=0.005)
        wait_for(lambda: states(store).get(OutboxState.DONE) == 500, 120, "500 jobs done")
        elapsed = time.monotonic() - started
        assert stop_all(workers) == [0, 0, 0]
    finally:
        for worker in workers:
            worker.kill()
    started_runs, ended_runs = runs(store.engine), runs(store.engine, "end")
    assert set(started_runs) == set(ids)
    assert set(started_runs.values()) == {1}  # no job ran twice, none was skipped
    assert started_runs == ended_runs
    by_pid = runs_by_pid(store.engine)
    print(f"500 jobs on 3 workers in {elapsed:.1f} s; per worker {sorted(by_pid.values())}")
    assert set(by_pid) == {w.pid for w in workers}  # all three took part
    with store.session() as session:
        assert session.scalar(select(func.max(OutboxJob.attempts))) == 1


def test_a_worker_killed_mid_batch_loses_nothing_and_applies_nothing_twice(
    store: db.Store, env: dict[str, str], tmp_path: Path
) -> None:
    partner = IdempotentStandIn()
    partner.start()
    workers: list[WorkerProcess] = []
    try:
        ids = enqueue_probes(store, 60, call=partner.url, sleep=0.2)
        victim = WorkerProcess(env, str(tmp_path / "victim.log"))
        workers.append(victim)
        victim.wait_started()
        # The victim's 10th outside call has just been made: it is in the work after the call,
        # holding the rest of its batch under lease, when SIGKILL comes.
        assert partner.wait_for_requests(10, timeout=30)
        victim.process.send_signal(signal.SIGKILL)
        victim.wait()
        with store.session() as session:
            held = session.scalar(
                select(func.count()).where(
                    OutboxJob.locked_by.is_not(None), OutboxJob.state == OutboxState.PENDING
                )
            )
        assert held and held > 1  # the job in hand and the rest of the batch, under lease
        # Exactly one job was in hand: started, its outside call made, not finished.
        in_hand = set(runs(store.engine)) - set(runs(store.engine, "end"))
        assert len(in_hand) == 1
        survivor = WorkerProcess(env, str(tmp_path / "survivor.log"))
        workers.append(survivor)
        survivor.wait_started()
        restarted = WorkerProcess(env, str(tmp_path / "restarted.log"))
        workers.append(restarted)
        restarted.wait_started()
        wait_for(lambda: states(store).get(OutboxState.DONE) == 60, 90, "every job done")
        assert stop_all(workers[1:]) == [0, 0]
    finally:
        for worker in workers:
            worker.kill()
        partner.stop()

    with store.session() as session:
        keys = {j.id: j.dedupe_key for j in session.scalars(select(OutboxJob))}
    # Nothing lost: every job's outside call was made and its effect applied exactly once.
    assert set(partner.applied) == set(keys.values())
    assert set(partner.applied.values()) == {1}
    # The job whose call had been made when the worker died was called again after the lease
    # ran out, with the same Idempotency-Key: the partner answered it without applying again.
    repeated = [key for key, count in partner.received.items() if count > 1]
    assert len(repeated) == 1
    started_runs = runs(store.engine)
    assert set(started_runs) == set(ids)
    twice = [job_id for job_id, count in started_runs.items() if count > 1]
    assert twice == sorted(in_hand)
    assert [keys[job_id] for job_id in twice] == repeated
