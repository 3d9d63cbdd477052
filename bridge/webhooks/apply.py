"""Applying a matched refund-status webhook to the ledger (bridge/ledger/results.py), for the
inbox's jobs and for the Stripe check's (docs/webhooks.md), and queueing the Directus jobs that
carry a result out."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from bridge.directus.alerts import enqueue_admin_alert
from bridge.directus.notify import enqueue_notify_result
from bridge.directus.order_status import enqueue_apply_order
from bridge.directus.projection import enqueue_projection
from bridge.directus.review import alert_review, flag_for_review
from bridge.ledger import ledger, results
from bridge.store.models import InboxEvent, InboxState, Refund, utcnow

log = logging.getLogger(__name__)


def apply_result(
    session: Session,
    refund: Refund,
    status: str,
    *,
    amount_cents: int | None,
    source: str,
    failure_reason: str | None = None,
    detail: str | None = None,
) -> results.ResultOutcome:
    """Apply a result to the ledger (bridge/ledger/results.py) and queue, in the same
    transaction, what its outcome asks for: one admin alert per new review reason, then the
    order's fields, the refunds item and the notification."""
    outcome = results.apply_to_ledger(
        refund,
        status,
        amount_cents=amount_cents,
        source=source,
        failure_reason=failure_reason,
        detail=detail,
    )
    for reason in outcome.review_reasons:
        alert_review(session, refund, reason)
    for job in outcome.jobs:
        if job == results.JOB_APPLY_ORDER:
            enqueue_apply_order(session, refund)
        elif job == results.JOB_PROJECT_REFUND:
            enqueue_projection(session, refund)
        elif job == results.JOB_NOTIFY_RESULT:
            enqueue_notify_result(session, refund, outcome.status_after)
        else:
            raise ValueError(f"no such result job: {job!r}")
    return outcome


def apply_event(session: Session, event: InboxEvent, refund: Refund) -> None:
    """Apply the event's result to `refund` (matched to it) and mark the event applied; an event
    whose refund belongs to another order is not applied but failed, and admins are told."""
    if refund.order_id != event.external_order_id:
        # RideNDine's refund id names a refund of another order: never apply that blindly.
        event.state = InboxState.FAILED
        event.last_error = (
            f"refund {refund.id} (RideNDine {event.ridendine_refund_id}) belongs to order "
            f"{refund.order_id}, the webhook says order {event.external_order_id}"
        )
        enqueue_admin_alert(
            session,
            dedupe_key=f"inbox-mismatch:{event.id}",
            subject=f"Refund webhook {event.id} names the wrong order",
            message=f"Inbox event {event.id} was not applied: {event.last_error}.",
            refund_id=refund.id,
        )
        return
    payload = event.payload or {}
    outcome = apply_result(
        session,
        refund,
        event.status,
        amount_cents=event.amount_cents,
        source=ledger.SOURCE_WEBHOOK,
        failure_reason=payload.get("failure_reason"),
        detail=f"webhook {event.webhook_id} (inbox event {event.id})",
    )
    currency = payload.get("currency_code")
    if isinstance(currency, str) and currency.strip().upper() != refund.currency.upper():
        flag_for_review(
            session,
            refund,
            f"RideNDine reports currency {currency.strip()[:8]!r}, the refund is in "
            f"{refund.currency}",
            source=ledger.SOURCE_WEBHOOK,
        )
    event.state = InboxState.APPLIED
    event.refund_id = refund.id
    event.processed_at = utcnow()
    event.next_attempt_at = None
    event.last_error = None
    log.info(
        "refund result applied",
        extra={
            "inbox_event_id": event.id,
            "refund_id": refund.id,
            "status_before": outcome.status_before,
            "status_after": outcome.status_after,
            "changed": outcome.changed,
        },
    )
