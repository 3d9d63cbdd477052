"""The transactional outbox: work that talks to the outside, done at least once.

A job is written in the same transaction as the ledger change that needs it, so nothing is lost
when a process dies between the two. `dedupe_key` makes enqueueing idempotent (one RideNDine
submission per refund, one notification per refund result).

Running a job: `claim` takes due jobs under a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, so
several workers never take the same job; SQLite has one writer anyway); `run_job` calls the
handler registered for the job's kind. A handler returns normally (done), raises `RetryLater`
(try again after the backoff, or after the delay it gives), or raises `GiveUp` (dead at once).
Any other exception is a retry too, logged. A job whose schedule runs out (more than 24 hours of
retries) is dead: `on_dead` handlers flag the refund and alert admins.

`drain` runs every due job until none is left: the function the worker calls on every tick.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Table, and_, bindparam, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from bridge import logs, metrics
from bridge.store.driver import Transaction
from bridge.store.models import OutboxJob, OutboxState, utcnow

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

# Delays between attempts, in seconds: seconds first, then hours (in the spirit of Stripe's and
# Svix's schedules). Their sum is about 27 hours; each delay gets +-20 % jitter.
BACKOFF_SCHEDULE: tuple[int, ...] = (
    5,
    30,
    120,
    300,
    900,
    1800,
    3600,
    7200,
    3 * 3600,
    4 * 3600,
    5 * 3600,
    5 * 3600,
    5 * 3600,
)
MAX_ATTEMPTS = len(BACKOFF_SCHEDULE) + 1
DEFAULT_LEASE_SECONDS = 60
JITTER = 0.2

Handler = Callable[["Services", OutboxJob], None]
DeadHandler = Callable[["Services", OutboxJob], None]
# A batch handler does several claimed jobs of its kind at once (one Directus request for many
# jobs) and says how each ended: None (done) or the exception its single handler would raise.
# `context` is shared by the handlers of one claimed batch (e.g. the orders read once).
BatchHandler = Callable[["Services", list[OutboxJob], dict[str, Any]], dict[int, Exception | None]]
HANDLERS: dict[str, Handler] = {}
DEAD_HANDLERS: dict[str, DeadHandler] = {}
BATCH_HANDLERS: dict[str, BatchHandler] = {}
# Batch kinds run in this order within a claimed batch (the order's update before the e-mail
# that shows it); kinds not listed run after them.
BATCH_ORDER: list[str] = []
# last_error of a job that failed only because a dependency did not answer: the worker pulls
# such jobs forward once the dependency answers again (bridge/worker.py).
UNAVAILABLE_PREFIX = "Directus unavailable"


# Jobs the running handler recorded done itself (`complete_in`), per `run_job` call.
_completed_in_handler: ContextVar[set[int] | None] = ContextVar(
    "outbox_completed_in_handler", default=None
)


class RetryLater(Exception):
    """The job could not be done now; try again (after `delay` seconds when given)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


class GiveUp(Exception):
    """The job can never succeed: it is dead at once (on_dead handlers still run)."""


class DirectusDown(RetryLater):
    """Directus did not answer at all: retried, and the worker stops sending Directus work
    until Directus answers again (then these jobs are pulled forward)."""

    def __init__(self, message: str) -> None:
        super().__init__(f"{UNAVAILABLE_PREFIX}: {message}")


def register(
    kind: str,
    handler: Handler,
    *,
    on_dead: DeadHandler | None = None,
    batch: BatchHandler | None = None,
) -> None:
    """Say which functions do jobs of `kind` (bridge/jobs/registry.py lists every kind)."""
    HANDLERS[kind] = handler
    if on_dead is not None:
        DEAD_HANDLERS[kind] = on_dead
    if batch is not None:
        BATCH_HANDLERS[kind] = batch
        if kind not in BATCH_ORDER:
            BATCH_ORDER.append(kind)


def batch_handler(kind: str) -> Callable[[BatchHandler], BatchHandler]:
    """Register the function that does several jobs of `kind` at once (the worker uses it
    for the jobs of a claimed batch; `run_job` keeps using the single handler)."""

    def register(func: BatchHandler) -> BatchHandler:
        BATCH_HANDLERS[kind] = func
        if kind not in BATCH_ORDER:
            BATCH_ORDER.append(kind)
        return func

    return register


