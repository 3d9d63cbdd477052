"""The durable inbox of refund-status webhooks: recording, deduplication and matching.

Recording (`record`): the InboxEvent (raw body, webhook id, the headers worth keeping) and its
`process_event` outbox job are committed before the webhook is answered 200, by the process's
inbox writer, which writes the deliveries queued meanwhile in one transaction (group commit,
bridge/store/group_commit.py). A duplicate (the same `webhook-id`, or the same `refund_id` with the
same status) is recognised by the table's unique constraints (ON CONFLICT DO NOTHING), also
between concurrent deliveries, and changes nothing.

Processing, in two outbox jobs so that the webhook's answer waits for neither the ledger nor
Directus and a crash never loses an event:
- `process_event` (dedupe `event:<id>`, run by the worker, a batch of events a transaction):
  matches the event to a refund of the ledger (by RideNDine's refund id, else the oldest
  PENDING refund of the order with that amount) and applies the result (bridge/ledger/results.py).
  No match: `resolve_event`.
- `resolve_event` (dedupe `resolve:<id>`, run by the worker): matches again (the refund may have
  learnt its RideNDine id meanwhile), waits a little while a submission of that order is still
  in flight, then asks Directus about the order: a known order gets a refund of source
  `ridendine` (started outside COOCO), flagged for review, applied and reported to admins; an
  unknown order leaves the event UNMATCHED, retried with backoff (admins are told after
  UNMATCHED_ALERT_AFTER attempts) and never dropped. `refund-bridge inbox replay` runs it again
  once an operator fixed the data.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

from sqlalchemy import Connection, Table, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from bridge import logs, metrics
from bridge.directus.alerts import enqueue_admin_alert
from bridge.directus.review import flag_for_review
from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.store.db import Store, lock_order
from bridge.store.group_commit import GroupWriter, WriterTimeout
from bridge.store.models import (
    InboxEvent,
    InboxState,
    OutboxJob,
    OutboxState,
    Refund,
    RefundSource,
    RefundStatus,
    utcnow,
)
from bridge.webhooks import stripe_check
from bridge.webhooks.apply import apply_event
from directus_client import DirectusError

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

JOB_PROCESS_EVENT = "process_event"
JOB_RESOLVE_EVENT = "resolve_event"
# Resolve attempts while the order is unknown before the admins are told (about 8 minutes).
UNMATCHED_ALERT_AFTER = 5
# Resolve attempts that wait for a refund of the order whose RideNDine id is not known yet
# (its submission is in flight) before the event is taken as a refund started outside COOCO.
IN_FLIGHT_WAIT_ATTEMPTS = 3
# Headers kept with the event (for operators and audits); never Authorization.
STORED_HEADERS = (
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "content-type",
    "content-length",
    "user-agent",
    "x-request-id",
)
MAX_HEADER_VALUE = 1000
OUTSIDE_REVIEW_REASON = "started outside COOCO: first seen in a RideNDine webhook"


class InboxUnavailable(Exception):
    """The store could not record the event (the webhook is answered 503 and redelivered)."""


class EventNotFound(LookupError):
    pass


class NothingToReplay(Exception):
    pass


@dataclass(frozen=True)
class Recorded:
    event_id: int | None
    duplicate: bool
    job_id: int | None = None


def dedupe_key(payload: dict[str, Any]) -> str:
    return f"{payload['refund_id']}:{payload['status']}"


def stored_headers(headers: Any) -> dict[str, str]:
    kept = {}
    for name in STORED_HEADERS:
        value = headers.get(name)
        if value:
            kept[name] = str(value)[:MAX_HEADER_VALUE]
    return kept


# -- recording -------------------------------------------------------------------------------

# How long a request waits for its group to be written before it answers 503 (the partner
# redelivers; a late commit then makes the redelivery a duplicate, never a loss).
RECORD_TIMEOUT_SECONDS = 20.0
# Deliveries written in one transaction at most (the queue rarely holds more than the
# process's request threads).
MAX_GROUP = 64


@dataclass(frozen=True)
class Delivery:
    """A verified, valid webhook, as the request thread hands it to the inbox's writer."""

    webhook_id: str
    payload: dict[str, Any]
    raw_body: bytes
    headers: dict[str, str]


