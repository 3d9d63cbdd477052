"""Applying a refund result (REFUNDED or FAILED) to the ledger: the state machine of contract
section 3, shared by the webhook inbox (source `webhook`) and the worker's Stripe reconciliation
(source `reconciliation`).

Pure ledger work on a refund of the caller's session (one transaction): the status change and
the review flags. The outcome names what must carry the result to the outside (the order's two
fields in Directus, the refunds item, the notification Flow, one admin alert per new review
reason); bridge/webhooks/apply.py's `apply_result` queues those jobs in the same transaction
(the ledger imports nothing of directus/). Nothing here talks to the outside, so a result is
applied the same way whether Directus is up or not.

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

from bridge.ledger import ledger
from bridge.store.models import Refund, RefundStatus

RESULT_STATUSES = (RefundStatus.REFUNDED, RefundStatus.FAILED)
DEFAULT_FAILURE_REASON = "RideNDine reported that the refund failed"
MAX_FAILURE_REASON = 1000
# The reason ledger.transition records when a FAILED refund becomes REFUNDED.
REFUNDED_AFTER_FAILED = "refunded after it had failed"
# The outbox jobs an outcome can ask for (their kinds, bridge/jobs/registry.py).
JOB_APPLY_ORDER = "apply_order"
JOB_PROJECT_REFUND = "project_refund"
JOB_NOTIFY_RESULT = "notify_result"


@dataclass
class ResultOutcome:
    """What applying one result did to one refund, and what must be queued for it: one admin
    alert per review reason (each newly set), then the jobs, in order."""

    refund_id: str
    status_before: str
    status_after: str
    changed: bool
    review_reasons: list[str] = field(default_factory=list)
    jobs: list[str] = field(default_factory=list)


def apply_to_ledger(
    refund: Refund,
    status: str,
    *,
    amount_cents: int | None,
    source: str,
    failure_reason: str | None = None,
    detail: str | None = None,
) -> ResultOutcome:
    """Apply RideNDine's (or Stripe's) final word on `refund` to the ledger; see the module
    docstring. The caller queues what the outcome asks for (bridge/webhooks/apply.py)."""
    if status not in RESULT_STATUSES:
        raise ValueError(f"not a refund result: {status!r}")
    outcome = ResultOutcome(
        refund_id=refund.id, status_before=refund.status, status_after=refund.status, changed=False
    )

    def flag(reason: str) -> None:
        if ledger.mark_for_review(refund, reason, source=source):
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
                outcome.review_reasons.append(REFUNDED_AFTER_FAILED)
            if refunded != refund.amount_cents:
                flag(f"RideNDine refunded {refunded} cents, {refund.amount_cents} were requested")
            outcome.jobs += [JOB_APPLY_ORDER, JOB_PROJECT_REFUND, JOB_NOTIFY_RESULT]
    else:
        if refund.status == RefundStatus.PENDING:
            refund.failure_reason = (
                ledger.clean_text(failure_reason, MAX_FAILURE_REASON) or DEFAULT_FAILURE_REASON
            )
            ledger.transition(refund, RefundStatus.FAILED, source=source, detail=detail)
            outcome.changed = True
            outcome.jobs += [JOB_PROJECT_REFUND, JOB_NOTIFY_RESULT]
        elif refund.status == RefundStatus.REFUNDED:
            # Forward only: the money moved and the order was updated; a person decides.
            flag("RideNDine reported FAILED after the refund had been REFUNDED")
        # FAILED again: nothing new.

    if outcome.review_reasons and not outcome.changed:
        # The flag changed the refund's item in Directus even though the status did not.
        outcome.jobs.append(JOB_PROJECT_REFUND)
    outcome.status_after = refund.status
    return outcome
