"""The durable inbox of refund-status webhooks: recording, deduplication and matching.

Recording (`record`): one transaction writes the InboxEvent (raw body, webhook id, the headers
worth keeping) and a `process_event` outbox job leased to the request; only then is the webhook
answered 200. A duplicate (the same `webhook-id`, or the same `refund_id` with the same status)
is recognised by the table's unique constraints, also between concurrent deliveries, and
changes nothing.

Processing, in two outbox jobs so that the webhook's answer never waits for Directus and a crash
never loses an event:
- `process_event` (dedupe `event:<id>`, run inline right after the commit): matches the event to
  a refund of the ledger (by RideNDine's refund id, else the oldest PENDING refund of the order
  with that amount) and applies the result (bridge/ledger/results.py). No match: `resolve_event`.
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
import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from bridge import metrics
from bridge.directus.alerts import enqueue_admin_alert
from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.ledger.review import flag_for_review
from bridge.store.db import lock_order
from bridge.store.models import (
    InboxEvent,
    InboxState,
    OutboxJob,
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


def record(
    services: Services,
    *,
    webhook_id: str,
    payload: dict[str, Any],
    raw_body: bytes,
    headers: dict[str, str],
    owner: str,
    process: bool = False,
) -> Recorded:
    """Record a verified, valid event with its `process_event` job leased to `owner`, or
    recognise a duplicate. Raises InboxUnavailable when the store cannot record it.

    With `process`, the job's work (matching and applying to the ledger, local only) runs in
    the same transaction and the job is recorded done: one write transaction per webhook
    instead of four, which is what the single SQLite writer makes the webhook's answer wait
    for. That work runs under a savepoint: if it fails, the event is still recorded with its
    job leased to `owner` (`process_inline` then tries it again, and the worker after the
    lease)."""
    key = dedupe_key(payload)
    processed = False
    try:
        with services.store.session() as session:
            existing = session.scalar(
                select(InboxEvent.id)
                .where(or_(InboxEvent.webhook_id == webhook_id, InboxEvent.dedupe_key == key))
                .limit(1)
            )
            if existing is not None:
                return Recorded(existing, duplicate=True)
            event = InboxEvent(
                webhook_id=webhook_id,
                dedupe_key=key,
                ridendine_refund_id=payload["refund_id"],
                external_order_id=payload["external_order_id"],
                amount_cents=payload["amount_cents"],
                status=payload["status"],
                payload=payload,
                raw_body=raw_body,
                headers=headers,
                state=InboxState.RECEIVED,
                attempts=0,
                received_at=utcnow(),
            )
            session.add(event)
            session.flush()
            event_id = event.id
            job_id = outbox.enqueue(
                session,
                JOB_PROCESS_EVENT,
                f"event:{event.id}",
                payload={"event_id": event.id},
                lease_to=owner,
            )
            if process and job_id is not None:
                try:
                    with session.begin_nested():
                        _process(services, session, event)
                        outbox.mark_done(session, job_id, owner=owner)
                    processed = True
                except Exception:
                    log.exception("processing inbox event %s while recording failed", event_id)
    except IntegrityError:
        # A concurrent delivery of the same event won the unique constraint.
        return Recorded(None, duplicate=True)
    except SQLAlchemyError as exc:
        log.error("the inbox could not record a webhook: %s", type(exc).__name__)
        raise InboxUnavailable(type(exc).__name__) from exc
    if processed:
        metrics.outbox_job_run(JOB_PROCESS_EVENT, "done")
    return Recorded(event_id, duplicate=False, job_id=None if processed else job_id)


def process_inline(services: Services, recorded: Recorded, *, owner: str) -> None:
    """Apply a just-recorded event to the ledger now (local work only). A failure leaves the
    job to the worker once the lease runs out; the event is recorded either way."""
    if recorded.job_id is None:
        return
    try:
        outbox.run_now(services, recorded.job_id, owner=owner)
    except Exception:
        log.exception("inline processing of inbox event %s failed", recorded.event_id)


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
            names.collection, order_id, fields=["id", "ridendine_order_id", names.currency]
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
