"""The state machine of refund results (bridge/ledger/results.py), on the real store: what each
result does to the refund and which outbox jobs it queues (through bridge/webhooks/apply.py's
apply_result, which queues what the ledger's outcome names). The Directus side of those jobs is
tested in tests/webhooks/test_directus.py."""

from __future__ import annotations

from typing import Any

import pytest
from flask import Flask

from bridge.ledger.ledger import SOURCE_RECONCILIATION, SOURCE_WEBHOOK
from bridge.ledger.results import ResultOutcome, apply_to_ledger
from bridge.services import Services
from bridge.store.models import Refund, RefundStatus
from bridge.webhooks.apply import apply_result
from tests.support.helpers import unique_id
from tests.support.webhook_helpers import jobs, load_refund, make_pending_refund


@pytest.fixture
def services(app: Flask) -> Services:
    services: Services = app.extensions["bridge.services"]
    return services


def an_order(amount: int = 5000) -> dict[str, Any]:
    order_id = unique_id("ord")
    return {
        "id": order_id,
        "ridendine_order_id": f"rdn-{order_id}",
        "amount_paid_cents": amount,
        "currency": "EUR",
    }


def apply(
    services: Services,
    refund_id: str,
    status: str,
    amount: int | None,
    *,
    source: str = SOURCE_WEBHOOK,
    failure_reason: str | None = None,
) -> ResultOutcome:
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        return apply_result(
            session,
            refund,
            status,
            amount_cents=amount,
            source=source,
            failure_reason=failure_reason,
        )


def kinds(services: Services) -> list[str]:
    return [job.kind for job in jobs(services)]


def test_refunded_moves_pending_and_queues_order_projection_and_notification(
    services: Services,
) -> None:
    refund_id = make_pending_refund(services, an_order(), amount_cents=5000)
    outcome = apply(services, refund_id, "REFUNDED", 5000)
    assert outcome.changed and outcome.status_after == "REFUNDED"
    refund = load_refund(services, refund_id)
    assert refund.status == "REFUNDED"
    assert refund.refunded_amount_cents == 5000
    assert refund.needs_review is False
    assert refund.resolved_at is not None
    assert [(h.from_status, h.to_status, h.source) for h in refund.history] == [
        (None, "PENDING", "request"),
        ("PENDING", "REFUNDED", "webhook"),
    ]
    assert sorted(kinds(services)) == ["apply_order", "notify_result", "project_refund"]
    assert f"notify:{refund_id}:REFUNDED" in [job.dedupe_key for job in jobs(services)]


def test_the_same_result_twice_changes_nothing_and_queues_nothing(services: Services) -> None:
    refund_id = make_pending_refund(services, an_order())
    apply(services, refund_id, "REFUNDED", 5000)
    before = kinds(services)
    outcome = apply(services, refund_id, "REFUNDED", 5000)
    assert not outcome.changed and outcome.review_reasons == []
    assert kinds(services) == before
    assert len(load_refund(services, refund_id).history) == 2


def test_a_different_amount_is_taken_as_refunded_and_flagged(services: Services) -> None:
    refund_id = make_pending_refund(services, an_order(), amount_cents=5000)
    outcome = apply(services, refund_id, "REFUNDED", 4500)
    refund = load_refund(services, refund_id)
    assert refund.status == "REFUNDED"
    assert refund.refunded_amount_cents == 4500
    assert refund.amount_cents == 5000
    assert refund.needs_review is True
    assert "4500" in (refund.review_reason or "") and "5000" in (refund.review_reason or "")
    assert outcome.review_reasons
    assert kinds(services).count("alert_admins") == 1
    assert "apply_order" in kinds(services)


def test_failed_moves_pending_and_leaves_the_order_alone(services: Services) -> None:
    refund_id = make_pending_refund(services, an_order())
    apply(services, refund_id, "FAILED", 5000, failure_reason="card\x00 expired")
    refund = load_refund(services, refund_id)
    assert refund.status == "FAILED"
    assert refund.failure_reason == "card  expired"
    assert refund.needs_review is False
    assert sorted(kinds(services)) == ["notify_result", "project_refund"]


