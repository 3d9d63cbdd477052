"""The refunds ledger: forward-only status changes, review flags, and what is still refundable.

Every function here works inside the caller's session (one transaction); none talks to the
outside. Money is integer cents.

States only move forward: PENDING -> REFUNDED or PENDING -> FAILED. A FAILED refund may still
become REFUNDED (the partner's later word wins when money did move, and it is flagged); a
REFUNDED refund never goes back: a later FAILED flags it for review instead. A customer's
request outside the refund policy starts REQUESTED and waits for an admin: approved, it becomes
PENDING (and is sent); denied, DENIED, for good (docs/refunds.md, "The refund policy").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from sqlalchemy import Table, bindparam, case, func, insert, select
from sqlalchemy.orm import Session

from bridge.store.driver import Transaction
from bridge.store.models import Refund, RefundSource, RefundStatus, RefundStatusChange, utcnow

# What each status may move to.
FORWARD: dict[str, frozenset[str]] = {
    RefundStatus.REQUESTED: frozenset({RefundStatus.PENDING, RefundStatus.DENIED}),
    RefundStatus.PENDING: frozenset({RefundStatus.REFUNDED, RefundStatus.FAILED}),
    RefundStatus.FAILED: frozenset({RefundStatus.REFUNDED}),
    RefundStatus.REFUNDED: frozenset(),
    RefundStatus.DENIED: frozenset(),
}
# Statuses whose amount no longer counts against what is refundable.
RELEASED = (RefundStatus.FAILED, RefundStatus.DENIED)

# Sources of a change, as recorded in the history.
SOURCE_REQUEST = "request"
SOURCE_RIDENDINE_API = "ridendine_api"
SOURCE_WEBHOOK = "webhook"
SOURCE_RECONCILIATION = "reconciliation"
SOURCE_WORKER = "worker"
SOURCE_OPERATOR = "operator"
SOURCE_ADMIN = "admin"  # an admin's approve or deny


def record_created(
    refund: Refund, *, source: str = SOURCE_REQUEST, detail: str | None = None
) -> None:
    """The first line of a new refund's history."""
    refund.history.append(
        RefundStatusChange(from_status=None, to_status=refund.status, source=source, detail=detail)
    )


def insert_new(session: Transaction, refund: Refund) -> None:
    """Write a new refund and its history lines (`record_created`) with two Core statements in
    the caller's transaction, instead of the session's unit of work (a refund request's CPU:
    docs/performance.md). The object stays out of the session, every column set as written
    (the defaults filled in), and the `on_created` observers are told."""
    now = utcnow()
    if refund.status is None:
        refund.status = RefundStatus.PENDING
    if refund.source is None:
        refund.source = RefundSource.COOCO
    if refund.needs_review is None:
        refund.needs_review = False
    refund.created_at = refund.created_at or now
    refund.updated_at = refund.updated_at or refund.created_at
    session.execute(
        _INSERT_REFUND, {column.key: getattr(refund, column.key) for column in _REFUNDS.c}
    )
    for change in refund.history:
        change.at = change.at or refund.created_at
    lines = [_line(refund, change) for change in refund.history]
    if lines:
        session.execute(_INSERT_CHANGE, lines)
    for observer in _CREATED_OBSERVERS:
        observer(session, refund)


def insert_line(session: Transaction, refund: Refund, change: RefundStatusChange) -> None:
    """Write one history line of a refund that is out of any session (`insert_new`) with a Core
    statement, and append it to the refund's history in memory. A line that changes the
    status goes through `transition` instead (its rules, its metrics)."""
    change.at = change.at or utcnow()
    session.execute(_INSERT_CHANGE, _line(refund, change))
    refund.history.append(change)


def _line(refund: Refund, change: RefundStatusChange) -> dict[str, Any]:
    return {
        "refund_id": refund.id,
        "from_status": change.from_status,
        "to_status": change.to_status,
        "source": change.source,
        "detail": change.detail,
        "at": change.at,
    }


def on_created(observer: Callable[[Transaction, Refund], None]) -> None:
    """Call `observer(session, refund)` for each refund `insert_new` writes (the metrics: the
    ledger knows nothing of them). Idempotent."""
    if observer not in _CREATED_OBSERVERS:
        _CREATED_OBSERVERS.append(observer)


_CREATED_OBSERVERS: list[Callable[[Transaction, Refund], None]] = []
_REFUNDS = cast(Table, Refund.__table__)
_INSERT_REFUND = insert(_REFUNDS)
_INSERT_CHANGE = insert(cast(Table, RefundStatusChange.__table__))


