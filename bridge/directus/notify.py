"""Telling people: the "refund result" Flow (contract section 4) and admin alerts.

Three outbox job kinds trigger the same Directus Flow (`POST /flows/trigger/<id>`, key
`refund-result`, provisioned by `refund-bridge flows sync`), which sends the e-mails:

- `notify_result` (dedupe `notify:<refund id>:<status>`): one notification per refund result, to
  the order's customer and chef and to the admins. Enqueued by bridge/webhooks/apply.py in the same
  transaction as the status change, so a duplicate webhook never enqueues a second one. The
  outbox job's `done` state is the record that it was sent.
- `notify_result_admins` (dedupe `notify:<refund id>:<status>:admins`): when Directus will not
  name the admins (the bridge's token lacks a permission), `notify_result` mails the customer
  and the chef at once and hands the admins' part to this job, retried until they are found
  (docs/directus.md, "The bridge's policy").
- `alert_admins` (enqueued by bridge/directus/alerts.py): one e-mail to the admins.

A trigger that fails (Directus down, Flow not provisioned yet, an error answer) is retried with
the outbox's backoff. A trigger that timed out may have sent its e-mails already: delivery is at
least once, and a retry after a timeout can repeat a message.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.ledger.money import format_amount
from bridge.store.models import OutboxJob, Refund, RefundStatus
from directus_client import DirectusError, ForbiddenError, NotFoundError
from flows import REFUND_RESULT

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

JOB_NOTIFY_RESULT = "notify_result"
JOB_NOTIFY_ADMINS = "notify_result_admins"
KIND_REFUND_RESULT = "refund_result"
KIND_ADMIN_ALERT = "admin_alert"
ADMIN_EMAILS_TTL_SECONDS = 300.0

# -- enqueueing (inside the caller's transaction) --------------------------------------------


def enqueue_notify_result(session: Session, refund: Refund, status: str) -> int | None:
    """Queue the notification of `refund` reaching `status`; once per refund and status."""
    return outbox.enqueue(
        session,
        JOB_NOTIFY_RESULT,
        f"notify:{refund.id}:{status}",
        refund_id=refund.id,
        payload={"status": status},
    )


# -- what the Flow receives ------------------------------------------------------------------


def refund_summary(refund: Refund) -> dict[str, Any]:
    """The refund as the Flow sees it (the API's shape, without the history)."""
    return ledger.refund_to_dict(refund)


def _path(item: dict[str, Any] | None, dotted: str) -> Any:
    value: Any = item
    for part in dotted.split("."):
        if not isinstance(value, dict):
            return None
        value = value.get(part)
    return value


def _email(value: Any) -> str | None:
    return value.strip() if isinstance(value, str) and "@" in value else None


def load_order(services: Services, order_id: str) -> dict[str, Any] | None:
    """The order with its people's e-mails; None when Directus does not have it."""
    names = services.settings.order_fields
    return services.directus.find_item(
        names.collection,
        order_id,
        fields=[
            "id",
            "ridendine_order_id",
            "status",
            "payment_status",
            names.customer_email,
            names.chef_email,
        ],
    )


def admin_recipients(services: Services) -> list[str]:
    """BRIDGE_ADMIN_EMAILS, or else the Directus users with admin access (cached briefly)."""
    if services.settings.admin_emails:
        return list(services.settings.admin_emails)
    cached = services.extras.get("notify.admin_emails")
    now = time.monotonic()
    if cached is not None and now - cached[0] < ADMIN_EMAILS_TTL_SECONDS:
        return list(cached[1])
    emails = services.directus.admin_emails()
    services.extras["notify.admin_emails"] = (now, emails)
    return list(emails)


def result_body(services: Services, refund: Refund, order: dict[str, Any] | None) -> dict[str, Any]:
    names = services.settings.order_fields
    amount = (
        refund.refunded_amount_cents
        if refund.status == RefundStatus.REFUNDED and refund.refunded_amount_cents is not None
        else refund.amount_cents
    )
    return {
        "secret": services.settings.flow_secret,
        "kind": KIND_REFUND_RESULT,
        "refund": refund_summary(refund),
        "order": _order_summary(refund, order),
        "amount_display": format_amount(amount, refund.currency),
        "recipients": {
            "customer": _email(_path(order, names.customer_email)),
            "chef": _email(_path(order, names.chef_email)),
            "admins": _result_admins(services, refund),
        },
    }


def _admins_dedupe_key(refund: Refund) -> str:
    return f"notify:{refund.id}:{refund.status}:admins"


def _result_admins(services: Services, refund: Refund) -> list[str]:
    """The admins for a result's notification. When Directus will not say who they are (the
    bridge's token lacks a permission, docs/directus.md), the customer and the chef are not
    kept waiting: their part goes now, and the admins' part becomes a job of its own
    (`notify_result_admins`) that is retried until the admins are found."""
    if services.settings.admin_emails:
        return list(services.settings.admin_emails)
    dedupe_key = _admins_dedupe_key(refund)
    with services.store.session() as session:
        handed_over = session.scalar(select(OutboxJob.id).where(OutboxJob.dedupe_key == dedupe_key))
    if handed_over is not None:
        return []  # an earlier attempt of this notification handed the admins' part over
    try:
        return admin_recipients(services)
    except DirectusError as exc:
        with services.store.session() as session:
            outbox.enqueue(
                session,
                JOB_NOTIFY_ADMINS,
                dedupe_key,
                refund_id=refund.id,
                payload={"status": refund.status},
            )
        log.error(
            "the admins could not be found in Directus (%s): the customer and the chef are "
            "notified now, the admins when they can be found (retried)",
            _safe(exc),
            extra={"refund_id": refund.id},
        )
        return []


def _order_summary(refund: Refund | None, order: dict[str, Any] | None) -> dict[str, Any]:
    order = order or {}
    return {
        "id": order.get("id") or (refund.order_id if refund else None),
        "ridendine_order_id": order.get("ridendine_order_id")
        or (refund.ridendine_order_id if refund else None),
        "status": order.get("status"),
        "payment_status": order.get("payment_status"),
    }


# -- triggering the Flow ---------------------------------------------------------------------


def refund_result_flow_id(services: Services) -> str:
    """The "refund result" Flow's id, looked up once per process."""
    cache_key = f"flow_id:{REFUND_RESULT}"
    flow_id = services.extras.get(cache_key)
    if flow_id:
        return str(flow_id)
    from flows.sync import find_flow_id

    flow_id = find_flow_id(services.directus, REFUND_RESULT)
    if not flow_id:
        raise outbox.RetryLater(
            "the 'refund result' Flow is not in Directus; run `refund-bridge flows sync`"
        )
    services.extras[cache_key] = flow_id
    return str(flow_id)


def trigger_flow(services: Services, body: dict[str, Any]) -> None:
    """POST the body to the Flow; any failure is a retry (the id is looked up again if the
    Flow is gone)."""
    if not services.settings.flow_secret:
        raise outbox.RetryLater("BRIDGE_FLOW_SECRET is not set; the Flow would refuse the call")
    flow_id = refund_result_flow_id(services)
    try:
        answer = services.directus.trigger_flow(flow_id, body)
    except (NotFoundError, ForbiddenError) as exc:
        services.extras.pop(f"flow_id:{REFUND_RESULT}", None)
        raise outbox.RetryLater(f"the Flow could not be triggered: {_safe(exc)}") from None
    except DirectusError as exc:
        raise outbox.RetryLater(f"the Flow could not be triggered: {_safe(exc)}") from None
    # The Flow answers 200 even when it refuses (wrong secret, bad body, an e-mail the mail
    # server did not take): {"ok": false, ...}. Only its own "ok": true says the e-mails were
    # handed over; any other answer (a Flow stopped at an operation Directus does not know
    # answers nothing) is retried, never recorded as sent (docs/flows.md).
    answer = answer.get("data", answer) if isinstance(answer, dict) else answer
    if not isinstance(answer, dict) or answer.get("ok") not in (True, "true"):
        error = answer.get("error") if isinstance(answer, dict) else None
        if error:
            raise outbox.RetryLater(f"the Flow refused the call: {str(error)[:200]}")
        raise outbox.RetryLater("the Flow did not confirm the e-mails (no ok in its answer)")


def _safe(exc: DirectusError) -> str:
    # The error's text names the URL (the Flow id) and Directus's message, never our token.
    return f"{type(exc).__name__}: {exc.message}"


def _refund_still_at(services: Services, job: OutboxJob, what: str) -> Refund | None:
    """The job's refund, or None when a later result superseded the job's status (FAILED, then
    REFUNDED before we could tell): only the refund's current result is worth an e-mail."""
    status = str(job.payload.get("status") or "")
    with services.store.session() as session:
        refund = session.get(Refund, job.refund_id)
        if refund is None:
            raise outbox.GiveUp(f"refund {job.refund_id} is not in the ledger")
        session.expunge(refund)
    if refund.status != status:
        log.info(
            "%s skipped: the refund is now %s",
            what,
            refund.status,
            extra={"refund_id": refund.id, "job_id": job.id},
        )
        return None
    return refund


def notify_result(services: Services, job: OutboxJob) -> None:
    refund = _refund_still_at(services, job, "notification")
    if refund is None:
        return
    status = refund.status
    try:
        order = load_order(services, refund.order_id)
        body = result_body(services, refund, order)
    except DirectusError as exc:
        raise outbox.RetryLater(f"Directus: {_safe(exc)}") from None
    trigger_flow(services, body)
    log.info(
        "refund result notified",
        extra={"refund_id": refund.id, "status": status, "job_id": job.id},
    )


def notify_result_admins(services: Services, job: OutboxJob) -> None:
    """The admins' part of a result's notification, when they could not be found at first."""
    refund = _refund_still_at(services, job, "admins' notification")
    if refund is None:
        return
    try:
        admins = admin_recipients(services)
        order = load_order(services, refund.order_id)
    except DirectusError as exc:
        log.error(
            "the admins are still not notified of refund %s: %s",
            refund.id,
            _safe(exc),
            extra={"refund_id": refund.id, "job_id": job.id},
        )
        raise outbox.RetryLater(f"Directus: {_safe(exc)}") from None
    if not admins:
        raise outbox.GiveUp("no admin e-mail address (BRIDGE_ADMIN_EMAILS, Directus admins)")
    body = result_body(services, refund, order)
    body["recipients"] = {"customer": None, "chef": None, "admins": admins}
    trigger_flow(services, body)
    log.info("refund result notified to the admins", extra={"refund_id": refund.id})


def alert_admins(services: Services, job: OutboxJob) -> None:
    refund: Refund | None = None
    if job.refund_id:
        with services.store.session() as session:
            refund = session.get(Refund, job.refund_id)
            if refund is not None:
                session.expunge(refund)
    try:
        admins = admin_recipients(services)
    except DirectusError as exc:
        raise outbox.RetryLater(f"Directus: {_safe(exc)}") from None
    if not admins:
        raise outbox.GiveUp("no admin e-mail address (BRIDGE_ADMIN_EMAILS, Directus admins)")
    body = {
        "secret": services.settings.flow_secret,
        "kind": KIND_ADMIN_ALERT,
        "refund": refund_summary(refund) if refund is not None else {},
        "order": _order_summary(refund, None) if refund is not None else {},
        "amount_display": format_amount(refund.amount_cents, refund.currency)
        if refund is not None
        else "",
        "recipients": {"customer": None, "chef": None, "admins": admins},
        "subject": str(job.payload.get("subject") or "refund-bridge alert"),
        "message": str(job.payload.get("message") or ""),
    }
    trigger_flow(services, body)
    log.info("admin alert sent", extra={"refund_id": job.refund_id, "job_id": job.id})