def record(
    services: Services,
    *,
    webhook_id: str,
    payload: dict[str, Any],
    raw_body: bytes,
    headers: dict[str, str],
) -> Recorded:
    """Record a verified, valid event with its `process_event` job, or recognise a duplicate;
    return once it is committed. Raises InboxUnavailable when the store cannot record it.

    The write goes through the process's inbox writer (bridge/store/group_commit.py): one thread
    that writes whatever deliveries are queued in one transaction, two statements for the
    whole group (the events, deduplicated by the table's unique constraints with ON CONFLICT
    DO NOTHING, then their jobs). Matching and applying are the worker's (`process_event`,
    a batch at a time): the answer waits only for the record (docs/webhooks.md)."""
    delivery = Delivery(webhook_id, payload, raw_body, headers)
    try:
        return _writer(services.store).submit(delivery, timeout=RECORD_TIMEOUT_SECONDS)
    except WriterTimeout as exc:
        log.error("the inbox could not record a webhook: %s", exc)
        raise InboxUnavailable("timeout") from exc


_WRITER_KEY = "inbox"
_writer_lock = threading.Lock()


def _writer(store: Store) -> GroupWriter[Delivery, Recorded]:
    writer = store.writers.get(_WRITER_KEY)
    if writer is None:
        with _writer_lock:
            writer = store.writers.get(_WRITER_KEY)
            if writer is None:
                writer = GroupWriter(
                    lambda group: write_deliveries(store, group),
                    max_group=MAX_GROUP,
                    name="inbox-writer",
                )
                store.writers[_WRITER_KEY] = writer
    return cast("GroupWriter[Delivery, Recorded]", writer)


def write_deliveries(store: Store, deliveries: list[Delivery]) -> list[Recorded | BaseException]:
    """Write a group of deliveries in one transaction; one outcome per delivery."""
    outcomes: list[Recorded | BaseException | None] = [None] * len(deliveries)
    fresh: list[int] = []
    seen_ids: set[str] = set()
    seen_keys: set[str] = set()
    for index, delivery in enumerate(deliveries):
        key = dedupe_key(delivery.payload)
        if delivery.webhook_id in seen_ids or key in seen_keys:
            outcomes[index] = Recorded(None, duplicate=True)  # the same event twice at once
            continue
        seen_ids.add(delivery.webhook_id)
        seen_keys.add(key)
        fresh.append(index)
    now = utcnow()
    events = [_event_row(deliveries[index], now) for index in fresh]
    try:
        with store.engine.begin() as connection:
            if connection.dialect.name == "sqlite":
                inserted, job_ids = _write_sqlite(connection, events, now)
            else:
                inserted, job_ids = _write_core(connection, events, now)
    except (SQLAlchemyError, sqlite3.Error) as exc:
        log.error("the inbox could not record %d webhook(s): %s", len(fresh), type(exc).__name__)
        failed = InboxUnavailable(type(exc).__name__)
        return [failed] * len(deliveries)
    for index in fresh:
        event_id = inserted.get(deliveries[index].webhook_id)
        job_id = job_ids.get(f"event:{event_id}") if event_id is not None else None
        outcomes[index] = Recorded(event_id, duplicate=event_id is None, job_id=job_id)
    return [outcome if outcome is not None else Recorded(None, True) for outcome in outcomes]