def handler(kind: str) -> Callable[[Handler], Handler]:
    """Register the function that does jobs of `kind`."""

    def register(func: Handler) -> Handler:
        HANDLERS[kind] = func
        return func

    return register


def on_dead(kind: str) -> Callable[[DeadHandler], DeadHandler]:
    """Register what happens when a job of `kind` runs out of retries."""

    def register(func: DeadHandler) -> DeadHandler:
        DEAD_HANDLERS[kind] = func
        return func

    return register


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def backoff_delay(attempts: int, rng: random.Random | None = None) -> float | None:
    """Seconds to wait after the `attempts`-th failed attempt; None when the schedule is done."""
    if attempts < 1 or attempts > len(BACKOFF_SCHEDULE):
        return None
    base = BACKOFF_SCHEDULE[attempts - 1]
    jitter = (rng or random).uniform(-JITTER, JITTER)
    return base * (1 + jitter)


def enqueue(
    session: Transaction,
    kind: str,
    dedupe_key: str,
    *,
    refund_id: str | None = None,
    payload: dict[str, Any] | None = None,
    run_at: datetime | None = None,
    lease_to: str | None = None,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
) -> int | None:
    """Add a job unless one with `dedupe_key` exists; return the new job's id or None.

    With `lease_to`, the job is born claimed by that owner (a web request that will try it
    inline right after commit); if that process dies, the lease expires and a worker takes it.
    """
    now = utcnow()
    values: dict[str, Any] = {
        "kind": kind,
        "dedupe_key": dedupe_key,
        "refund_id": refund_id,
        "payload": payload or {},
        "state": OutboxState.PENDING,
        "attempts": 0,
        "next_attempt_at": run_at or now,
        "created_at": now,
        "updated_at": now,
        "locked_by": lease_to or None,
        "locked_until": now + timedelta(seconds=lease_seconds) if lease_to else None,
    }
    dialect = session.get_bind().dialect.name
    return session.execute(_enqueue_statement(dialect), values).scalar()


_JOBS = cast(Table, OutboxJob.__table__)
# Statements of the hot paths, built once (their SQL is compiled once and cached; building
# them per call was a good part of a refund request's CPU: docs/performance.md). Core, not
# ORM statements: nothing of the session's unit of work is involved.
_ENQUEUE: dict[str, Any] = {}


def _enqueue_statement(dialect: str) -> Any:
    statement = _ENQUEUE.get(dialect)
    if statement is None:
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        statement = (
            insert(_JOBS)
            .on_conflict_do_nothing(index_elements=["dedupe_key"])
            .returning(_JOBS.c.id)
        )
        _ENQUEUE[dialect] = statement
    return statement


def _due_filter(now: datetime) -> Any:
    return (
        (OutboxJob.state == OutboxState.PENDING)
        & (OutboxJob.next_attempt_at <= now)
        & or_(OutboxJob.locked_until.is_(None), OutboxJob.locked_until < now)
    )


def claim(
    services: Services,
    *,
    owner: str | None = None,
    limit: int = 20,
    lease_seconds: int = DEFAULT_LEASE_SECONDS,
    kinds: tuple[str, ...] | None = None,
) -> list[int]:
    """Take up to `limit` due jobs under a lease; return their ids, oldest first."""
    owner = owner or worker_id()
    now = utcnow()
    with services.store.session() as session:
        query = (
            select(OutboxJob.id)
            .where(_due_filter(now))
            .order_by(OutboxJob.next_attempt_at, OutboxJob.id)
            .limit(limit)
        )
        if kinds:
            query = query.where(OutboxJob.kind.in_(kinds))
        if session.get_bind().dialect.name == "postgresql":
            query = query.with_for_update(skip_locked=True)
        ids = list(session.scalars(query))
        if ids:
            session.execute(
                update(OutboxJob)
                .where(OutboxJob.id.in_(ids))
                .values(locked_by=owner, locked_until=now + timedelta(seconds=lease_seconds))
            )
    return ids


