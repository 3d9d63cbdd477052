"""Flagging a refund for review: the ledger's flag, one admin alert per refund and reason, and
the refund's Directus item updated so that the flag shows there (docs/refunds.md).

Here, not in ledger/, because it queues Directus jobs: the ledger imports nothing of directus/
(docs/architecture.md)."""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from bridge.directus.alerts import enqueue_admin_alert
from bridge.directus.in_app import enqueue_in_app_notification
from bridge.directus.projection import enqueue_projection
from bridge.ledger import ledger
from bridge.ledger.money import format_amount
from bridge.store.models import OutboxJob, Refund

if TYPE_CHECKING:
    from bridge.services import Services


def flag_for_review(
    session: Session, refund: Refund, reason: str, *, source: str, project: bool = True
) -> bool:
    """Flag the refund for review and alert the admins, once per refund and reason; with
    `project`, also queue the refund's Directus item update (the flag shows there)."""
    if not ledger.mark_for_review(refund, reason, source=source):
        return False
    alert_review(session, refund, reason)
    if project:
        enqueue_projection(session, refund)
    return True


def alert_review(session: Session, refund: Refund, reason: str) -> None:
    """The admins' alert for a review reason, by e-mail and in the Directus app
    (deduplicated per refund and reason)."""
    digest = hashlib.sha256(reason.encode()).hexdigest()[:16]
    subject = f"Refund {refund.id} on order {refund.order_id} needs review"
    message = (
        f"Refund {refund.id} of order {refund.order_id} "
        f"({format_amount(refund.amount_cents, refund.currency)} requested, "
        f"status {refund.status}) needs a person: {reason}."
    )
    enqueue_admin_alert(
        session,
        dedupe_key=f"review:{refund.id}:{digest}",
        subject=subject,
        message=message,
        refund_id=refund.id,
    )
    enqueue_in_app_notification(
        session, refund, dedupe_key=f"review:{refund.id}:{digest}", subject=subject, message=message
    )


def flag_job_refund(services: Services, job: OutboxJob, reason: str) -> bool:
    """Flag the refund of a job that gave up (its own transaction); False when it has none."""
    with services.store.session() as session:
        refund = session.get(Refund, job.refund_id) if job.refund_id else None
        if refund is None:
            return False
        flag_for_review(session, refund, reason, source=ledger.SOURCE_WORKER)
        return True