def _write_core(
    connection: Connection, events: list[dict[str, Any]], now: datetime
) -> tuple[dict[str, int], dict[str, int]]:
    """The group's two INSERTs through SQLAlchemy (PostgreSQL): what `_write_sqlite` does."""
    table = cast(Table, InboxEvent.__table__)
    # executemany with RETURNING: SQLAlchemy sends it as one multi-row INSERT per batch, from
    # a statement compiled once (its "insertmanyvalues").
    rows = connection.execute(
        pg_insert(table)
        .on_conflict_do_nothing()  # either unique key: a duplicate
        .returning(table.c.id, table.c.webhook_id),
        events,
    )
    inserted = {str(row.webhook_id): int(row.id) for row in rows}
    if not inserted:
        return inserted, {}
    jobs = cast(Table, OutboxJob.__table__)
    rows = connection.execute(
        pg_insert(jobs)
        .on_conflict_do_nothing(index_elements=["dedupe_key"])
        .returning(jobs.c.id, jobs.c.dedupe_key),
        [_job_row(event_id, now) for event_id in inserted.values()],
    )
    return inserted, {str(row.dedupe_key): int(row.id) for row in rows}


# Per table and dialect: its columns in order and each one's bind processor (SQLAlchemy's own
# conversion of a Python value for the driver: JSON, datetimes, ...).
_processors: dict[tuple[str, str], list[tuple[str, Any]]] = {}


def _insert_returning(
    connection: Connection, table: Table, rows: list[dict[str, Any]], conflict: str, returned: str
) -> list[tuple[Any, ...]]:
    """One multi-row `INSERT ... ON CONFLICT ... DO NOTHING RETURNING id, <returned>` sent
    with the driver's own cursor, in the connection's transaction: the values converted by
    the columns' own bind processors, as SQLAlchemy would, without its per-statement and
    per-row work (a good part of a webhook's CPU on SQLite: docs/performance.md)."""
    dialect = connection.dialect
    key = (table.name, dialect.name)
    columns = _processors.get(key)
    if columns is None:
        columns = [
            (column.name, column.type.dialect_impl(dialect).bind_processor(dialect))
            for column in table.c
            if not column.primary_key
        ]
        _processors[key] = columns
    params: list[Any] = []
    for row in rows:
        for name, process in columns:
            value = row[name]
            params.append(process(value) if process is not None else value)
    marks = "(" + ", ".join("?" * len(columns)) + ")"
    # Names from our own table metadata; every value is bound.
    sql = (
        f"INSERT INTO {table.name} ({', '.join(name for name, _ in columns)}) "  # noqa: S608
        f"VALUES {', '.join([marks] * len(rows))} "
        f"ON CONFLICT {conflict} DO NOTHING RETURNING id, {returned}"
    )
    cursor = connection.connection.driver_connection.cursor()  # type: ignore[union-attr]
    try:
        return list(cursor.execute(sql, params).fetchall())
    finally:
        cursor.close()


def _write_sqlite(
    connection: Connection, events: list[dict[str, Any]], now: datetime
) -> tuple[dict[str, int], dict[str, int]]:
    """The group's two INSERTs on SQLite (in the transaction `connection` began, under the
    store's write lock): the events (a duplicate of either unique key is skipped), then the
    jobs of those inserted. Returns {webhook id: event id}, {job dedupe key: job id}."""
    if not events:
        return {}, {}
    rows = _insert_returning(
        connection, cast(Table, InboxEvent.__table__), events, "", "webhook_id"
    )
    inserted = {str(webhook_id): int(event_id) for event_id, webhook_id in rows}
    if not inserted:
        return inserted, {}
    jobs = [_job_row(event_id, now) for event_id in inserted.values()]
    rows = _insert_returning(
        connection, cast(Table, OutboxJob.__table__), jobs, "(dedupe_key)", "dedupe_key"
    )
    return inserted, {str(dedupe): int(job_id) for job_id, dedupe in rows}


def _event_row(delivery: Delivery, now: datetime) -> dict[str, Any]:
    payload = delivery.payload
    return {
        "webhook_id": delivery.webhook_id,
        "dedupe_key": dedupe_key(payload),
        "ridendine_refund_id": payload["refund_id"],
        "external_order_id": payload["external_order_id"],
        "amount_cents": payload["amount_cents"],
        "status": payload["status"],
        "payload": payload,
        "raw_body": delivery.raw_body,
        "headers": delivery.headers,
        "state": InboxState.RECEIVED,
        "refund_id": None,
        "attempts": 0,
        "next_attempt_at": None,
        "last_error": None,
        "received_at": now,
        "processed_at": None,
    }


