"""The refund policy (contract section 1a): which customer requests wait for an admin, and
telling people about the waiting ones (docs/refunds.md, "The refund policy").

- `reason_to_wait` is the policy itself, called by the request's transaction under the order's
  lock, so two requests of one order are checked one after the other with the amounts of both;
- `notify_approval` outbox jobs tell people, once each (dedupe
  `approval:<refund>:<event>:<channel>`): a new REQUESTED refund e-mails the customer ("being
  reviewed") and the admins through the "refund result" Flow, and makes a Directus in-app
  notification for each admin user linking to the refund's item; a reminder does the same for
  the admins once the refund has waited `BRIDGE_APPROVAL_REMIND_SECONDS`; a denial e-mails the
  customer the decision and its comment;
- `enqueue_reminders` is the worker's periodic scan for refunds waiting too long (once each:
  `reminded_at`).

A notice whose refund has moved on (approved or denied before the job ran) is skipped.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, func, select, update

from bridge.directus import notify
from bridge.directus.in_app import notify_admins_in_app
from bridge.directus.projection import REFUNDS_COLLECTION
from bridge.jobs import outbox
from bridge.ledger.money import format_amount
from bridge.store.models import OutboxJob, Refund, RefundStatus, utcnow
from bridge.web.auth import ROLE_CUSTOMER
from directus_client import DirectusError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bridge.config import Settings
    from bridge.services import Services
    from bridge.store.driver import Transaction

log = logging.getLogger(__name__)

JOB_NOTIFY_APPROVAL = "notify_approval"
EVENT_REQUESTED = "requested"
EVENT_REMINDER = "reminder"
EVENT_DENIED = "denied"
CHANNEL_MAIL = "mail"
CHANNEL_APP = "app"
# The "refund result" Flow's kinds for these e-mails (flows/definitions/refund-result.authorize.js).
FLOW_KINDS = {
    EVENT_REQUESTED: "refund_requested",
    EVENT_REMINDER: "approval_reminder",
    EVENT_DENIED: "refund_denied",
}
REMINDER_SCAN_LIMIT = 500


# -- the policy -----------------------------------------------------------------------------


def self_service_cents(session: Transaction, order_id: str) -> int:
    """What customers have asked for on the order without an admin's approval and that still
    counts (PENDING or REFUNDED, never decided by an admin)."""
    return int(session.scalar(_SELF_SERVICE, {"order_id": order_id}) or 0)


# Built once: it runs under the order's lock in a customer's request (docs/performance.md).
_SELF_SERVICE = select(func.coalesce(func.sum(Refund.amount_cents), 0)).where(
    Refund.order_id == bindparam("order_id"),
    Refund.requested_by == ROLE_CUSTOMER,
    Refund.decided_at.is_(None),
    Refund.status.in_((RefundStatus.PENDING, RefundStatus.REFUNDED)),
)


def reason_to_wait(
    session: Transaction,
    settings: Settings,
    order_id: str,
    order_status: str | None,
    requested_by: str,
    amount_cents: int,
) -> str | None:
    """Why this request must wait for an admin, or None when it may go to RideNDine at once.

    Only customers' requests wait: when the order's status is one of
    BRIDGE_APPROVAL_ORDER_STATUSES, or when with this amount what customers got without approval
    on the order would pass BRIDGE_APPROVAL_ABOVE_CENTS (so that splitting a refund in small
    requests does not get round the limit). Call it under the order's lock.
    """
    if requested_by != ROLE_CUSTOMER:
        return None
    if order_status is not None and order_status in settings.approval_order_statuses:
        return f"the order is {order_status}"
    limit = settings.approval_above_cents
    if limit is not None:
        total = self_service_cents(session, order_id) + amount_cents
        if total > limit:
            return (
                f"{total} cents asked by the customer on this order, above the "
                f"{limit} cents a customer may refund alone"
            )
    return None


# -- notices (inside the caller's transaction) ----------------------------------------------


def _enqueue(session: Transaction, refund: Refund, event: str, channels: tuple[str, ...]) -> None:
    for channel in channels:
        outbox.enqueue(
            session,
            JOB_NOTIFY_APPROVAL,
            f"approval:{refund.id}:{event}:{channel}",
            refund_id=refund.id,
            payload={"event": event, "channel": channel},
        )


def enqueue_requested_notices(session: Transaction, refund: Refund) -> None:
    """A new REQUESTED refund: the customer's and the admins' e-mails, the admins' in-app
    notifications."""
    _enqueue(session, refund, EVENT_REQUESTED, (CHANNEL_MAIL, CHANNEL_APP))


def enqueue_denied_notice(session: Session, refund: Refund) -> None:
    """A denial: the customer's e-mail with the decision's comment."""
    _enqueue(session, refund, EVENT_DENIED, (CHANNEL_MAIL,))


def enqueue_reminders(services: Services, *, now: datetime | None = None) -> int:
    """Remind the admins, once, of each refund REQUESTED for longer than
    BRIDGE_APPROVAL_REMIND_SECONDS; return how many were reminded."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=services.settings.approval_remind_seconds)
    reminded = 0
    with services.store.session() as session:
        refunds = session.scalars(
            select(Refund)
            .where(
                Refund.status == RefundStatus.REQUESTED,
                Refund.reminded_at.is_(None),
                Refund.created_at <= cutoff,
            )
            .order_by(Refund.created_at)
            .limit(REMINDER_SCAN_LIMIT)
        ).all()
        for refund in refunds:
            # A plain UPDATE: the reminder is no change of the refund (its updated_at stays).
            session.execute(
                update(Refund)
                .where(Refund.id == refund.id, Refund.reminded_at.is_(None))
                .values(reminded_at=now, updated_at=Refund.updated_at)
            )
            _enqueue(session, refund, EVENT_REMINDER, (CHANNEL_MAIL, CHANNEL_APP))
            reminded += 1
    return reminded