def run_job(
    services: Services,
    job_id: int,
    *,
    owner: str | None = None,
    known: OutboxJob | None = None,
    handler: Handler | None = None,
) -> str:
    """Do one claimed job; return its state afterwards (`done`, `pending` or `dead`).

    `known`: the job as its owner just enqueued it (`run_now`), not read back first.
    `handler`: instead of the registered one, for this attempt only (`run_now`)."""
    owner = owner or worker_id()
    job: OutboxJob | None = known
    if job is None:
        with services.store.read_session() as session:
            job = session.get(OutboxJob, job_id)
            if job is None or job.state != OutboxState.PENDING or job.locked_by != owner:
                return job.state if job is not None else "missing"
            session.expunge(job)
    func = handler or HANDLERS.get(job.kind)
    outcome: Exception | None = None
    completed: set[int] = set()
    token = _completed_in_handler.set(completed)
    try:
        if func is None:
            raise GiveUp(f"no handler for job kind {job.kind!r}")
        # Every log line of the job names it and its refund.
        with logs.bound(refund_id=job.refund_id, job_id=job.id, job_kind=job.kind):
            func(services, job)
    except Exception as exc:  # noqa: BLE001 - every failure is the job's outcome (finish)
        outcome = exc
    finally:
        _completed_in_handler.reset(token)
    if outcome is None and job.id in completed:
        metrics.outbox_job_run(job.kind, OutboxState.DONE)  # recorded by the handler
        return OutboxState.DONE
    return finish(services, job, owner, outcome)


def finish(services: Services, job: OutboxJob, owner: str, outcome: Exception | None) -> str:
    """Record how an attempt of `job` ended (None: done; RetryLater, GiveUp, or any other
    exception, which is a retry and is logged); return the job's state afterwards."""
    error: str | None = None
    delay: float | None = None
    give_up = False
    if isinstance(outcome, RetryLater):
        error, delay = str(outcome) or "retry later", outcome.delay
    elif isinstance(outcome, GiveUp):
        error, give_up = str(outcome) or "gave up", True
    elif outcome is not None:
        error = f"{type(outcome).__name__}: {outcome}"
        log.warning(
            "outbox job failed",
            exc_info=outcome,
            extra={"job_id": job.id, "kind": job.kind, "refund_id": job.refund_id},
        )
    return _finish(services, job, owner, error=error, delay=delay, give_up=give_up)


def finish_done(services: Services, jobs: list[OutboxJob], owner: str) -> list[int]:
    """Mark jobs done in one transaction (a batch that succeeded); return the ids recorded
    (a job whose lease another worker took meanwhile is left to it)."""
    if not jobs:
        return []
    now = utcnow()
    ids = [job.id for job in jobs]
    with services.store.session() as session:
        done = list(
            session.scalars(
                update(OutboxJob)
                .where(_pending_held_by(owner, ids))
                .values(**_done_values(now))
                .returning(OutboxJob.id)
            )
        )
    kinds = {job.id: job.kind for job in jobs}
    for job_id in done:
        metrics.outbox_job_run(kinds[job_id], OutboxState.DONE)
    return done


