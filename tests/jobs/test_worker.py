"""The worker process: draining, leases, stopping, one worker per SQLite store, start-up."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner
from sqlalchemy import select, update

from bridge.cli import load_commands
from bridge.config import Settings
from bridge.jobs import outbox, registry
from bridge.ledger import ledger
from bridge.services import Services
from bridge.store import db
from bridge.store.models import OutboxJob, OutboxState, Refund, RefundStatus, utcnow
from bridge.worker import (
    Worker,
    WorkerOptions,
    dead_fallback,
    install_dead_fallback,
    prepare_store,
)
from directus_client import DirectusClient
from tests.support.helpers import make_settings, settings_env
from tests.support.worker_probe import (
    PROBE_KIND,
    WorkerProcess,
    create_probe_table,
    pick_up_seconds,
    runs,
)

COMMAND = [sys.executable, "-m", "bridge.cli"]
RAN: list[int] = []
CURRENT: dict[str, Worker] = {}


@outbox.handler("wtest_ok")
def _ok(services: Services, job: OutboxJob) -> None:
    RAN.append(job.id)


@outbox.handler("wtest_stop")
def _asks_to_stop(services: Services, job: OutboxJob) -> None:
    # A SIGTERM arriving while this job is in hand.
    RAN.append(job.id)
    CURRENT["worker"].stop()


@outbox.handler("wtest_never")
def _never(services: Services, job: OutboxJob) -> None:
    raise outbox.RetryLater("the partner is down")


@pytest.fixture
def services(database_url: str) -> Iterator[Services]:
    store = db.Store(database_url)
    db.upgrade(store.engine)
    services = Services(
        settings=make_settings("http://127.0.0.1:9", "unused"),
        store=store,
        directus=DirectusClient("http://127.0.0.1:9", "unused", retries=0),
    )
    RAN.clear()
    yield services
    services.close()


def enqueue(services: Services, kind: str, key: str, **kwargs: object) -> int:
    with services.store.session() as session:
        job_id = outbox.enqueue(session, kind, key, **kwargs)  # type: ignore[arg-type]
    assert job_id is not None
    return job_id


def job(services: Services, job_id: int) -> OutboxJob:
    with services.store.session() as session:
        found = session.get(OutboxJob, job_id)
        assert found is not None
        session.expunge(found)
        return found


# -- in process ---------------------------------------------------------------------------------


def test_drains_due_jobs_and_leaves_unknown_kinds_pending(services: Services) -> None:
    ids = [enqueue(services, "wtest_ok", f"ok{i}") for i in range(45)]  # more than one batch
    unknown = enqueue(services, "kind_of_a_newer_release", "new")
    worker = Worker(services, WorkerOptions(batch_size=20))
    assert worker.drain_due() == 45
    assert sorted(RAN) == sorted(ids)
    assert all(job(services, i).state == OutboxState.DONE for i in ids)
    # Not claimed, so not declared dead for want of a handler: a build that has it runs it.
    left = job(services, unknown)
    assert (left.state, left.attempts, left.locked_by) == (OutboxState.PENDING, 0, None)
    assert worker.drain_due() == 0


def test_stop_finishes_the_job_in_hand_and_hands_back_the_rest(services: Services) -> None:
    first = enqueue(services, "wtest_stop", "stop")
    rest = [enqueue(services, "wtest_ok", f"later{i}") for i in range(5)]
    worker = Worker(services, WorkerOptions(batch_size=10))
    CURRENT["worker"] = worker
    assert worker.drain_due() == 1
    assert [first] == RAN
    assert job(services, first).state == OutboxState.DONE
    for job_id in rest:
        left = job(services, job_id)
        # Handed back, not left under a lease: another worker may take them at once.
        assert (left.state, left.locked_by, left.locked_until) == (OutboxState.PENDING, None, None)


def test_a_live_worker_keeps_its_leases_and_a_dead_ones_run_out(services: Services) -> None:
    job_id = enqueue(services, "wtest_ok", "long")
    alive = Worker(services, WorkerOptions(lease_seconds=30))
    assert outbox.claim(services, owner=alive.owner, lease_seconds=1) == [job_id]
    alive.renew_leases()
    assert job(services, job_id).locked_until > utcnow() + timedelta(seconds=25)
    assert outbox.claim(services, owner="another-worker") == []
    # The owner died (no renewals): once its lease has run out, another worker takes the job.
    with services.store.session() as session:
        session.execute(update(OutboxJob).values(locked_until=utcnow() - timedelta(seconds=1)))
    assert outbox.claim(services, owner="another-worker") == [job_id]


def exhaust(services: Services, worker: Worker) -> None:
    for _ in range(outbox.MAX_ATTEMPTS + 1):
        with services.store.session() as session:
            session.execute(update(OutboxJob).values(next_attempt_at=utcnow()))
        worker.drain_due()


@pytest.fixture
def restore_dead_handlers() -> Iterator[None]:
    """The fallback is process-wide: what a test installs is undone after it."""
    before = dict(outbox.DEAD_HANDLERS)
    yield
    outbox.DEAD_HANDLERS.clear()
    outbox.DEAD_HANDLERS.update(before)


@pytest.fixture
def with_dead_fallback(restore_dead_handlers: None) -> None:
    """The fallback as `refund-bridge worker` installs it, for this test only."""
    install_dead_fallback(tuple(outbox.HANDLERS))


@pytest.mark.usefixtures("with_dead_fallback")
def test_a_dead_job_without_its_own_handler_flags_its_refund(services: Services) -> None:
    with services.store.session() as session:
        refund = Refund(
            order_id="ord-dead",
            amount_cents=500,
            currency="EUR",
            reason="chef_rejected",
            requested_by="admin",
            status=RefundStatus.PENDING,
        )
        session.add(refund)
        ledger.record_created(refund)
        refund_id = refund.id
    job_id = enqueue(services, "wtest_never", "never", refund_id=refund_id)
    exhaust(services, Worker(services, WorkerOptions()))
    assert job(services, job_id).state == OutboxState.DEAD
    with services.store.session() as session:
        flagged = session.get(Refund, refund_id)
        assert flagged is not None and flagged.needs_review
        assert "background job wtest_never gave up after" in (flagged.review_reason or "")
        alerts = session.scalars(select(OutboxJob).where(OutboxJob.kind == "alert_admins")).all()
        assert [a.refund_id for a in alerts] == [refund_id]


@pytest.mark.usefixtures("with_dead_fallback")
def test_a_dead_job_without_a_refund_alerts_the_admins_and_a_dead_alert_stops(
    services: Services,
) -> None:
    job_id = enqueue(services, "wtest_never", "no-refund")
    worker = Worker(services, WorkerOptions())
    exhaust(services, worker)
    assert job(services, job_id).state == OutboxState.DEAD
    with services.store.session() as session:
        (alert,) = session.scalars(select(OutboxJob).where(OutboxJob.kind == "alert_admins"))
        assert alert.dedupe_key == f"alert:dead-job:{job_id}"
    # No Flow to send it through (Directus leads nowhere): the alert dies too, and that is the
    # end of it (logged), not an alert about the alert.
    exhaust(services, worker)
    with services.store.session() as session:
        kinds = [j.kind for j in session.scalars(select(OutboxJob).order_by(OutboxJob.id))]
        states = [j.state for j in session.scalars(select(OutboxJob).order_by(OutboxJob.id))]
    assert kinds == ["wtest_never", "alert_admins"]
    assert states == [OutboxState.DEAD, OutboxState.DEAD]


def test_a_store_that_does_not_answer_pauses_polling(
    services: Services, caplog: pytest.LogCaptureFixture
) -> None:
    down = Services(
        settings=services.settings,
        store=db.Store("sqlite:////nonexistent-folder/bridge.sqlite3"),
        directus=services.directus,
    )
    worker = Worker(down, WorkerOptions(poll_seconds=0.5))
    with caplog.at_level("WARNING", logger="bridge.worker"):
        assert worker.drain_due() == 0
        assert worker.drain_due() == 0  # within the pause: not even tried
    warnings = [r for r in caplog.records if "store is not answering" in r.getMessage()]
    assert len(warnings) == 1
    assert worker._pause_until > time.monotonic()
    down.store.dispose()


def test_the_registry_lists_every_job_kind_the_code_enqueues() -> None:
    # Every JOB_* constant of the bridge names a kind with a handler in the one list.
    import bridge

    root = Path(bridge.__file__).parent
    defined = set(re.findall(r'^JOB_[A-Z_]+ = "([a-z_]+)"', _sources(root), re.M))
    listed = [job.kind for job in registry.JOB_KINDS]
    assert len(listed) == len(set(listed)) == 12  # notify_approval, notify_in_app
    assert set(listed) == defined
    registry.register_all()
    assert set(listed) <= set(outbox.HANDLERS)
    # The inbox's processing a batch at a time too (its new jobs go to the next batch); the
    # Directus kinds in the order that makes the e-mail show the order's update.
    assert "process_event" in outbox.BATCH_ORDER
    directus_order = [kind for kind in outbox.BATCH_ORDER if kind != "process_event"]
    assert directus_order[:3] == ["apply_order", "project_refund", "notify_result"]
    assert {
        "apply_order",
        "project_refund",
        "notify_result",
        "notify_result_admins",
        "alert_admins",
        "notify_in_app",
        "resolve_event",
        "notify_approval",
    } == registry.DIRECTUS_KINDS


def _sources(root: Path) -> str:
    return "\n".join(path.read_text() for path in sorted(root.rglob("*.py")))


def test_prepare_store_migrates_or_checks(database_url: str) -> None:
    from bridge.worker import WorkerStartError

    store = db.Store(database_url)
    with pytest.raises(WorkerStartError, match="db upgrade"):
        prepare_store(store, migrate=False)
    prepare_store(store, migrate=True)
    prepare_store(store, migrate=False)
    store.dispose()


def test_prepare_store_on_postgresql_takes_turns(postgres_url: str) -> None:
    stores = [db.Store(postgres_url) for _ in range(2)]
    for store in stores:  # the second finds it done
        prepare_store(store, migrate=True)
    assert db.current_revision(stores[0].engine) == db.head_revision()
    for store in stores:
        store.dispose()


# -- the command --------------------------------------------------------------------------------


def test_bad_configuration_is_one_line_and_exit_1(settings: Settings) -> None:
    env = settings_env(settings)
    env["BRIDGE_WORKER_LEASE_SECONDS"] = "2"
    result = subprocess.run(
        [*COMMAND, "worker"],
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "refund-bridge: configuration: BRIDGE_WORKER_LEASE_SECONDS: must be at least 5, got 2"
    ]


@pytest.mark.usefixtures("restore_dead_handlers")
def test_worker_once_migrates_and_drains(
    runner: CliRunner, settings: Settings, database_url: str
) -> None:
    env = settings_env(settings, database_url)
    result = runner.invoke(load_commands(), ["worker", "--once"], env=env)
    assert result.exit_code == 0, result.output
    store = db.Store(database_url)
    assert db.current_revision(store.engine) == db.head_revision()
    with store.session() as session:
        outbox.enqueue(session, "wtest_ok", "once")
    RAN.clear()
    result = runner.invoke(load_commands(), ["worker", "--once", "--no-migrate"], env=env)
    assert result.exit_code == 0, result.output
    assert len(RAN) == 1
    with store.session() as session:
        assert session.scalar(select(OutboxJob.state)) == OutboxState.DONE
    store.dispose()
    # The worker process gives kinds without an on_dead of their own the fallback.
    assert outbox.DEAD_HANDLERS["wtest_ok"] is dead_fallback
    assert outbox.DEAD_HANDLERS["submit_refund"] is not dead_fallback


# -- real worker processes on SQLite ------------------------------------------------------------


@pytest.fixture
def worker_env(settings: Settings, database_url: str) -> dict[str, str]:
    store = db.Store(database_url)
    db.upgrade(store.engine)
    create_probe_table(store.engine)
    store.dispose()
    return settings_env(settings, database_url)


def enqueue_probes(database_url: str, count: int, **payload: object) -> list[int]:
    store = db.Store(database_url)
    ids = []
    with store.session() as session:
        for _ in range(count):
            job_id = outbox.enqueue(
                session, PROBE_KIND, f"probe:{os.urandom(6).hex()}", payload=dict(payload)
            )
            assert job_id is not None
            ids.append(job_id)
    store.dispose()
    return ids


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_second_worker_on_one_sqlite_file_is_refused(
    worker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    first = WorkerProcess(worker_env, str(tmp_path / "first.log"))
    try:
        first.wait_started()
        second = subprocess.run(
            [*COMMAND, "worker"],
            env={"PATH": "/usr/bin:/bin", **worker_env},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert second.returncode == 1
        lines = second.stderr.strip().splitlines()
        assert len(lines) == 1, second.stderr
        assert lines[0].startswith("refund-bridge: another worker (pid ")
        assert f"pid {first.pid})" in lines[0]
        assert "SQLite allows one worker" in lines[0]
    finally:
        first.process.send_signal(signal.SIGTERM)
        assert first.wait() == 0
    # The lock goes with the process: a new worker starts.
    again = WorkerProcess(worker_env, str(tmp_path / "again.log"))
    again.wait_started()
    again.process.send_signal(signal.SIGTERM)
    assert again.wait() == 0


def test_sigterm_finishes_the_job_in_hand_and_exits_0(
    worker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    ids = enqueue_probes(database_url, 4, sleep=1.5)
    worker = WorkerProcess(worker_env, str(tmp_path / "worker.log"))
    store = db.Store(database_url)
    try:
        worker.wait_started()
        wait_for(lambda: runs(store.engine), 15, "the first job to start")
        worker.process.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=20) == 0
        started, ended = runs(store.engine), runs(store.engine, "end")
        assert len(started) == 1 and started == ended  # the job in hand was finished
        with store.session() as session:
            states = {j.id: (j.state, j.locked_by) for j in session.scalars(select(OutboxJob))}
        (done,) = started
        assert states[done] == (OutboxState.DONE, None)
        for job_id in set(ids) - {done}:
            assert states[job_id] == (OutboxState.PENDING, None)  # handed back
        log = worker.log()
        assert "received SIGTERM" in log and "worker stopped after 1 job(s)" in log
        assert "Traceback" not in log
    finally:
        worker.kill()
        store.dispose()


def test_new_work_starts_within_a_second_and_an_idle_worker_is_cheap(
    worker_env: dict[str, str], database_url: str, tmp_path: Path
) -> None:
    worker = WorkerProcess(worker_env, str(tmp_path / "worker.log"))
    store = db.Store(database_url)
    try:
        worker.wait_started()
        time.sleep(1.0)  # let start-up settle
        cpu_before, wall_before = worker.cpu_seconds(), time.monotonic()
        time.sleep(5.0)
        idle_cpu = (worker.cpu_seconds() - cpu_before) / (time.monotonic() - wall_before)
        latencies = []
        for _ in range(3):
            (job_id,) = enqueue_probes(database_url, 1)
            wait_for(lambda j=job_id: runs(store.engine)[j] > 0, 5, "the probe to run")
            # The worker's part only (BRIDGE_WORKER_POLL_SECONDS, 0.5 s, and the claim): what
            # the test spends enqueueing and polling is not the worker's (it once made 1.01 s).
            latencies.append(pick_up_seconds(store.engine, job_id))
            time.sleep(0.3)
        print(f"idle CPU {idle_cpu:.1%} of a core; pick-up latencies {latencies}")
        assert 0 < max(latencies) < 1.0
        assert idle_cpu < 0.05
    finally:
        worker.process.send_signal(signal.SIGTERM)
        assert worker.wait() == 0
        store.dispose()
