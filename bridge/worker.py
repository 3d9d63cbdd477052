"""The worker process (`refund-bridge worker`, `run_worker`): drains the outbox and runs the
periodic checks (stale PENDING refunds, housekeeping) in an APScheduler `BackgroundScheduler`,
never inside a web worker.

docs/worker.md tells the schedule, the leases, the stop on SIGTERM, the one worker per SQLite
store, and why a job is never dead silently (`dead_fallback`).
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.schedulers.background import BackgroundScheduler
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from bridge.config import Settings
from bridge.directus.alerts import JOB_ALERT_ADMINS, enqueue_admin_alert
from bridge.directus.in_app import JOB_NOTIFY_IN_APP
from bridge.directus.review import flag_job_refund
from bridge.jobs import outbox, registry
from bridge.services import Services, build_services
from bridge.store import db as store_db
from bridge.store.models import OutboxJob

log = logging.getLogger(__name__)

# Any constant shared by the processes that migrate the same PostgreSQL database.
MIGRATION_LOCK_KEY = 0x7265_6662  # "refb"
# Jobs claimed at once: the Directus kinds of a batch share one read and one write per
# collection (bridge/directus/batch.py), so a bigger batch is fewer requests per event.
BATCH_SIZE = 300
# While Directus does not answer, its jobs are not sent; it is pinged this often instead.
DIRECTUS_PROBE_SECONDS = 2.0
STALE_SCAN_MAX_SECONDS = 60.0
HOUSEKEEPING_EVERY = timedelta(hours=24)
HOUSEKEEPING_FIRST_DELAY = timedelta(minutes=1)
STORE_ERROR_PAUSE_MAX = 30.0


class WorkerStartError(Exception):
    """The worker cannot start; the message is the one line the command prints."""


# -- start-up ---------------------------------------------------------------------------------


def prepare_store(store: store_db.Store, *, migrate: bool) -> None:
    """Apply the store's migrations (or only check them), like `refund-bridge serve`.

    On PostgreSQL an advisory lock makes concurrent starts (several workers, web instances)
    migrate one after the other instead of racing.
    """
    try:
        if not migrate:
            store_db.check_migrated(store.engine)
        elif store.engine.dialect.name == "postgresql":
            with store.engine.connect() as connection:
                connection.execute(
                    text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK_KEY}
                )
                try:
                    store_db.upgrade(store.engine)
                finally:
                    connection.execute(
                        text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK_KEY}
                    )
                    connection.commit()
        else:
            store_db.upgrade(store.engine)
    except store_db.StoreNotMigrated as exc:
        raise WorkerStartError(str(exc)) from None
    except SQLAlchemyError as exc:
        raise WorkerStartError(f"store: {_store_error(exc)}") from None


def _store_error(exc: SQLAlchemyError) -> str:
    """One line about a store error, without the SQL or the URL (which may hold a password)."""
    original = getattr(exc, "orig", None)
    message = str(original if original is not None else exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}"[:300]


class SingleWorkerLock:
    """An exclusive lock on `<database file>.worker.lock`: one worker per SQLite store.

    `flock` is released by the kernel when the process dies, even by kill -9, so a crashed
    worker never blocks the next one. It does not hold across machines (nor on NFS): SQLite is
    for one machine anyway.
    """

    def __init__(self, database_path: str) -> None:
        self.database_path = database_path
        self.path = Path(f"{database_path}.worker.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise WorkerStartError(
                f"another worker (pid {holder}) is already running on the SQLite store "
                f"{self.database_path}; SQLite allows one worker "
                "(use PostgreSQL for several)"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def sqlite_path(store: store_db.Store) -> str | None:
    """The database file of an SQLite store; None for PostgreSQL or an in-memory database."""
    url = store.engine.url
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return os.path.abspath(url.database)


# -- dead jobs: never silent ------------------------------------------------------------------

# Alerts are how admins hear of dead jobs; a dead alert can only be logged (the outbox does).
# The same for an in-app notification: its e-mail alert went its own way.
NO_FALLBACK_KINDS = frozenset({JOB_ALERT_ADMINS, JOB_NOTIFY_IN_APP})


def install_dead_fallback(kinds: tuple[str, ...]) -> list[str]:
    """Give each kind without its own `on_dead` handler the fallback; return those kinds."""
    added = []
    for kind in kinds:
        if kind not in outbox.DEAD_HANDLERS and kind not in NO_FALLBACK_KINDS:
            outbox.DEAD_HANDLERS[kind] = dead_fallback
            added.append(kind)
    return added


def dead_fallback(services: Services, job: OutboxJob) -> None:
    """A job of a kind with no `on_dead` of its own ran out of retries: its refund is flagged
    for review (admins alerted, the flag projected), or without a refund the admins are told."""
    reason = f"background job {job.kind} gave up after {job.attempts} attempt(s): {job.last_error}"
    if flag_job_refund(services, job, reason[:500]):
        return
    with services.store.session() as session:
        enqueue_admin_alert(
            session,
            dedupe_key=f"dead-job:{job.id}",
            subject=f"refund-bridge: background job {job.kind} gave up",
            message=f"Outbox job {job.id} ({job.kind}, key {job.dedupe_key}): {reason}.",
        )


# -- the worker ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerOptions:
    poll_seconds: float = 0.5
    lease_seconds: int = 30
    batch_size: int = BATCH_SIZE
    stale_scan_seconds: float = STALE_SCAN_MAX_SECONDS
    housekeeping: bool = True

    @classmethod
    def from_settings(cls, settings: Settings) -> WorkerOptions:
        return cls(
            poll_seconds=settings.worker_poll_seconds,
            lease_seconds=settings.worker_lease_seconds,
            # Often enough that a refund is looked at soon after it turns stale.
            stale_scan_seconds=max(
                1.0, min(STALE_SCAN_MAX_SECONDS, settings.pending_stale_seconds / 2)
            ),
        )


class Worker:
    """Drains the outbox and runs the periodic checks until `stop()`."""

    def __init__(self, services: Services, options: WorkerOptions | None = None) -> None:
        self.services = services
        self.options = options or WorkerOptions.from_settings(services.settings)
        # Unique per process start: a restarted worker never mistakes old leases for its own.
        self.owner = f"{outbox.worker_id()}:{secrets.token_hex(3)}"
        self.kinds = tuple(sorted(outbox.HANDLERS))
        self.stopping = threading.Event()
        self._draining = threading.Lock()
        self._pause_until = 0.0
        self._store_failures = 0
        self._directus_down = False
        self._next_probe = 0.0
        self.scheduler: BackgroundScheduler | None = None
        self.jobs_run = 0

    # The periodic jobs; each catches its own failures so that one bad tick is one log line.

    def drain_due(self) -> int:
        """Run due jobs until none is due or the worker stops; return how many ran."""
        if not self._draining.acquire(blocking=False):
            return 0  # the previous tick is still draining
        ran = 0
        try:
            if self.stopping.is_set() or time.monotonic() < self._pause_until:
                return 0
            kinds = self._claimable_kinds()
            if not outbox.is_due(self.services, kinds=kinds):
                self._store_ok()
                return 0
            while not self.stopping.is_set():
                ids = outbox.claim(
                    self.services,
                    owner=self.owner,
                    limit=self.options.batch_size,
                    lease_seconds=self.options.lease_seconds,
                    kinds=kinds,
                )
                if not ids:
                    break
                states, directus_down = outbox.run_batch(
                    self.services, ids, owner=self.owner, should_stop=self.stopping.is_set
                )
                ran += len(states)
                self.jobs_run += len(states)
                if directus_down and not self._directus_down:
                    self._directus_down = True
                    self._next_probe = time.monotonic() + DIRECTUS_PROBE_SECONDS
                    log.warning("Directus does not answer: its jobs wait until it does")
                    kinds = self._claimable_kinds()
            self._store_ok()
        except SQLAlchemyError as exc:
            self._store_failed(exc)
        except Exception:
            log.exception("draining the outbox failed")
        finally:
            self._draining.release()
        return ran

    def _claimable_kinds(self) -> tuple[str, ...]:
        """Every kind this worker handles; without the Directus ones while Directus is down
        (pinged every DIRECTUS_PROBE_SECONDS; once it answers, the jobs that failed for
        want of it are due at once instead of after their backoff)."""
        if not self._directus_down:
            return self.kinds
        if time.monotonic() >= self._next_probe:
            if self.services.directus.ping():
                self._directus_down = False
                pulled = outbox.pull_forward(self.services, outbox.UNAVAILABLE_PREFIX)
                log.info("Directus answers again: %d waiting job(s) are due now", pulled)
                return self.kinds
            self._next_probe = time.monotonic() + DIRECTUS_PROBE_SECONDS
        return tuple(kind for kind in self.kinds if kind not in registry.DIRECTUS_KINDS)

    def renew_leases(self) -> None:
        try:
            outbox.renew_leases(self.services, self.owner, self.options.lease_seconds)
        except SQLAlchemyError as exc:
            log.warning("renewing leases failed: %s", _store_error(exc))

    def scan_pending_refunds(self) -> None:
        from bridge.webhooks import stripe_check

        try:
            queued = stripe_check.enqueue_stale_checks(self.services)
        except SQLAlchemyError as exc:
            log.warning("scanning stale PENDING refunds failed: %s", _store_error(exc))
            return
        except Exception:
            log.exception("scanning stale PENDING refunds failed")
            return
        if queued:
            log.info("queued %d check(s) of stale PENDING refunds", queued)

    def scan_waiting_refunds(self) -> None:
        from bridge.refunds import approval

        try:
            reminded = approval.enqueue_reminders(self.services)
        except SQLAlchemyError as exc:
            log.warning("scanning refunds waiting for approval failed: %s", _store_error(exc))
            return
        except Exception:
            log.exception("scanning refunds waiting for approval failed")
            return
        if reminded:
            log.info("reminded the admins of %d refund(s) waiting for approval", reminded)

    def housekeeping(self) -> None:
        from bridge.store import housekeeping

        try:
            housekeeping.run(self.services, should_stop=self.stopping.is_set)
        except SQLAlchemyError as exc:
            log.warning("housekeeping failed: %s", _store_error(exc))
        except Exception:
            log.exception("housekeeping failed")

    def _store_ok(self) -> None:
        if self._store_failures:
            log.info("the store answers again")
        self._store_failures = 0

    def _store_failed(self, exc: SQLAlchemyError) -> None:
        # Back off while the store is down, so a dead database is not a log line per poll.
        self._store_failures += 1
        pause = min(STORE_ERROR_PAUSE_MAX, self.options.poll_seconds * 2**self._store_failures)
        self._pause_until = time.monotonic() + pause
        log.warning("the store is not answering (retry in %.1f s): %s", pause, _store_error(exc))

    # Running.

    def start(self) -> None:
        """Start the scheduler's threads (returns at once)."""
        options = self.options
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=6)},
            job_defaults={"coalesce": True, "misfire_grace_time": 30},
            timezone=UTC,
        )
        now = datetime.now(UTC)
        # max_instances=2: a tick during a long drain starts, finds the drain lock taken and
        # returns, instead of APScheduler logging a skipped run every poll.
        scheduler.add_job(
            self.drain_due,
            "interval",
            seconds=options.poll_seconds,
            id="outbox",
            max_instances=2,
            next_run_time=now,
        )
        scheduler.add_job(
            self.renew_leases, "interval", seconds=max(1.0, options.lease_seconds / 3), id="leases"
        )
        scheduler.add_job(
            self.scan_pending_refunds,
            "interval",
            seconds=options.stale_scan_seconds,
            id="pending_refunds",
            next_run_time=now,
        )
        scheduler.add_job(
            self.scan_waiting_refunds,
            "interval",
            seconds=options.stale_scan_seconds,
            id="waiting_refunds",
            next_run_time=now,
        )
        if options.housekeeping:
            scheduler.add_job(
                self.housekeeping,
                "interval",
                seconds=HOUSEKEEPING_EVERY.total_seconds(),
                id="housekeeping",
                next_run_time=now + HOUSEKEEPING_FIRST_DELAY,
            )
        scheduler.start()
        self.scheduler = scheduler

    def stop(self) -> None:
        """Ask the worker to stop: no new job starts; the one in hand finishes."""
        self.stopping.set()

    def shutdown(self) -> None:
        """Wait for the running jobs (the job in hand), then hand back what was claimed."""
        self.stopping.set()
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=True)
        try:
            released = outbox.release_leases(self.services, self.owner)
        except SQLAlchemyError as exc:
            log.warning("handing back claimed jobs failed (their leases expire): %s", exc)
        else:
            if released:
                log.info("handed back %d claimed job(s)", released)

    def run_until_stopped(self) -> None:
        self.start()
        # A bounded wait in a loop: the main thread stays responsive to signals.
        while not self.stopping.wait(1.0):
            pass
        log.info("worker stopping: finishing the job in hand")
        self.shutdown()

    def run_once(self) -> int:
        """Every due job and each periodic check once, in this thread; return jobs run."""
        self.scan_pending_refunds()
        self.scan_waiting_refunds()
        if self.options.housekeeping:
            self.housekeeping()
        return self.drain_due()