def run_batch(
    services: Services,
    job_ids: list[int],
    *,
    owner: str,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[dict[int, str], bool]:
    """Do claimed jobs: those of kinds with a batch handler together, kind by kind in
    BATCH_ORDER, then the rest one by one. Return each job's state afterwards, and whether
    a batch found Directus down (`DirectusDown`). Jobs not started because `should_stop()`
    turned true are handed back (their leases cleared)."""
    with services.store.read_session() as session:
        jobs = list(
            session.scalars(
                select(OutboxJob).where(_pending_held_by(owner, job_ids)).order_by(OutboxJob.id)
            )
        )
        for job in jobs:
            session.expunge(job)
    states: dict[int, str] = {}
    # "finished": jobs a batch handler recorded itself as it went (their state here).
    context: dict[str, Any] = {"jobs": jobs, "owner": owner, "finished": {}}
    for kind in BATCH_ORDER:
        group = [job for job in jobs if job.kind == kind]
        if not group:
            continue
        if should_stop():
            break
        states.update(_run_group(services, kind, group, owner, context))
    for job in jobs:
        if job.id in states or job.kind in BATCH_HANDLERS:
            continue
        if should_stop():
            break
        states[job.id] = run_job(services, job.id, owner=owner)
    left = [job_id for job_id in job_ids if job_id not in states]
    if left:
        release_leases(services, owner, left)
    return states, bool(context.get("directus_down"))


def _run_group(
    services: Services, kind: str, jobs: list[OutboxJob], owner: str, context: dict[str, Any]
) -> dict[int, str]:
    try:
        outcomes = BATCH_HANDLERS[kind](services, jobs, context)
    except Exception as exc:  # noqa: BLE001 - the batch handler failed: every job gets that
        outcomes = {job.id: exc for job in jobs}
    if any(isinstance(outcome, DirectusDown) for outcome in outcomes.values()):
        context["directus_down"] = True
    states: dict[int, str] = {}
    finished: dict[int, str] = context.get("finished", {})
    for job in jobs:
        if job.id in finished:
            states[job.id] = finished[job.id]
    succeeded = [
        job
        for job in jobs
        if job.id not in states and outcomes.get(job.id, RetryLater("no outcome")) is None
    ]
    for job_id in finish_done(services, succeeded, owner):
        states[job_id] = OutboxState.DONE
    for job in jobs:
        if job.id in states:
            continue
        outcome = outcomes.get(job.id, RetryLater("the batch gave no outcome"))
        if outcome is None:
            states[job.id] = "lost_lease"
            continue
        states[job.id] = finish(services, job, owner, outcome)
    return states


def _finish(
    services: Services,
    job: OutboxJob,
    owner: str,
    *,
    error: str | None,
    delay: float | None,
    give_up: bool,
) -> str:
    now = utcnow()
    attempts = job.attempts + 1
    values: dict[str, Any] = {
        "attempts": attempts,
        "locked_by": None,
        "locked_until": None,
        "updated_at": now,
    }
    if error is None:
        values.update(state=OutboxState.DONE, done_at=now, last_error=None)
    else:
        wait = None if give_up else (delay if delay is not None else backoff_delay(attempts))
        if wait is not None:
            wait = max(wait, 1.0)  # never busy-loop on a job that keeps failing
        if wait is None or attempts >= MAX_ATTEMPTS:
            values.update(state=OutboxState.DEAD, last_error=error[:2000], done_at=now)
        else:
            values.update(
                state=OutboxState.PENDING,
                last_error=error[:2000],
                next_attempt_at=now + timedelta(seconds=wait),
            )
    with services.store.session() as session:
        result = session.execute(
            update(OutboxJob)
            .where(OutboxJob.id == job.id, OutboxJob.locked_by == owner)
            .values(**values)
        )
        if result.rowcount == 0:  # type: ignore[attr-defined]
            # The lease ran out and another worker took the job; its outcome will be recorded.
            return "lost_lease"
    state = str(values["state"])
    metrics.outbox_job_run(job.kind, state)
    if state == OutboxState.DEAD:
        log.error(
            "outbox job is dead after %d attempt(s): %s",
            attempts,
            error,
            extra={"job_id": job.id, "kind": job.kind, "refund_id": job.refund_id},
        )
        dead = DEAD_HANDLERS.get(job.kind)
        if dead is not None:
            job.attempts, job.last_error = attempts, error
            try:
                dead(services, job)
            except Exception:
                log.exception("on_dead handler failed", extra={"job_id": job.id})
    return state


def mark_done(session: Transaction, job_id: int, *, owner: str) -> bool:
    """Record a leased job done in the caller's transaction (its work was done in that same
    transaction, so the two commit together or not at all); False when `owner` no longer
    holds it."""
    result = session.execute(_MARK_DONE, {"job_id": job_id, "owner": owner, "now": utcnow()})
    return bool(result.rowcount)


_NOW = bindparam("now", type_=_JOBS.c.updated_at.type)
_MARK_DONE = (
    update(_JOBS)
    .where(_JOBS.c.id == bindparam("job_id"), _JOBS.c.locked_by == bindparam("owner"))
    .values(
        state=OutboxState.DONE.value,
        attempts=_JOBS.c.attempts + 1,
        locked_by=None,
        locked_until=None,
        updated_at=_NOW,
        done_at=_NOW,
        last_error=None,
    )
)


def keep_lease(
    session: Transaction, job_id: int, *, owner: str, lease_seconds: int = DEFAULT_LEASE_SECONDS
) -> bool:
    """Renew, in the caller's transaction, the lease of a pending job `owner` holds; False when
    it no longer holds it (the lease ran out and a worker took the job, or it is done)."""
    values = {
        "job_id": job_id,
        "owner": owner,
        "until": utcnow() + timedelta(seconds=lease_seconds),
    }
    return bool(session.execute(_KEEP_LEASE, values).rowcount)


_KEEP_LEASE = (
    update(_JOBS)
    .where(
        _JOBS.c.id == bindparam("job_id"),
        _JOBS.c.locked_by == bindparam("owner"),
        _JOBS.c.state == OutboxState.PENDING.value,
    )
    .values(locked_until=bindparam("until", type_=_JOBS.c.locked_until.type))
)


def _done_values(now: datetime) -> dict[str, Any]:
    """The columns of a job recorded done (its lease released)."""
    return {
        "state": OutboxState.DONE,
        "attempts": OutboxJob.attempts + 1,
        "locked_by": None,
        "locked_until": None,
        "updated_at": now,
        "done_at": now,
        "last_error": None,
    }


def _pending_held_by(owner: str, job_ids: list[int]) -> ColumnElement[bool]:
    """Those of `job_ids` still pending under `owner`'s lease."""
    return and_(
        OutboxJob.id.in_(job_ids),
        OutboxJob.locked_by == owner,
        OutboxJob.state == OutboxState.PENDING,
    )


def pending_job_ids(
    session: Transaction, kind: str, refund_id: str | None, *, owner: str | None, exclude: int
) -> list[int]:
    """The refund's pending jobs of `kind` that nobody else holds: the ones a run of a job that
    does the same work from the current state may complete (`complete_superseded`)."""
    if refund_id is None:
        return []
    values = {"kind": kind, "refund_id": refund_id, "owner": owner, "exclude": exclude}
    return list(session.scalars(_PENDING_OF_REFUND, values))


def complete_superseded(services: Services, job_ids: list[int], *, owner: str | None) -> int:
    """Record done the jobs whose work another job just did (see `pending_job_ids`); one that a
    worker claimed meanwhile is left to it (it does the same work again, harmlessly)."""
    if not job_ids:
        return 0
    with services.store.session() as session:
        return complete_superseded_in(session, job_ids, owner=owner)


def complete_superseded_in(session: Transaction, job_ids: list[int], *, owner: str | None) -> int:
    """`complete_superseded` in the caller's transaction."""
    if not job_ids:
        return 0
    values = {"job_ids": job_ids, "owner": owner, "now": utcnow()}
    done = list(session.scalars(_COMPLETE_SUPERSEDED, values))
    # Not counted in the job-run metrics: these jobs never ran (their attempts stay 0).
    return len(done)


# Free, or held by the bindparam "owner" (None: free only; `= NULL` is never true).
_FREE_OR_HELD = or_(_JOBS.c.locked_by.is_(None), _JOBS.c.locked_by == bindparam("owner"))
_PENDING_OF_REFUND = select(_JOBS.c.id).where(
    _JOBS.c.kind == bindparam("kind"),
    _JOBS.c.refund_id == bindparam("refund_id"),
    _JOBS.c.state == OutboxState.PENDING.value,
    _JOBS.c.id != bindparam("exclude"),
    _FREE_OR_HELD,
)
_COMPLETE_SUPERSEDED = (
    update(_JOBS)
    .where(
        _JOBS.c.id.in_(bindparam("job_ids", expanding=True)),
        _JOBS.c.state == OutboxState.PENDING.value,
        _FREE_OR_HELD,
    )
    .values(
        state=OutboxState.DONE.value,
        locked_by=None,
        locked_until=None,
        updated_at=_NOW,
        done_at=_NOW,
        last_error="superseded: a later run did the same work",
    )
    .returning(_JOBS.c.id)
)


def complete_in(session: Transaction, job: OutboxJob) -> bool:
    """Record the running `job` done in the handler's own (last) transaction, so that
    `run_job` needs no transaction of its own to finish it. If that transaction does not
    commit, or the handler raises afterwards, the job ends as usual (retried)."""
    if job.locked_by is None or not mark_done(session, job.id, owner=job.locked_by):
        return False
    completed = _completed_in_handler.get()
    if completed is not None:
        completed.add(job.id)
    return True


def run_now(
    services: Services,
    job_id: int | None,
    *,
    owner: str,
    kind: str | None = None,
    refund_id: str | None = None,
    handler: Handler | None = None,
) -> str | None:
    """Try a job the caller holds the lease of (enqueued with `lease_to=owner`) right away.

    With the `kind` (and `refund_id`) it was enqueued with, the job is not read back first:
    its owner committed it moments ago, leased to itself, so it is pending and nobody else may
    run it before the lease runs out (a read per job of a refund request: docs/performance.md).
    `handler` does this attempt instead of the registered one: a function of the caller's that
    uses what the caller already holds; a retry runs the registered handler as usual.
    """
    if job_id is None:
        return None
    known = None
    if kind is not None:
        known = OutboxJob(
            id=job_id,
            kind=kind,
            refund_id=refund_id,
            payload={},
            state=OutboxState.PENDING,
            attempts=0,
            locked_by=owner,
        )
    return run_job(services, job_id, owner=owner, known=known, handler=handler)


def drain(services: Services, *, limit: int | None = None, batch: int = 20) -> int:
    """Run due jobs until none is left (or `limit` ran); return how many ran."""
    owner = worker_id()
    ran = 0
    while limit is None or ran < limit:
        size = batch if limit is None else min(batch, limit - ran)
        ids = claim(services, owner=owner, limit=size)
        if not ids:
            break
        for job_id in ids:
            run_job(services, job_id, owner=owner)
            ran += 1
    return ran


def pull_forward(services: Services, error_prefix: str) -> int:
    """Make due now the pending jobs whose last attempt failed with `error_prefix` (a
    dependency that answers again); return how many."""
    now = utcnow()
    with services.store.session() as session:
        result = session.execute(
            update(OutboxJob)
            .where(
                OutboxJob.state == OutboxState.PENDING,
                OutboxJob.next_attempt_at > now,
                OutboxJob.last_error.startswith(error_prefix, autoescape=True),
            )
            .values(next_attempt_at=now)
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def pending_count(session: Session) -> int:
    from sqlalchemy import func

    return int(
        session.scalar(
            select(func.count())
            .select_from(OutboxJob)
            .where(OutboxJob.state == OutboxState.PENDING)
        )
        or 0
    )


# -- for the worker process (bridge/worker.py) ----------------------------------------------


def is_due(services: Services, *, kinds: tuple[str, ...] | None = None) -> bool:
    """Whether any job is due now: one indexed query, what an idle worker polls."""
    query = select(OutboxJob.id).where(_due_filter(utcnow())).limit(1)
    if kinds:
        query = query.where(OutboxJob.kind.in_(kinds))
    with services.store.read_session() as session:
        return session.scalar(query) is not None


def renew_leases(services: Services, owner: str, lease_seconds: int) -> int:
    """Extend the leases `owner` holds (its claimed batch, the job in hand); return how many.

    A live worker keeps its jobs however long a job takes; a dead one stops renewing, and its
    jobs are taken over once the lease runs out.
    """
    with services.store.session() as session:
        result = session.execute(
            update(OutboxJob)
            .where(OutboxJob.locked_by == owner, OutboxJob.state == OutboxState.PENDING)
            .values(locked_until=utcnow() + timedelta(seconds=lease_seconds))
        )
        return int(result.rowcount)  # type: ignore[attr-defined]


def release_leases(services: Services, owner: str, job_ids: list[int] | None = None) -> int:
    """Give back jobs `owner` claimed but will not run (a worker stopping); return how many."""
    with services.store.session() as session:
        statement = update(OutboxJob).where(
            OutboxJob.locked_by == owner, OutboxJob.state == OutboxState.PENDING
        )
        if job_ids is not None:
            statement = statement.where(OutboxJob.id.in_(job_ids))
        result = session.execute(statement.values(locked_by=None, locked_until=None))
        return int(result.rowcount)  # type: ignore[attr-defined]
