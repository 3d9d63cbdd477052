"""Applying a matched refund-status webhook to the ledger (bridge/ledger/results.py), for the
inbox's jobs and for the Stripe check's (docs/webhooks.md)."""

from __future__ import annotations

import logging

from sqlalchemy.orm import Session

from bridge.directus.alerts import enqueue_admin_alert
from bridge.ledger import ledger
from bridge.ledger.results import apply_result
from bridge.ledger.review import flag_for_review
from bridge.store.models import InboxEvent, InboxState, Refund, utcnow

log = logging.getLogger(__name__)


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