def install_signal_handlers(worker: Worker) -> None:
    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if worker.stopping.is_set():
            log.info("already stopping (signal %s)", signal.Signals(signum).name)
            return
        log.info("received %s", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


def run_worker(
    settings: Settings,
    *,
    migrate: bool = True,
    once: bool = False,
    batch_size: int | None = None,
) -> int:
    """The `refund-bridge worker` process; returns its exit code (0 after a clean stop).

    Raises WorkerStartError with a one-line reason when it cannot start.
    """
    from bridge.logs import configure_logging

    configure_logging(settings.log_level, settings)  # with its secrets redacted
    if settings.log_level != "DEBUG":
        # APScheduler logs every run of every job at INFO: twice a second here.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
    services = build_services(settings)
    lock: SingleWorkerLock | None = None
    try:
        path = sqlite_path(services.store)
        if path is not None:
            lock = SingleWorkerLock(path)
            lock.acquire()
        prepare_store(services.store, migrate=migrate)
        registry.register_all()
        from bridge.metrics import count_ledger_changes

        count_ledger_changes()  # before any job runs (the metrics are built on first use)
        # Process-wide, so only in the worker process (where jobs run out of retries).
        install_dead_fallback(tuple(sorted(outbox.HANDLERS)))
        options = WorkerOptions.from_settings(settings)
        if batch_size is not None:
            options = dataclasses.replace(options, batch_size=batch_size)
        worker = Worker(services, options)
        log.info(
            "worker %s started",
            worker.owner,
            extra={
                "kinds": list(worker.kinds),
                "store": services.store.engine.dialect.name,
            },
        )
        if once:
            ran = worker.run_once()
            log.info("ran %d job(s)", ran)
            return 0
        install_signal_handlers(worker)
        from bridge.metrics import start_worker_exporter

        start_worker_exporter(settings, services.store)  # when BRIDGE_WORKER_METRICS_PORT is set
        worker.run_until_stopped()
        log.info("worker stopped after %d job(s)", worker.jobs_run)
        return 0
    finally:
        services.close()
        if lock is not None:
            lock.release()