def _job_row(event_id: int, now: datetime) -> dict[str, Any]:
    return {
        "kind": JOB_PROCESS_EVENT,
        "dedupe_key": f"event:{event_id}",
        "refund_id": None,
        "payload": {"event_id": event_id},
        "state": OutboxState.PENDING,
        "attempts": 0,
        "next_attempt_at": now,
        "locked_until": None,
        "locked_by": None,
        "last_error": None,
        "created_at": now,
        "updated_at": now,
        "done_at": None,
    }


def new_owner(prefix: str) -> str:
    return f"{outbox.worker_id()}:{prefix}:{uuid.uuid4().hex[:12]}"


# -- matching and applying -------------------------------------------------------------------


def match_local(session: Session, event: InboxEvent) -> Refund | None:
    """The refund of the ledger this event is about, if any (contract section 3)."""
    refund = session.scalar(
        select(Refund)
        .where(Refund.ridendine_refund_id == event.ridendine_refund_id)
        .with_for_update()
    )
    if refund is not None:
        return refund
    refund = session.scalar(
        select(Refund)
        .where(
            Refund.order_id == event.external_order_id,
            Refund.status == RefundStatus.PENDING,
            Refund.amount_cents == event.amount_cents,
            Refund.ridendine_refund_id.is_(None),
        )
        .order_by(Refund.created_at, Refund.id)
        .limit(1)
        .with_for_update()
    )
    if refund is not None:
        refund.ridendine_refund_id = event.ridendine_refund_id
    return refund


def _submission_in_flight(session: Session, order_id: str) -> bool:
    """A PENDING refund of the order whose RideNDine id is not known yet."""
    found = session.scalar(
        select(Refund.id)
        .where(
            Refund.order_id == order_id,
            Refund.status == RefundStatus.PENDING,
            Refund.ridendine_refund_id.is_(None),
        )
        .limit(1)
    )
    return found is not None


def _apply_or_hold(services: Services, session: Session, event: InboxEvent, refund: Refund) -> None:
    """Apply the event, except a REFUNDED that first waits for Stripe's word (when a Stripe key
    is set): its `verify_refunded` job applies it (bridge/webhooks/stripe_check.py)."""
    if refund.order_id == event.external_order_id and stripe_check.hold_refunded(
        services, session, event, refund
    ):
        return
    apply_event(session, event, refund)


def _currency(value: Any) -> str | None:
    """An ISO 4217 code (three letters), upper case, or None."""
    if isinstance(value, str) and len(value.strip()) == 3 and value.strip().isalpha():
        return value.strip().upper()
    return None


def _outside_refund(
    services: Services, session: Session, event: InboxEvent, order: dict[str, Any]
) -> Refund:
    """Record a refund RideNDine made without a request from COOCO (flagged, reported)."""
    payload = event.payload or {}
    names = services.settings.order_fields
    currency = _currency(payload.get("currency_code")) or _currency(order.get(names.currency))
    refund = Refund(
        order_id=event.external_order_id,
        ridendine_order_id=ledger.clean_text(order.get("ridendine_order_id"), 255),
        amount_cents=event.amount_cents,
        order_paid_cents=ledger.as_cents(order.get(names.amount_paid)),
        currency=currency or services.settings.default_currency,
        reason=ledger.clean_text(payload.get("reason"), 64) or "unspecified",
        reason_comments=ledger.clean_text(payload.get("reason_comments"), 500),
        requested_by="ridendine",
        status=RefundStatus.PENDING,
        ridendine_refund_id=event.ridendine_refund_id,
        source=RefundSource.RIDENDINE,
        needs_review=False,
        created_at=utcnow(),
        updated_at=utcnow(),
    )
    session.add(refund)
    ledger.record_created(
        refund,
        source=ledger.SOURCE_WEBHOOK,
        detail=f"first seen in webhook {event.webhook_id} (inbox event {event.id})",
    )
    flag_for_review(session, refund, OUTSIDE_REVIEW_REASON, source=ledger.SOURCE_WEBHOOK)
    return refund