# -- sending --------------------------------------------------------------------------------


def item_url(services: Services, refund_id: str) -> str:
    """The refund's page in the Directus app."""
    return f"{services.settings.directus_url}/admin/content/{REFUNDS_COLLECTION}/{refund_id}"


def approval_mail_body(
    services: Services, refund: Refund, event: str, order: dict[str, Any] | None
) -> dict[str, Any]:
    """What the "refund result" Flow gets for one of these e-mails (docs/directus.md)."""
    body = notify.result_body(services, refund, order)
    recipients = body["recipients"]
    body["kind"] = FLOW_KINDS[event]
    body["link"] = item_url(services, refund.id)
    body["decision"] = {"comment": refund.decision_comment, "at": body["refund"]["decided_at"]}
    recipients["chef"] = None
    if event == EVENT_REMINDER:
        recipients["customer"] = None
    if event == EVENT_DENIED:
        recipients["admins"] = []
    return body


def _in_app_texts(services: Services, refund: Refund, event: str) -> tuple[str, str]:
    amount = format_amount(refund.amount_cents, refund.currency)
    waiting = "is still waiting" if event == EVENT_REMINDER else "waits"
    subject = f"Refund of {amount} for order {refund.order_id} {waiting} for approval"
    message = (
        f"A customer asked for a refund of {amount} on order {refund.order_id} "
        f"(reason {refund.reason}). It is not sent to RideNDine until an admin approves it: "
        f'open the refund and run "approve or deny". Refund {refund.id}.'
    )
    if refund.reason_comments:
        message += f"\n\nThe customer wrote: {refund.reason_comments}"
    return subject, message


def _notify_in_app(services: Services, refund: Refund, event: str) -> int:
    """One Directus notification per admin user, linking to the refund's item (a retry skips
    the admins who have it already)."""
    subject, message = _in_app_texts(services, refund, event)
    try:
        return notify_admins_in_app(services, refund, subject, message)
    except DirectusError as exc:
        raise outbox.RetryLater(f"Directus: {type(exc).__name__}: {exc.message}") from None


def notify_approval(services: Services, job: OutboxJob) -> None:
    """The `notify_approval` job (bridge/jobs/registry.py): one notice of the refund policy."""
    event = str(job.payload.get("event") or "")
    channel = str(job.payload.get("channel") or "")
    if event not in FLOW_KINDS or channel not in (CHANNEL_MAIL, CHANNEL_APP):
        raise outbox.GiveUp(f"unknown approval notice {event!r}/{channel!r}")
    with services.store.session() as session:
        refund = session.get(Refund, job.refund_id)
        if refund is None:
            raise outbox.GiveUp(f"refund {job.refund_id} is not in the ledger")
        session.expunge(refund)
    expected = RefundStatus.DENIED if event == EVENT_DENIED else RefundStatus.REQUESTED
    if refund.status != expected:
        log.info(
            "approval notice skipped: the refund is now %s",
            refund.status,
            extra={"refund_id": refund.id, "job_id": job.id, "event": event},
        )
        return
    if channel == CHANNEL_APP:
        count = _notify_in_app(services, refund, event)
        log.info(
            "admins notified in Directus",
            extra={"refund_id": refund.id, "event": event, "admins": count},
        )
        return
    try:
        order = notify.load_order(services, refund.order_id)
        body = approval_mail_body(services, refund, event, order)
    except DirectusError as exc:
        raise outbox.RetryLater(f"Directus: {type(exc).__name__}: {exc.message}") from None
    notify.trigger_flow(services, body)
    log.info("approval e-mail sent", extra={"refund_id": refund.id, "event": event})
