"""Helpers for the refund-result tests: signed webhooks, PENDING refunds made like the request
side makes them, draining the outbox, and the "refund result" Flow."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from flask.testing import FlaskClient
from sqlalchemy import func, select, update
from standardwebhooks.webhooks import Webhook

from bridge import ledger, outbox
from bridge.models import (
    InboxEvent,
    OutboxJob,
    OutboxState,
    Refund,
    RefundSource,
    RefundStatus,
    utcnow,
)
from bridge.services import Services
from tests.helpers import WEBHOOK_SECRET

WEBHOOK_URL = "/ridendine/webhooks/refund-status"


def sign(
    body: bytes,
    *,
    secret: str = WEBHOOK_SECRET,
    webhook_id: str | None = None,
    timestamp: datetime | None = None,
) -> dict[str, str]:
    """Standard Webhooks headers for `body`, signed with `secret`."""
    webhook_id = webhook_id or f"msg_{uuid.uuid4().hex}"
    timestamp = timestamp or datetime.now(UTC)
    signature = Webhook(secret).sign(webhook_id, timestamp, body.decode())
    return {
        "webhook-id": webhook_id,
        "webhook-timestamp": str(int(timestamp.timestamp())),
        "webhook-signature": signature,
        "Content-Type": "application/json",
    }


def event_body(
    refund_id: str, order_id: str, amount_cents: int, status: str = "REFUNDED", **extra: Any
) -> bytes:
    return json.dumps(
        {
            "refund_id": refund_id,
            "external_order_id": order_id,
            "amount_cents": amount_cents,
            "status": status,
            **extra,
        }
    ).encode()


def post_event(
    client: FlaskClient,
    body: bytes,
    *,
    headers: dict[str, str] | None = None,
    webhook_id: str | None = None,
) -> Any:
    return client.post(WEBHOOK_URL, data=body, headers=headers or sign(body, webhook_id=webhook_id))


def make_pending_refund(
    services: Services,
    order: dict[str, Any],
    *,
    amount_cents: int | None = None,
    ridendine_refund_id: str | None = None,
    reason: str = "chef_rejected",
    created_at: datetime | None = None,
) -> str:
    """A refund as the request side records it: PENDING, source cooco, with its history."""
    with services.store.session() as session:
        refund = Refund(
            order_id=order["id"],
            ridendine_order_id=order["ridendine_order_id"],
            amount_cents=amount_cents or order["amount_paid_cents"],
            currency=order.get("currency") or "EUR",
            reason=reason,
            requested_by="admin",
            status=RefundStatus.PENDING,
            ridendine_refund_id=ridendine_refund_id,
            source=RefundSource.COOCO,
            needs_review=False,
            created_at=created_at or utcnow(),
            updated_at=created_at or utcnow(),
        )
        session.add(refund)
        ledger.record_created(refund)
        session.flush()
        return refund.id


def new_ridendine_id() -> str:
    return f"re_{uuid.uuid4().hex[:16]}"


def load_refund(services: Services, refund_id: str) -> Refund:
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        refund.history  # noqa: B018 - loaded before the session closes
        session.expunge(refund)
        return refund


def refund_by_ridendine_id(services: Services, ridendine_refund_id: str) -> Refund | None:
    with services.store.session() as session:
        refund = session.scalar(
            select(Refund).where(Refund.ridendine_refund_id == ridendine_refund_id)
        )
        if refund is not None:
            refund.history  # noqa: B018
            session.expunge(refund)
        return refund


def inbox_count(services: Services) -> int:
    with services.store.session() as session:
        return int(session.scalar(select(func.count()).select_from(InboxEvent)) or 0)


def jobs(services: Services, kind: str | None = None) -> list[OutboxJob]:
    with services.store.session() as session:
        query = select(OutboxJob).order_by(OutboxJob.id)
        if kind:
            query = query.where(OutboxJob.kind == kind)
        found = list(session.scalars(query))
        for job in found:
            session.expunge(job)
        return found


def make_due(services: Services) -> None:
    """Bring every pending job's next attempt to now (tests do not wait out the backoff)."""
    with services.store.session() as session:
        session.execute(
            update(OutboxJob)
            .where(OutboxJob.state == OutboxState.PENDING)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1), locked_until=None)
        )


def drain(services: Services) -> int:
    """Run every job that is due now (and the jobs those enqueue)."""
    return outbox.drain(services)


def wait_for_jobs_done(services: Services, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not [j for j in jobs(services) if j.state == OutboxState.PENDING]:
            return
        make_due(services)
        drain(services)
    pending = [(j.kind, j.last_error) for j in jobs(services) if j.state == OutboxState.PENDING]
    raise AssertionError(f"jobs still pending: {pending}")


# -- the "refund result" Flow ------------------------------------------------------------------


def create_standin_result_flow(client: Any, secret: str) -> str:
    """A webhook Flow with the agreed body interface: checks the secret, then one e-mail each
    to the customer, the chef and the admins (refund_result), or one to the admins
    (admin_alert). Used until flows/ provides the real one."""
    flow = client.create_system(
        "flows",
        {
            "name": f"test refund result {uuid.uuid4().hex[:6]}",
            "status": "active",
            "trigger": "webhook",
            "accountability": "all",
            "options": {"method": "POST", "async": False},
        },
    )
    flow_id = flow["id"]
    body = "$trigger.body"

    def op(key: str, type_: str, options: dict[str, Any], **links: str | None) -> str:
        created = client.create_system(
            "operations",
            {
                "flow": flow_id,
                "key": key,
                "name": key,
                "type": type_,
                "position_x": 20,
                "position_y": 1,
                "options": options,
                **{k: v for k, v in links.items() if v},
            },
        )
        return str(created["id"])

    def mail(key: str, to: str, subject: str, resolve: str | None = None) -> str:
        return op(
            key,
            "mail",
            {
                "to": f"{{{{{body}.{to}}}}}",
                "subject": subject,
                "body": "{{" + body + ".message}} Order {{" + body + ".order.id}}: refund of "
                "{{" + body + ".amount_display}} is {{" + body + ".refund.status}}.",
                "type": "markdown",
            },
            resolve=resolve,
        )

    subject = "Refund {{" + body + ".refund.status}} for order {{" + body + ".order.id}}"
    admins = mail("mail_admins", "recipients.admins", "[admins] " + subject)
    chef = mail("mail_chef", "recipients.chef", "[chef] " + subject, resolve=admins)
    customer = mail("mail_customer", "recipients.customer", "[customer] " + subject, chef)
    alert = mail("mail_alert", "recipients.admins", "[alert] {{" + body + ".subject}}")
    kind = op(
        "check_kind",
        "condition",
        {"filter": {"$trigger": {"body": {"kind": {"_eq": "refund_result"}}}}},
        resolve=customer,
        reject=alert,
    )
    check = op(
        "check_secret",
        "condition",
        {"filter": {"$trigger": {"body": {"secret": {"_eq": secret}}}}},
        resolve=kind,
    )
    client.update_system("flows", flow_id, {"operation": check})
    return str(flow_id)