def _load_event(session: Session, job: OutboxJob) -> InboxEvent:
    event_id = job.payload.get("event_id")
    event = session.get(InboxEvent, event_id) if isinstance(event_id, int) else None
    if event is None:
        raise outbox.GiveUp(f"inbox event {event_id!r} does not exist")
    return event


def process_event(services: Services, job: OutboxJob) -> None:
    with services.store.session() as session:
        event = _load_event(session, job)
        if event.state != InboxState.RECEIVED:
            return
        _process(services, session, event)


# Events applied in one transaction by the worker at most: short enough that a web process's
# inbox writer never waits long for SQLite's write lock behind it.
PROCESS_CHUNK = 25


def process_events(
    services: Services, jobs: list[OutboxJob], context: dict[str, Any]
) -> dict[int, Exception | None]:
    """The worker's `process_event` jobs, PROCESS_CHUNK events a transaction: each event
    under a savepoint, its job recorded done in the same transaction as its work (so the two
    commit together or not at all). An event whose work fails is rolled back alone and its
    job ends as the single handler's would (retried, or dead after its schedule)."""
    owner = str(context["owner"])
    finished: dict[int, str] = context.setdefault("finished", {})
    outcomes: dict[int, Exception | None] = {}
    for start in range(0, len(jobs), PROCESS_CHUNK):
        chunk = jobs[start : start + PROCESS_CHUNK]
        done: list[OutboxJob] = []
        try:
            with services.store.session() as session:
                for job in chunk:
                    try:
                        with session.begin_nested():
                            event = _load_event(session, job)
                            if event.state == InboxState.RECEIVED:
                                with logs.bound(job_id=job.id, job_kind=job.kind):
                                    _process(services, session, event)
                            if not outbox.mark_done(session, job.id, owner=owner):
                                raise outbox.RetryLater("the lease was lost")
                        done.append(job)
                    except Exception as exc:  # noqa: BLE001 - the job's outcome
                        outcomes[job.id] = exc
        except Exception as exc:  # noqa: BLE001 - the commit failed: nothing of it happened
            for job in chunk:
                outcomes.setdefault(job.id, exc)
            continue
        for job in done:
            finished[job.id] = OutboxState.DONE
            metrics.outbox_job_run(JOB_PROCESS_EVENT, OutboxState.DONE)
    return outcomes


def _process(services: Services, session: Session, event: InboxEvent) -> None:
    """The `process_event` job's work on a RECEIVED event, in the caller's transaction."""
    if _apply_if_matched(services, session, event):
        return
    event.last_error = "no refund of the ledger matches yet; the order is checked in Directus"
    outbox.enqueue(
        session, JOB_RESOLVE_EVENT, f"resolve:{event.id}", payload={"event_id": event.id}
    )


def _apply_if_matched(services: Services, session: Session, event: InboxEvent) -> bool:
    """Count a processing attempt, and apply the event when a refund of the ledger matches it."""
    event.attempts += 1
    lock_order(session, event.external_order_id)
    refund = match_local(session, event)
    if refund is None:
        return False
    _apply_or_hold(services, session, event, refund)
    return True