def test_failed_without_a_reason_gets_a_default_one(services: Services) -> None:
    refund_id = make_pending_refund(services, an_order())
    apply(services, refund_id, "FAILED", 5000)
    assert load_refund(services, refund_id).failure_reason


def test_failed_after_refunded_flags_alerts_and_keeps_the_state(services: Services) -> None:
    refund_id = make_pending_refund(services, an_order())
    apply(services, refund_id, "REFUNDED", 5000)
    before = kinds(services)
    outcome = apply(services, refund_id, "FAILED", 5000)
    refund = load_refund(services, refund_id)
    assert refund.status == "REFUNDED"
    assert not outcome.changed
    assert refund.needs_review is True
    assert "FAILED after" in (refund.review_reason or "")
    added = kinds(services)[len(before) :]
    # No order update, no customer e-mail; the admins are told by e-mail and in the app.
    assert sorted(added) == ["alert_admins", "notify_in_app", "project_refund"]
    # A third delivery of that FAILED adds nothing.
    apply(services, refund_id, "FAILED", 5000)
    assert len(kinds(services)) == len(before) + 3


def test_refunded_after_failed_is_refunded_and_flagged(services: Services) -> None:
    refund_id = make_pending_refund(services, an_order())
    apply(services, refund_id, "FAILED", 5000)
    outcome = apply(services, refund_id, "REFUNDED", 5000)
    refund = load_refund(services, refund_id)
    assert refund.status == "REFUNDED"
    assert refund.needs_review is True
    assert refund.review_reason == "refunded after it had failed"
    assert outcome.review_reasons == ["refunded after it had failed"]
    assert sorted(kinds(services)) == [
        "alert_admins",
        "apply_order",
        "notify_in_app",
        "notify_result",
        "notify_result",
        "project_refund",
        "project_refund",
    ]
    assert [h.to_status for h in refund.history] == [
        "PENDING",
        "FAILED",
        "REFUNDED",
        "REFUNDED",  # the review flag's line
    ]


def test_reconciliation_uses_the_same_machine_with_its_source(services: Services) -> None:
    refund_id = make_pending_refund(services, an_order())
    apply(services, refund_id, "REFUNDED", None, source=SOURCE_RECONCILIATION)
    refund = load_refund(services, refund_id)
    assert refund.status == RefundStatus.REFUNDED
    assert refund.refunded_amount_cents == refund.amount_cents  # no amount: the one requested
    assert refund.history[-1].source == "reconciliation"
    # The webhook arriving afterwards is a duplicate result: nothing more.
    before = kinds(services)
    apply(services, refund_id, "REFUNDED", refund.amount_cents)
    assert kinds(services) == before


def test_a_second_refunded_with_another_amount_is_flagged(services: Services) -> None:
    refund_id = make_pending_refund(services, an_order(), amount_cents=5000)
    apply(services, refund_id, "REFUNDED", 5000)
    apply(services, refund_id, "REFUNDED", 4000)
    refund = load_refund(services, refund_id)
    assert refund.refunded_amount_cents == 5000
    assert refund.needs_review is True


def test_only_results_are_applied(services: Services) -> None:
    refund_id = make_pending_refund(services, an_order())
    with pytest.raises(ValueError, match="not a refund result"):
        apply(services, refund_id, "PENDING", 5000)


def test_the_ledger_alone_queues_nothing_and_names_the_jobs_and_alerts(
    services: Services,
) -> None:
    refund_id = make_pending_refund(services, an_order(), amount_cents=5000)
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        outcome = apply_to_ledger(refund, "REFUNDED", amount_cents=4000, source=SOURCE_WEBHOOK)
    assert outcome.changed and outcome.status_after == "REFUNDED"
    assert outcome.jobs == ["apply_order", "project_refund", "notify_result"]
    assert outcome.review_reasons == ["RideNDine refunded 4000 cents, 5000 were requested"]
    assert load_refund(services, refund_id).needs_review is True
    assert kinds(services) == []
