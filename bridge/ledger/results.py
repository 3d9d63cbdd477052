"""Applying a refund result (REFUNDED or FAILED) to the ledger: the state machine of contract
section 3, shared by the webhook inbox (source `webhook`) and the worker's Stripe reconciliation
(source `reconciliation`).

Pure ledger work inside the caller's session (one transaction): the status change, the review
flags, and the outbox jobs that carry the result to the outside (the order's two fields in
Directus, the refunds item, the notification Flow, admin alerts). Nothing here talks to the
outside, so a result is applied the same way whether Directus is up or not.

The rules:
- REFUNDED: PENDING or FAILED -> REFUNDED; `refunded_amount_cents` is the amount RideNDine
  reports (a different amount than requested is taken as refunded and flagged for review);
  FAILED -> REFUNDED is flagged too (ledger.transition). Then the order is updated, the item
  projected and the customer, chef and admins told, once each.
- FAILED: PENDING -> FAILED with the failure reason; the order is left as it was; projected and
  told. A FAILED after REFUNDED changes no state: the refund is flagged and admins alerted, the
  order stays untouched.
- A result that repeats the current status changes nothing and tells nobody again.
- A result for a REQUESTED or DENIED refund (never sent) changes nothing and flags it.

Every review flag newly set here also sends one admin alert, so a refund that needs a person is
never only a flag in a table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy.orm import Session

from bridge.directus.notify import enqueue_notify_result
from bridge.directus.order_status import enqueue_apply_order
from bridge.directus.projection import enqueue_projection
from bridge.ledger import ledger
from bridge.ledger.review import alert_review, flag_for_review
from bridge.store.models import Refund, RefundStatus

RESULT_STATUSES = (RefundStatus.REFUNDED, RefundStatus.FAILED)
DEFAULT_FAILURE_REASON = "RideNDine reported that the refund failed"
MAX_FAILURE_REASON = 1000
# The reason ledger.transition records when a FAILED refund becomes REFUNDED.
REFUNDED_AFTER_FAILED = "refunded after it had failed"


@dataclass
class ResultOutcome:
    """What applying one result did to one refund."""

    refund_id: str
    status_before: str
    status_after: str
    changed: bool
    review_reasons: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)


def apply_result(
    session: Session,
    refund: Refund,
    status: str,
    *,
    amount_cents: int | None,
    source: str,
    failure_reason: str | None = None,
    detail: str | None = None,
) -> ResultOutcome:
    """Apply RideNDine's (or Stripe's) final word on `refund`; see the module docstring."""
    if status not in RESULT_STATUSES:
        raise ValueError(f"not a refund result: {status!r}")
    outcome = ResultOutcome(
        refund_id=refund.id, status_before=refund.status, status_after=refund.status, changed=False
    )

    def flag(reason: str) -> None:
        if flag_for_review(session, refund, reason, source=source, project=False):
            outcome.review_reasons.append(reason)

    if refund.status in (RefundStatus.REQUESTED, RefundStatus.DENIED):
        # Never sent to RideNDine (waiting for, or refused by, an admin): a result for it is
        # the partner contradicting the ledger; a person decides, no state moves.
        flag(f"RideNDine reported {status} for a refund that was never sent ({refund.status})")
    elif status == RefundStatus.REFUNDED:
        if refund.status == RefundStatus.REFUNDED:
            reported = amount_cents if amount_cents is not None else refund.refunded_amount_cents
            if reported != refund.refunded_amount_cents:
                flag(
                    f"a second REFUNDED result reports {reported} cents, "
                    f"{refund.refunded_amount_cents} were recorded"
                )
        else:
            refunded = amount_cents if amount_cents is not None else refund.amount_cents
            refund.refunded_amount_cents = refunded
            ledger.transition(refund, RefundStatus.REFUNDED, source=source, detail=detail)
            outcome.changed = True
            if outcome.status_before == RefundStatus.FAILED:
                # ledger.transition flagged it; admins hear of it too.
                alert_review(session, refund, REFUNDED_AFTER_FAILED)
                outcome.review_reasons.append(REFUNDED_AFTER_FAILED)
            if refunded != refund.amount_cents:
                flag(f"RideNDine refunded {refunded} cents, {refund.amount_cents} were requested")
            outcome.jobs += _enqueue_result_jobs(session, refund, RefundStatus.REFUNDED)
    else:
        if refund.status == RefundStatus.PENDING:
            refund.failure_reason = (
                ledger.clean_text(failure_reason, MAX_FAILURE_REASON) or DEFAULT_FAILURE_REASON
            )
            ledger.transition(refund, RefundStatus.FAILED, source=source, detail=detail)
            outcome.changed = True
            outcome.jobs += _enqueue_result_jobs(session, refund, RefundStatus.FAILED)
        elif refund.status == RefundStatus.REFUNDED:
            # Forward only: the money moved and the order was updated; a person decides.
            flag("RideNDine reported FAILED after the refund had been REFUNDED")
        # FAILED again: nothing new.

    if outcome.review_reasons and not outcome.changed:
        # The flag changed the refund's item in Directus even though the status did not.
        enqueue_projection(session, refund)
        outcome.jobs.append("project_refund")
    outcome.status_after = refund.status
    return outcome


def _enqueue_result_jobs(session: Session, refund: Refund, status: str) -> list[str]:
    jobs = []
    if status == RefundStatus.REFUNDED:
        enqueue_apply_order(session, refund)
        jobs.append("apply_order")
    enqueue_projection(session, refund)
    enqueue_notify_result(session, refund, status)
    jobs += ["project_refund", "notify_result"]
    return jobs