def resolve_event(services: Services, job: OutboxJob) -> None:
    replay = bool(job.payload.get("replay"))
    retry: outbox.RetryLater | None = None
    with services.store.session() as session:
        event = _load_event(session, job)
        if event.state == InboxState.APPLIED or (event.state == InboxState.FAILED and not replay):
            return
        if _apply_if_matched(services, session, event):
            return
        order_id = event.external_order_id
        if job.attempts < IN_FLIGHT_WAIT_ATTEMPTS and _submission_in_flight(session, order_id):
            retry = _retry(
                event, job, f"waiting for the RideNDine refund id of order {order_id}'s refunds"
            )
    if retry is not None:
        raise retry

    names = services.settings.order_fields
    try:
        order = services.directus.find_item(
            names.collection,
            order_id,
            fields=["id", "ridendine_order_id", names.currency, names.amount_paid],
        )
    except DirectusError as exc:
        with services.store.session() as session:
            event = _load_event(session, job)
            retry = _retry(event, job, f"Directus: {type(exc).__name__}: {exc.message}")
        raise retry from None

    with services.store.session() as session:
        event = _load_event(session, job)
        if event.state == InboxState.APPLIED:
            return
        lock_order(session, event.external_order_id)
        refund = match_local(session, event)
        if refund is None and order is not None:
            refund = _outside_refund(services, session, event, order)
        if refund is not None:
            _apply_or_hold(services, session, event, refund)
            return
        event.state = InboxState.UNMATCHED
        retry = _retry(event, job, f"order {order_id} is not in Directus")
        if job.attempts + 1 >= UNMATCHED_ALERT_AFTER:
            enqueue_admin_alert(
                session,
                dedupe_key=f"unmatched:{event.id}",
                subject=f"Refund webhook for unknown order {order_id}",
                message=(
                    f"Inbox event {event.id}: RideNDine reports refund {event.ridendine_refund_id} "
                    f"{event.status} for {event.amount_cents} cents on order {order_id}, which "
                    "is not in Directus. It is kept and retried; after fixing the order, run "
                    f"`refund-bridge inbox replay {event.id}`."
                ),
            )
    raise retry


def _retry(event: InboxEvent, job: OutboxJob, reason: str) -> outbox.RetryLater:
    """Record why the event waits and when it is tried again; the caller raises it."""
    delay = outbox.backoff_delay(job.attempts + 1)
    event.last_error = reason
    event.next_attempt_at = utcnow() + timedelta(seconds=delay) if delay is not None else None
    return outbox.RetryLater(reason, delay=delay)


def event_dead(services: Services, job: OutboxJob) -> None:
    with services.store.session() as session:
        event_id = job.payload.get("event_id")
        event = session.get(InboxEvent, event_id) if isinstance(event_id, int) else None
        if event is None or event.state == InboxState.APPLIED:
            return
        if event.state != InboxState.UNMATCHED:
            event.state = InboxState.FAILED
        event.last_error = (job.last_error or "processing gave up")[:2000]
        event.next_attempt_at = None
        enqueue_admin_alert(
            session,
            dedupe_key=f"inbox-dead:{event.id}:{job.id}",
            subject=f"Refund webhook {event.id} could not be applied",
            message=(
                f"Inbox event {event.id} (RideNDine refund {event.ridendine_refund_id}, "
                f"{event.status}, order {event.external_order_id}) is {event.state}: "
                f"{event.last_error}. Fix the cause, then run "
                f"`refund-bridge inbox replay {event.id}`."
            ),
        )


# -- operators -------------------------------------------------------------------------------


def replay(services: Services, event_id: int) -> InboxEvent:
    """Run the matching of an event again now (after an operator fixed the data); return the
    event as it is afterwards. Directus work it causes is left to the worker."""
    owner = new_owner("replay")
    with services.store.session() as session:
        event = session.get(InboxEvent, event_id)
        if event is None:
            raise EventNotFound(f"inbox event {event_id} does not exist")
        if event.state == InboxState.APPLIED:
            raise NothingToReplay(
                f"inbox event {event_id} is already applied (to refund {event.refund_id})"
            )
        job_id = outbox.enqueue(
            session,
            JOB_RESOLVE_EVENT,
            f"resolve:{event.id}:replay:{uuid.uuid4().hex[:12]}",
            payload={"event_id": event.id, "replay": True},
            lease_to=owner,
        )
    outbox.run_now(services, job_id, owner=owner)
    with services.store.session() as session:
        event = session.get(InboxEvent, event_id)
        assert event is not None
        session.expunge(event)
    return event
