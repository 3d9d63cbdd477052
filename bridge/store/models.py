"""The bridge's own store: the refunds ledger, its history, the webhook inbox and the outbox.

The ledger is the source of truth for refunds; Directus's `refunds` collection is a projection of
it. Money is integer cents everywhere. Timestamps are timezone-aware UTC.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Stable constraint names, so Alembic migrations read the same on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes on every backend (SQLite would hand back naive ones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_refund_id() -> str:
    """A fresh refund id; also the Idempotency-Key sent to RideNDine on every attempt."""
    return "rf_" + secrets.token_hex(12)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class RefundStatus(StrEnum):
    PENDING = "PENDING"
    REFUNDED = "REFUNDED"
    FAILED = "FAILED"
    # The refund policy (contract section 1a, docs/refunds.md): a customer's request that
    # waits for an admin, and one an admin refused.
    REQUESTED = "REQUESTED"
    DENIED = "DENIED"


class RefundSource(StrEnum):
    COOCO = "cooco"  # requested through POST /ridendine/refunds
    RIDENDINE = "ridendine"  # first seen in a webhook: started outside COOCO


class Refund(Base):
    __tablename__ = "refunds"

    id: Mapped[str] = mapped_column(String(40), primary_key=True, default=new_refund_id)
    order_id: Mapped[str] = mapped_column(String(255), index=True)
    ridendine_order_id: Mapped[str | None] = mapped_column(String(255))
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    # What RideNDine says was refunded; differs from amount_cents only when flagged for review.
    refunded_amount_cents: Mapped[int | None] = mapped_column(BigInteger)
    # What the order's customer paid, known when the refund was recorded (from the order the
    # request read): the worker needs it for the order's payment_status, so it does not read
    # the order again. None for refunds recorded before it was kept (migration 0003).
    order_paid_cents: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(String(3))
    reason: Mapped[str] = mapped_column(String(64))
    reason_comments: Mapped[str | None] = mapped_column(Text)
    requested_by: Mapped[str] = mapped_column(String(32))
    requested_by_user: Mapped[str | None] = mapped_column(String(255))
    items: Mapped[list[Any] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default=RefundStatus.PENDING)
    ridendine_refund_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    source: Mapped[str] = mapped_column(String(16), default=RefundSource.COOCO)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=False)
    review_reason: Mapped[str | None] = mapped_column(Text)
    failure_reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    resolved_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # An admin's decision on a REQUESTED refund (approve or deny): who (Directus user id),
    # when and why; `reminded_at` when the admins were reminded of it (once).
    decided_by: Mapped[str | None] = mapped_column(String(255))
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    decision_comment: Mapped[str | None] = mapped_column(Text)
    reminded_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    history: Mapped[list[RefundStatusChange]] = relationship(
        back_populates="refund", order_by="RefundStatusChange.id", cascade="all, delete-orphan"
    )

    __table_args__ = (Index("ix_refunds_order_status", "order_id", "status"),)

    def __init__(self, **values: Any) -> None:
        # The id is known before the first flush: it is the key sent to RideNDine.
        values.setdefault("id", new_refund_id())
        super().__init__(**values)


class RefundStatusChange(Base):
    """One line of a refund's history: every status change and every review flag."""

    __tablename__ = "refund_status_changes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    refund_id: Mapped[str] = mapped_column(ForeignKey("refunds.id"), index=True)
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    # request | ridendine_api | webhook | reconciliation | worker | operator
    source: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    refund: Mapped[Refund] = relationship(back_populates="history")


class OrderLock(Base):
    """A row per order, locked for the duration of a refund request's amount check.

    On PostgreSQL the request takes `SELECT ... FOR UPDATE` on it; on SQLite every write
    transaction is `BEGIN IMMEDIATE`, so the single writer serialises them anyway and no row
    is written (`lock_order`).
    """

    __tablename__ = "order_locks"

    order_id: Mapped[str] = mapped_column(String(255), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyRecord(Base):
    """An `Idempotency-Key` from a caller of POST /ridendine/refunds and the answer given."""

    __tablename__ = "idempotency_keys"

    # Keys are scoped by caller, so two callers can never see each other's answers.
    caller: Mapped[str] = mapped_column(String(255), primary_key=True)
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    refund_id: Mapped[str | None] = mapped_column(String(40))
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_body: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    response_headers: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class InboxState(StrEnum):
    RECEIVED = "received"  # recorded, not yet applied
    APPLIED = "applied"  # applied to the ledger (Directus work is in the outbox)
    UNMATCHED = "unmatched"  # order unknown so far; retried, then reported
    FAILED = "failed"  # could not be applied; needs an operator (inbox replay)


class InboxEvent(Base):
    """A refund-status webhook as received: recorded before the 200, never dropped."""

    __tablename__ = "inbox_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(String(255), unique=True)
    # Second dedupe key: the same partner refund id with the same status.
    dedupe_key: Mapped[str] = mapped_column(String(300), unique=True)
    ridendine_refund_id: Mapped[str] = mapped_column(String(255), index=True)
    external_order_id: Mapped[str] = mapped_column(String(255), index=True)
    amount_cents: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    raw_body: Mapped[bytes] = mapped_column(LargeBinary)
    headers: Mapped[dict[str, Any]] = mapped_column(JSON)
    state: Mapped[str] = mapped_column(String(16), default=InboxState.RECEIVED, index=True)
    refund_id: Mapped[str | None] = mapped_column(String(40), index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class OutboxState(StrEnum):
    PENDING = "pending"
    DONE = "done"
    DEAD = "dead"  # retries exhausted: flagged for review, admins told


class OutboxJob(Base):
    """Work that talks to the outside (RideNDine, Directus, Flows), done at least once.

    `dedupe_key` makes enqueueing idempotent: one submission per refund, one notification per
    refund result. The worker claims due rows (`FOR UPDATE SKIP LOCKED` on PostgreSQL).
    """

    __tablename__ = "outbox_jobs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    kind: Mapped[str] = mapped_column(String(32))
    dedupe_key: Mapped[str] = mapped_column(String(300))
    refund_id: Mapped[str | None] = mapped_column(String(40), index=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    state: Mapped[str] = mapped_column(String(16), default=OutboxState.PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)
    locked_by: Mapped[str | None] = mapped_column(String(128))
    last_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, onupdate=utcnow)
    done_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index("ix_outbox_jobs_due", "state", "next_attempt_at"),
        UniqueConstraint("dedupe_key", name="uq_outbox_jobs_dedupe_key"),
    )
