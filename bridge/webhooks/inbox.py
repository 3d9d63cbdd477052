"""The durable inbox of refund-status webhooks: recording, deduplication and matching.

Recording (`record`): the InboxEvent (raw body, webhook id, the headers worth keeping) and its
`process_event` outbox job are committed before the webhook is answered 200; deliveries
arriving together share one transaction (group commit, bridge/store/group_commit.py). A
duplicate (the same `webhook-id`, or the same `refund_id` with the same status) is recognised
by the table's unique constraints (ON CONFLICT DO NOTHING), also between concurrent
deliveries, and changes nothing.

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

import json
import logging
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, cast

import psycopg
from sqlalchemy import select
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

# How long a delivery may wait to be taken into a group before it is answered 503 (the store's
# write lock held elsewhere all that time; the partner redelivers). It is then withdrawn, never
# written: nothing is recorded that was not answered 200.
RECORD_TIMEOUT_SECONDS = 20.0
# Deliveries written in one transaction at most (a group rarely holds more than the process's
# request threads).
MAX_GROUP = 64


@dataclass(frozen=True)
class Delivery:
    """A verified, valid webhook, as its request hands it to the inbox's group writer."""

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

    Deliveries arriving together are written in one transaction (group commit, leader and
    followers: bridge/store/group_commit.py), the events deduplicated by the table's unique
    constraints (ON CONFLICT DO NOTHING). Matching and applying are the worker's
    (`process_event`, a batch at a time): the answer waits only for the record
    (docs/webhooks.md)."""
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
                    after=store.after_write,
                )
                store.writers[_WRITER_KEY] = writer
    return cast("GroupWriter[Delivery, Recorded]", writer)


def write_deliveries(store: Store, deliveries: list[Delivery]) -> list[Recorded | BaseException]:
    """Write a group of deliveries in one transaction, with the store's own driver connection
    (`Store.driver_write`: SQLAlchemy's per-statement work was a good part of a webhook's CPU,
    docs/performance.md); one outcome per delivery."""
    outcomes: list[Recorded | BaseException | None] = [None] * len(deliveries)
    fresh: list[Delivery] = []
    seen_ids: set[str] = set()
    seen_keys: set[str] = set()
    for index, delivery in enumerate(deliveries):
        key = dedupe_key(delivery.payload)
        if delivery.webhook_id in seen_ids or key in seen_keys:
            outcomes[index] = Recorded(None, duplicate=True)  # the same event twice at once
            continue
        seen_ids.add(delivery.webhook_id)
        seen_keys.add(key)
        fresh.append(delivery)
    try:
        if not fresh:
            written: dict[str, tuple[int, int | None]] = {}
        elif store.dialect == "sqlite":
            written = _write_sqlite(store, fresh)
        else:
            written = _write_postgresql(store, fresh)
    except Exception as exc:
        # The partner is answered 503 and delivers again; nothing of the group was recorded.
        log.exception("the inbox could not record %d webhook(s)", len(fresh))
        failed = InboxUnavailable(type(exc).__name__)
        return [failed] * len(deliveries)
    for index, delivery in enumerate(deliveries):
        if outcomes[index] is None:
            event_id, job_id = written.get(delivery.webhook_id, (None, None))
            outcomes[index] = Recorded(event_id, duplicate=event_id is None, job_id=job_id)
    return cast("list[Recorded | BaseException]", outcomes)


def _event_values(delivery: Delivery, received_at: Any) -> tuple[Any, ...]:
    """An event's values, in `_EVENT_COLUMNS` order (JSON columns as their text)."""
    payload = delivery.payload
    return (
        delivery.webhook_id,
        dedupe_key(payload),
        payload["refund_id"],
        payload["external_order_id"],
        payload["amount_cents"],
        payload["status"],
        json.dumps(payload),
        delivery.raw_body,
        json.dumps(delivery.headers),
        InboxState.RECEIVED.value,
        0,  # attempts
        received_at,
    )


# The columns an event is written with (the others are NULL: refund_id, next_attempt_at,
# last_error, processed_at); a test checks the rows equal what the ORM would write.
_EVENT_COLUMNS = (
    "webhook_id, dedupe_key, ridendine_refund_id, external_order_id, amount_cents, status,"
    " payload, raw_body, headers, state, attempts, received_at"
)
_JOB_COLUMNS = "kind, dedupe_key, payload, state, attempts, next_attempt_at, created_at, updated_at"


