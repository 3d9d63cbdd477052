"""The ledger's state machine and amounts, on the real store."""

from __future__ import annotations

import pytest

from bridge.ledger import ledger
from bridge.store import db
from bridge.store.models import RefundStatus
from tests.support.helpers import new_refund


@pytest.fixture
def store(database_url: str) -> db.Store:
    store = db.Store(database_url)
    db.upgrade(store.engine)
    return store


def test_forward_moves_and_history() -> None:
    refund = new_refund()
    assert ledger.transition(refund, RefundStatus.REFUNDED, source=ledger.SOURCE_WEBHOOK)
    assert refund.status == RefundStatus.REFUNDED
    assert refund.resolved_at is not None
    assert [(h.from_status, h.to_status) for h in refund.history] == [
        (None, "PENDING"),
        ("PENDING", "REFUNDED"),
    ]
    # A repeat is no change.
    assert not ledger.transition(refund, RefundStatus.REFUNDED, source=ledger.SOURCE_WEBHOOK)
    assert len(refund.history) == 2


def test_refunded_never_goes_back() -> None:
    refund = new_refund()
    ledger.transition(refund, RefundStatus.REFUNDED, source=ledger.SOURCE_WEBHOOK)
    assert not ledger.transition(refund, RefundStatus.FAILED, source=ledger.SOURCE_WEBHOOK)
    assert not ledger.transition(refund, RefundStatus.PENDING, source=ledger.SOURCE_WEBHOOK)
    assert refund.status == RefundStatus.REFUNDED


def test_refunded_after_failed_is_allowed_and_flagged() -> None:
    refund = new_refund()
    ledger.transition(refund, RefundStatus.FAILED, source=ledger.SOURCE_WEBHOOK)
    assert not refund.needs_review
    assert ledger.transition(refund, RefundStatus.REFUNDED, source=ledger.SOURCE_WEBHOOK)
    assert refund.status == RefundStatus.REFUNDED
    assert refund.needs_review
    assert refund.review_reason == "refunded after it had failed"


def test_flag_review_is_idempotent_per_reason() -> None:
    refund = new_refund()
    assert ledger.mark_for_review(refund, "amount differs", source="webhook")
    assert not ledger.mark_for_review(refund, "amount differs", source="webhook")
    assert ledger.mark_for_review(refund, "stripe disagrees", source="reconciliation")
    assert refund.review_reason == "amount differs; stripe disagrees"


def test_refundable_counts_everything_but_failed(store: db.Store) -> None:
    with store.session() as session:
        pending = new_refund("ord-a", 3000)
        failed = new_refund("ord-a", 2000)
        refunded = new_refund("ord-a", 1000)
        other_order = new_refund("ord-b", 9000)
        ledger.transition(failed, RefundStatus.FAILED, source="webhook")
        ledger.transition(refunded, RefundStatus.REFUNDED, source="webhook")
        refunded.refunded_amount_cents = 1500  # the partner refunded more than asked
        session.add_all([pending, failed, refunded, other_order])
    with store.session() as session:
        assert ledger.committed_cents(session, "ord-a") == 3000 + 1500
        assert ledger.refunded_cents(session, "ord-a") == 1500
        assert ledger.refundable_cents(session, "ord-a", 10_000) == 10_000 - 4500
        assert ledger.refundable_cents(session, "ord-a", 4000) == 0
        assert ledger.refundable_cents(session, "ord-none", 700) == 700


def test_refund_to_dict_has_the_contract_fields() -> None:
    refund = new_refund()
    body = ledger.refund_to_dict(refund, with_history=True)
    for key in (
        "id",
        "order_id",
        "ridendine_order_id",
        "amount_cents",
        "currency",
        "reason",
        "reason_comments",
        "requested_by",
        "status",
        "ridendine_refund_id",
        "created_at",
        "updated_at",
        "needs_review",
        "review_reason",
        "history",
    ):
        assert key in body
    assert body["id"].startswith("rf_")
    assert body["history"][0]["to_status"] == "PENDING"