def transition(refund: Refund, new_status: str, *, source: str, detail: str | None = None) -> bool:
    """Move `refund` to `new_status` if that is forward; return whether it changed.

    Moving FAILED -> REFUNDED is allowed (money did move) but flags the refund for review.
    """
    current = refund.status
    if new_status == current or new_status not in FORWARD[current]:
        return False
    refund.history.append(
        RefundStatusChange(from_status=current, to_status=new_status, source=source, detail=detail)
    )
    refund.status = new_status
    refund.updated_at = utcnow()
    if new_status in (RefundStatus.REFUNDED, RefundStatus.FAILED):
        refund.resolved_at = refund.updated_at
    if current == RefundStatus.FAILED and new_status == RefundStatus.REFUNDED:
        mark_for_review(refund, "refunded after it had failed", source=source)
    return True


def mark_for_review(refund: Refund, reason: str, *, source: str) -> bool:
    """Mark the refund as needing a person; return False when that reason was already there."""
    reasons = [r for r in (refund.review_reason or "").split("; ") if r]
    if refund.needs_review and reason in reasons:
        return False
    refund.needs_review = True
    refund.review_reason = "; ".join([*reasons, reason])
    refund.updated_at = utcnow()
    refund.history.append(
        RefundStatusChange(
            from_status=refund.status,
            to_status=refund.status,
            source=source,
            detail=f"needs review: {reason}",
        )
    )
    return True


def counted_cents(refund: Refund) -> int:
    """What a refund takes from the order's refundable amount (a waiting REQUESTED one counts)."""
    if refund.status in RELEASED:
        return 0
    if refund.status == RefundStatus.REFUNDED and refund.refunded_amount_cents is not None:
        return refund.refunded_amount_cents
    return refund.amount_cents


def committed_cents(session: Transaction, order_id: str) -> int:
    """The sum of the order's refunds that are not FAILED or DENIED (what they refund or will,
    REQUESTED ones included: waiting requests never add up beyond what was paid)."""
    total = session.scalar(_COMMITTED, {"order_id": order_id})
    return int(total or 0)


# Built once: it runs under the order's lock in every refund request (docs/performance.md).
_COMMITTED = select(
    func.coalesce(
        func.sum(
            case(
                (
                    Refund.status == RefundStatus.REFUNDED,
                    func.coalesce(Refund.refunded_amount_cents, Refund.amount_cents),
                ),
                else_=Refund.amount_cents,
            )
        ),
        0,
    )
).where(Refund.order_id == bindparam("order_id"), Refund.status.not_in(RELEASED))


def refunded_cents(session: Session, order_id: str) -> int:
    """The sum actually refunded on the order (REFUNDED refunds only)."""
    total = session.scalar(
        select(
            func.coalesce(
                func.sum(func.coalesce(Refund.refunded_amount_cents, Refund.amount_cents)), 0
            )
        ).where(Refund.order_id == order_id, Refund.status == RefundStatus.REFUNDED)
    )
    return int(total or 0)


def refundable_cents(session: Transaction, order_id: str, paid_cents: int) -> int:
    return max(0, paid_cents - committed_cents(session, order_id))


def as_cents(value: Any) -> int | None:
    """An amount from Directus as integer cents: an integer, or a string of digits (Directus sends
    a BIGINT as text on PostgreSQL); None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def clean_text(value: object, limit: int) -> str | None:
    """Partner-supplied text as safe text for the ledger: printable, stripped, at most `limit`
    characters; None when nothing is left."""
    if not isinstance(value, str):
        return None
    text = "".join(ch if ch.isprintable() else " " for ch in value).strip()
    return text[:limit] or None


def iso(value: Any) -> str | None:
    return value.isoformat().replace("+00:00", "Z") if value is not None else None


def refund_to_dict(refund: Refund, *, with_history: bool = False) -> dict[str, Any]:
    """The refund as the API shows it (contract section 1)."""
    body: dict[str, Any] = {
        "id": refund.id,
        "order_id": refund.order_id,
        "ridendine_order_id": refund.ridendine_order_id,
        "amount_cents": refund.amount_cents,
        "refunded_amount_cents": refund.refunded_amount_cents,
        "currency": refund.currency,
        "reason": refund.reason,
        "reason_comments": refund.reason_comments,
        "requested_by": refund.requested_by,
        "requested_by_user": refund.requested_by_user,
        "items": refund.items,
        "status": refund.status,
        "ridendine_refund_id": refund.ridendine_refund_id,
        "source": refund.source,
        "needs_review": refund.needs_review,
        "review_reason": refund.review_reason,
        "failure_reason": refund.failure_reason,
        "decided_by": refund.decided_by,
        "decided_at": iso(refund.decided_at),
        "decision_comment": refund.decision_comment,
        "created_at": iso(refund.created_at),
        "updated_at": iso(refund.updated_at),
    }
    if with_history:
        body["history"] = history_to_list(refund)
    return body


def history_to_list(refund: Refund) -> list[dict[str, Any]]:
    return [
        {
            "from_status": change.from_status,
            "to_status": change.to_status,
            "source": change.source,
            "detail": change.detail,
            "at": iso(change.at),
        }
        for change in refund.history
    ]
