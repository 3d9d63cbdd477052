"""The order's two fields the bridge owns, written in Directus after a refund is REFUNDED.

The `apply_order` outbox job (dedupe `order:<refund id>`) PATCHes only `payment_status` and
`status`, never the whole order, so an admin's concurrent edit of any other field survives:
- `payment_status`: REFUNDED when the ledger's refunded total of the order reaches the amount
  paid (read from the order), else PARTIALLY_REFUNDED;
- `status`: CANCELLED when the refund's reason is one of settings.cancelling_reasons.

The values come from the ledger when the job runs, not when it was queued, so jobs of several
refunds of one order converge on the right answer in any order. Directus down: the job is
retried. The order gone: the job gives up, the refund is flagged and the admins are alerted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from sqlalchemy.orm import Session

from bridge.directus.review import flag_job_refund
from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.store.models import OutboxJob, Refund, RefundStatus
from directus_client import DirectusError, DirectusUnavailableError, NotFoundError

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

JOB_APPLY_ORDER = "apply_order"
PAYMENT_REFUNDED = "REFUNDED"
PAYMENT_PARTIALLY_REFUNDED = "PARTIALLY_REFUNDED"
ORDER_CANCELLED = "CANCELLED"


def enqueue_apply_order(session: Session, refund: Refund) -> int | None:
    """Queue the update of the refund's order (once per refund: it is REFUNDED only once)."""
    return outbox.enqueue(session, JOB_APPLY_ORDER, f"order:{refund.id}", refund_id=refund.id)


def order_changes(
    order: dict[str, Any], *, refunded: int, paid: int, cancels: bool
) -> dict[str, str]:
    """The PATCH for the order: only the owned fields whose value must change."""
    wanted: dict[str, str] = {}
    if refunded > 0:
        wanted["payment_status"] = (
            PAYMENT_REFUNDED if refunded >= paid else PAYMENT_PARTIALLY_REFUNDED
        )
    if cancels:
        wanted["status"] = ORDER_CANCELLED
    return {name: value for name, value in wanted.items() if order.get(name) != value}


def apply_order(services: Services, job: OutboxJob) -> None:
    settings = services.settings
    names = settings.order_fields
    with services.store.session() as session:
        refund = session.get(Refund, job.refund_id)
        if refund is None:
            raise outbox.GiveUp(f"refund {job.refund_id} is not in the ledger")
        if refund.status != RefundStatus.REFUNDED:
            raise outbox.GiveUp(f"refund {refund.id} is {refund.status}, not REFUNDED")
        order_id, reason = refund.order_id, refund.reason
        refunded = ledger.refunded_cents(session, order_id)
    try:
        order = services.directus.find_item(
            names.collection,
            order_id,
            fields=["id", "status", "payment_status", names.amount_paid],
        )
    except DirectusUnavailableError as exc:
        raise outbox.RetryLater(f"Directus unavailable: {exc.message}") from None
    if order is None:
        raise outbox.GiveUp(f"order {order_id} is not in Directus")
    paid = ledger.as_cents(order.get(names.amount_paid))
    if paid is None or paid <= 0:
        raise outbox.GiveUp(f"order {order_id} has no usable {names.amount_paid}")
    if refunded > paid:
        alert_over_refund(services, job, order_id, refunded=refunded, paid=paid)
    changes = order_changes(
        order, refunded=refunded, paid=paid, cancels=reason in settings.cancelling_reasons
    )
    if not changes:
        return
    try:
        services.directus.update_item(names.collection, order_id, changes)
    except NotFoundError:
        raise outbox.GiveUp(f"order {order_id} disappeared from Directus") from None
    except DirectusError as exc:
        raise outbox.RetryLater(f"Directus: {type(exc).__name__}: {exc.message}") from None
    log.info(
        "order updated",
        extra={"order_id": order_id, "refund_id": job.refund_id, "changes": changes},
    )


def alert_over_refund(
    services: Services, job: OutboxJob, order_id: str, *, refunded: int, paid: int
) -> None:
    flag_job_refund(services, job, f"order {order_id} is refunded {refunded} cents of {paid} paid")


def apply_order_dead(services: Services, job: OutboxJob) -> None:
    flag_job_refund(services, job, f"the order could not be updated in Directus ({job.last_error})")