def _sqlite_timestamp(moment: datetime) -> str:
    """A UTC datetime as SQLAlchemy stores it on SQLite (models.UTCDateTime)."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def _write_sqlite(store: Store, deliveries: list[Delivery]) -> dict[str, tuple[int, int | None]]:
    """The group's two INSERTs on SQLite, in one transaction under the store's write lock:
    the events (a duplicate of either unique key skipped), then the jobs of those inserted.
    Returns {webhook id: (event id, job id)} of the events inserted."""
    now = _sqlite_timestamp(utcnow())
    params = [value for d in deliveries for value in _event_values(d, now)]
    events_sql = (
        f"INSERT INTO inbox_events ({_EVENT_COLUMNS}) "  # noqa: S608 (our names, values bound)
        f"VALUES {', '.join([_SQLITE_EVENT_MARKS] * len(deliveries))} "
        "ON CONFLICT DO NOTHING RETURNING id, webhook_id"
    )
    with store.driver_write() as connection:
        inserted = connection.execute(events_sql, params).fetchall()
        if not inserted:
            return {}
        job_params: list[Any] = []
        for event_id, _webhook_id in inserted:
            job_params += (JOB_PROCESS_EVENT, f"event:{event_id}", f'{{"event_id": {event_id}}}')
            job_params += (OutboxState.PENDING.value, 0, now, now, now)
        jobs_sql = (
            f"INSERT INTO outbox_jobs ({_JOB_COLUMNS}) "  # noqa: S608 (our names, values bound)
            f"VALUES {', '.join(['(?, ?, ?, ?, ?, ?, ?, ?)'] * len(inserted))} "
            "ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key"
        )
        jobs = {dedupe: job_id for job_id, dedupe in connection.execute(jobs_sql, job_params)}
    return {
        str(webhook_id): (int(event_id), jobs.get(f"event:{event_id}"))
        for event_id, webhook_id in inserted
    }


_SQLITE_EVENT_MARKS = "(" + ", ".join("?" * len(_EVENT_COLUMNS.split(","))) + ")"
# PostgreSQL: JSON columns take their text with a cast.
_PG_EVENT_MARKS = "(%s, %s, %s, %s, %s, %s, %s::json, %s, %s::json, %s, %s, %s)"
# The events, then their jobs, in one statement (one round trip, one transaction).
_PG_RECORD_SQL = """
WITH events AS (
    INSERT INTO inbox_events ({events}) VALUES {marks}
    ON CONFLICT DO NOTHING RETURNING id, webhook_id
), jobs AS (
    INSERT INTO outbox_jobs ({jobs})
    SELECT %s, 'event:' || events.id, json_build_object('event_id', events.id), %s, 0, %s, %s, %s
    FROM events
    ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key
)
SELECT events.id, events.webhook_id, jobs.id
FROM events LEFT JOIN jobs ON jobs.dedupe_key = 'event:' || events.id
"""


def _write_postgresql(
    store: Store, deliveries: list[Delivery]
) -> dict[str, tuple[int, int | None]]:
    """What `_write_sqlite` does, in one statement (a data-modifying WITH), in autocommit."""
    now = utcnow()
    params = [value for d in deliveries for value in _event_values(d, now)]
    params += (JOB_PROCESS_EVENT, OutboxState.PENDING.value, now, now, now)
    sql = _PG_RECORD_SQL.format(
        events=_EVENT_COLUMNS,
        jobs=_JOB_COLUMNS,
        marks=", ".join([_PG_EVENT_MARKS] * len(deliveries)),
    )
    try:
        with store.driver_write() as connection:
            rows = connection.execute(sql, params).fetchall()
    except psycopg.OperationalError as exc:
        # The connection was cut (a server restart, an idle timeout): once more, on a new one.
        # Nothing is written twice: a statement is all or nothing, and if the first did commit
        # the unique keys make this one find duplicates.
        log.warning("the inbox's PostgreSQL connection failed (%s); trying a new one", exc)
        with store.driver_write() as connection:
            rows = connection.execute(sql, params).fetchall()
    return {str(webhook_id): (int(event_id), job_id) for event_id, webhook_id, job_id in rows}


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


# Events applied in one transaction by the worker at most: short enough that a webhook's
# record never waits long for SQLite's write lock behind it.
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
