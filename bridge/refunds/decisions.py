"""An admin's approve or deny of a REQUESTED refund (contract section 1a).

`POST /ridendine/refunds/<id>/approve` and `/deny`, for an admin only: a Directus admin's token,
or a service token with `X-Directus-User-Id` of a user with admin access (the Directus Flow
"approve or deny" and the extension). Each is one store transaction under the order's lock, so
an approve and a deny (or two approves) of one refund are decided one after the other: the
first wins, the second finds the refund no longer REQUESTED (409), and nothing more changes.

- approve: the order is read again and must still be refundable, exactly as for an admin's new
  request; the refund moves REQUESTED -> PENDING and its one `submit_refund` job is queued
  (dedupe `submit:<refund id>`, RideNDine's Idempotency-Key the refund id), then tried at once
  like a new request's: 200 with the refund, or 422 when RideNDine said no.
- deny: REQUESTED -> DENIED; the amount no longer counts; the customer is e-mailed the decision
  with its comment (bridge/refunds/approval.py). 200 with the refund.
"""

from __future__ import annotations

import logging
import uuid
from typing import TYPE_CHECKING, Any

from marshmallow import ValidationError

from bridge.directus.projection import enqueue_projection
from bridge.errors import (
    AmountExceedsRefundable,
    Forbidden,
    RefundNotAwaitingApproval,
    RefundNotFound,
    ValidationProblem,
)
from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.refunds import approval, intake
from bridge.refunds.schemas import DecisionSchema
from bridge.refunds.submission import enqueue_submission
from bridge.store.db import lock_order
from bridge.store.models import Refund, RefundStatus
from bridge.web.auth import Caller

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

MAX_REFUND_ID_CHARS = 40


def require_admin(caller: Caller) -> str:
    """The admin's line for the history; 403 for anyone else."""
    user = caller.user
    if user is None or not user.is_admin:
        raise Forbidden(
            "Only an admin (a Directus user with admin access) may approve or deny refunds."
        )
    return " ".join(part for part in ("admin", user.email, f"({user.id})") if part)


def parse_decision(payload: Any) -> str | None:
    """The optional comment of the body (no body at all is fine)."""
    if payload is None:
        return None
    if not isinstance(payload, dict):
        raise ValidationProblem(
            {"_schema": ["The body must be a JSON object."]}, "The body must be a JSON object."
        )
    try:
        data: dict[str, Any] = DecisionSchema().load(payload)
    except ValidationError as exc:
        errors = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise ValidationProblem(errors) from None
    comment = data.get("comment")
    return comment.strip() or None if isinstance(comment, str) else None


def _order_of(services: Services, refund_id: str) -> str:
    with services.store.session() as session:
        refund = session.get(Refund, refund_id) if len(refund_id) <= MAX_REFUND_ID_CHARS else None
        if refund is None:
            raise RefundNotFound(f"There is no refund {refund_id!r}.")
        return refund.order_id


def _not_waiting(refund: Refund) -> RefundNotAwaitingApproval:
    return RefundNotAwaitingApproval(
        f"Refund {refund.id} is {refund.status}: only a REQUESTED refund can be approved or "
        "denied.",
        refund=ledger.refund_to_dict(refund),
    )


def _decide(refund: Refund, status: str, user_id: str, who: str, comment: str | None) -> None:
    verb = "approved" if status == RefundStatus.PENDING else "denied"
    ledger.transition(
        refund,
        status,
        source=ledger.SOURCE_ADMIN,
        detail=f"{verb} by {who}" + (f": {comment}" if comment else ""),
    )
    refund.decided_by = user_id
    refund.decided_at = refund.updated_at
    refund.decision_comment = comment


def approve(services: Services, caller: Caller, refund_id: str, payload: Any) -> intake.Answer:
    who = require_admin(caller)
    assert caller.user is not None
    comment = parse_decision(payload)
    order_id = _order_of(services, refund_id)
    # As for an admin's new request: the order must still be refundable in Directus.
    order = intake.read_order(services, order_id)
    paid_cents = intake.refundable_order(order)
    owner = f"approve:{uuid.uuid4().hex}"
    with services.store.session() as session:
        lock_order(session, order_id)
        refund = session.get(Refund, refund_id)
        assert refund is not None  # refunds are never deleted while REQUESTED
        if refund.status != RefundStatus.REQUESTED:
            raise _not_waiting(refund)
        others = ledger.committed_cents(session, order_id) - refund.amount_cents
        if refund.amount_cents > paid_cents - others:
            # The order's amount paid went down in Directus meanwhile.
            raise AmountExceedsRefundable(max(0, paid_cents - others))
        _decide(refund, RefundStatus.PENDING, caller.user.id, who, comment)
        projection_job = enqueue_projection(session, refund, lease_to=owner)
        submit_job = enqueue_submission(session, refund, lease_to=owner)
    log.info("refund approved", extra={"refund_id": refund_id, "order_id": order_id})
    # Exactly as a new request: RideNDine first, then the Directus item (one write).
    outbox.run_now(services, submit_job, owner=owner)
    outbox.run_now(services, projection_job, owner=owner)
    answer = intake.answer_for_refund(services, refund_id)
    if answer.problem is None:
        answer.status, answer.headers = 200, {}
    return answer


def deny(services: Services, caller: Caller, refund_id: str, payload: Any) -> dict[str, Any]:
    who = require_admin(caller)
    assert caller.user is not None
    comment = parse_decision(payload)
    order_id = _order_of(services, refund_id)
    owner = f"deny:{uuid.uuid4().hex}"
    with services.store.session() as session:
        lock_order(session, order_id)
        refund = session.get(Refund, refund_id)
        assert refund is not None
        if refund.status != RefundStatus.REQUESTED:
            raise _not_waiting(refund)
        _decide(refund, RefundStatus.DENIED, caller.user.id, who, comment)
        projection_job = enqueue_projection(session, refund, lease_to=owner)
        approval.enqueue_denied_notice(session, refund)
    log.info("refund denied", extra={"refund_id": refund_id, "order_id": order_id})
    outbox.run_now(services, projection_job, owner=owner)
    with services.store.session() as session:
        denied = session.get(Refund, refund_id)
        assert denied is not None
        return {"refund": ledger.refund_to_dict(denied, with_history=True)}
