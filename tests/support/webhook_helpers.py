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

from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.services import Services
from bridge.store.models import (
    InboxEvent,
    OutboxJob,
    OutboxState,
    Refund,
    RefundSource,
    RefundStatus,
    utcnow,
)
from tests.support.helpers import FLOW_SECRET, WEBHOOK_SECRET

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
    """POST a webhook, then do what the worker does with a recorded one (`process_received`):
    the answer waits only for the record, the worker matches and applies it."""
    response = client.post(
        WEBHOOK_URL, data=body, headers=headers or sign(body, webhook_id=webhook_id)
    )
    if response.status_code == 200:
        process_received(client.application.extensions["bridge.services"])
    return response


def process_received(services: Services) -> int:
    """The worker's part for recorded webhooks: their due `process_event` jobs, claimed and run
    a batch at a time as `refund-bridge worker` runs them; return how many."""
    ran = 0
    while ids := outbox.claim(services, owner="test-worker", kinds=("process_event",), limit=300):
        outbox.run_batch(services, ids, owner="test-worker")
        ran += len(ids)
    return ran


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
            order_paid_cents=order.get("amount_paid_cents"),
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


def drain_inbox(services: Services) -> int:
    """Run only the inbox's own (local) jobs that are due: no Directus needed."""
    ran = 0
    while ids := outbox.claim(services, owner="test", kinds=("process_event", "resolve_event")):
        for job_id in ids:
            outbox.run_job(services, job_id, owner="test")
            ran += 1
    return ran


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

_SYNCED: set[str] = set()


def sync_result_flow(client: Any) -> str:
    """Provision the project's "refund result" Flow in the session's Directus (once, by
    `flows sync`'s own function) and return its id."""
    from flows import REFUND_RESULT
    from flows.sync import FlowParams, find_flow_id, sync_flows

    if client.base_url not in _SYNCED:
        sync_flows(client, FlowParams(flow_secret=FLOW_SECRET), keys=[REFUND_RESULT])
        _SYNCED.add(client.base_url)
    flow_id = find_flow_id(client, REFUND_RESULT)
    assert flow_id, "flows sync did not provision the refund result Flow"
    return flow_id
