"""Property tests (hypothesis) of the refund state machine and of the refundable amount.

1. Results: for any set of refunds of an order and any results RideNDine sends for them
   (REFUNDED, FAILED, both in either order, a smaller refunded amount), delivering the signed
   webhooks in any interleaving, with duplicates (the same webhook-id again, or the same result
   as a new message) and reordered, through the real endpoint and store, ends in the same state
   as the ordered, de-duplicated sequence: each refund's status, refunded amount, review flag
   and RideNDine id, the order's refunded total, and the jobs that carry results outside (one
   order update per REFUNDED refund, one notification per result reached). Every delivery is
   answered 200 and recorded once.
2. Amounts: for any sequence of refund requests (an amount, a percentage, line items, or "all
   that is left"), customers' requests that wait for an admin (the order is DELIVERED: the
   refund policy), admins' approvals and denials of them (again, or of one already decided) and
   results on a real order in the real Directus, the bridge answers exactly as a model of the
   order's money says (202, 200, or 409 with `refundable_cents` or
   `refund_not_awaiting_approval`), and never commits or refunds more than was paid: waiting
   requests count, denied ones do not.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from bridge import create_app
from bridge.ledger import ledger
from bridge.services import Services, get_services
from bridge.store.models import InboxEvent, OutboxJob, Refund, RefundSource, RefundStatus
from devstack.directus import DirectusServer
from devstack.sandbox import SandboxProcess
from directus_client import DirectusClient
from tests.support import reliability
from tests.support.helpers import SERVICE_TOKEN, make_order, make_settings, make_user
from tests.support.webhook_helpers import event_body, post_event

PAID = 10_000
PROPERTY_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# What RideNDine says about one refund, in the order it says it.
STORIES = (
    (),
    ("REFUNDED",),
    ("FAILED",),
    ("FAILED", "REFUNDED"),  # the sandbox's out_of_order
    ("REFUNDED", "FAILED"),  # refunded_then_failed
)


@dataclass(frozen=True)
class PlannedRefund:
    amount: int
    story: tuple[str, ...]
    known_id: bool  # the bridge knows RideNDine's refund id (else matched by amount)
    refunded: int  # the amount a REFUNDED result reports


@dataclass(frozen=True)
class Event:
    refund: int  # index into the plan
    status: str
    step: int  # position in the refund's story


@st.composite
def plans(draw: st.DrawFn) -> list[PlannedRefund]:
    count = draw(st.integers(1, 4))
    amounts = draw(
        st.lists(st.integers(1, PAID // count), min_size=count, max_size=count, unique=True)
    )
    planned = []
    for amount in amounts:
        story = draw(st.sampled_from(STORIES))
        known = draw(st.booleans())
        # A smaller refunded amount only with a known id (matching by amount needs the
        # amount requested).
        refunded = draw(st.integers(1, amount)) if known and draw(st.booleans()) else amount
        planned.append(PlannedRefund(amount, story, known, refunded))
    return planned


@st.composite
def deliveries(draw: st.DrawFn, plan: list[PlannedRefund]) -> list[tuple[Event, int]]:
    """The events of `plan` shuffled, each sent 1-3 times as (event, copy number)."""
    events = [
        Event(index, status, step)
        for index, planned in enumerate(plan)
        for step, status in enumerate(planned.story)
    ]
    sent = [(event, copy) for event in events for copy in range(draw(st.integers(1, 3)))]
    return draw(st.permutations(sent))


@pytest.fixture(scope="module")
def results_app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    folder: Path = tmp_path_factory.mktemp("fuzz-state")
    return create_app(
        {
            # Directus is not needed: matched results are applied to the ledger inline; the
            # Directus work waits in the outbox (and is counted here).
            "BRIDGE_SETTINGS": make_settings("http://127.0.0.1:9", "directus-token-unused"),
            "DATABASE_URL": f"sqlite:///{folder / 'bridge.sqlite3'}",
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )


class ResultsRun:
    """One order with the planned refunds in the ledger, fed webhooks."""

    def __init__(self, app: Flask, plan: list[PlannedRefund]) -> None:
        self.client: FlaskClient = app.test_client()
        with app.app_context():
            self.services: Services = get_services()
        self.order_id = f"ord-{uuid.uuid4().hex[:12]}"
        self.partner_ids = [f"re_{uuid.uuid4().hex[:20]}" for _ in plan]
        self.refund_ids: list[str] = []
        self.plan = plan
        with self.services.store.session() as session:
            for planned, partner_id in zip(plan, self.partner_ids, strict=True):
                refund = Refund(
                    order_id=self.order_id,
                    ridendine_order_id=f"rdn-{self.order_id}",
                    amount_cents=planned.amount,
                    currency="EUR",
                    reason="chef_rejected",
                    requested_by="admin",
                    status=RefundStatus.PENDING,
                    ridendine_refund_id=partner_id if planned.known_id else None,
                    source=RefundSource.COOCO,
                )
                ledger.record_created(refund)
                session.add(refund)
                session.flush()  # created_at order: the oldest PENDING is matched first
                self.refund_ids.append(refund.id)

    def deliver(self, event: Event, copy: int) -> None:
        planned = self.plan[event.refund]
        amount = planned.refunded if event.status == "REFUNDED" else planned.amount
        body = event_body(self.partner_ids[event.refund], self.order_id, amount, event.status)
        # Copy 0 and 1 share a webhook-id (a redelivery); copy 2 is the same result as a new
        # message (a partner that sends it twice).
        webhook_id = f"msg_{self.partner_ids[event.refund]}_{event.status}_{copy // 2}"
        # post_event: POST, then the worker's processing of what was recorded.
        answer = post_event(self.client, body, webhook_id=webhook_id)
        assert answer.status_code == 200, answer.get_data(as_text=True)
        assert answer.get_json()["status"] in ("accepted", "duplicate")

    def state(self) -> dict[str, Any]:
        with self.services.store.session() as session:
            refunds = [session.get(Refund, refund_id) for refund_id in self.refund_ids]
            jobs = list(
                session.execute(
                    select(OutboxJob.kind, OutboxJob.dedupe_key, OutboxJob.refund_id).where(
                        OutboxJob.refund_id.in_(self.refund_ids)
                    )
                )
            )
            events = list(
                session.execute(
                    select(InboxEvent.state, InboxEvent.refund_id).where(
                        InboxEvent.external_order_id == self.order_id
                    )
                )
            )
            resolving = session.scalar(
                select(OutboxJob.id).where(OutboxJob.kind == "resolve_event").limit(1)
            )
            return {
                "refunds": [
                    (
                        refund.status,
                        refund.refunded_amount_cents,
                        refund.needs_review,
                        refund.ridendine_refund_id,
                    )
                    for refund in refunds
                    if refund is not None
                ],
                "committed": ledger.committed_cents(session, self.order_id),
                "refunded": ledger.refunded_cents(session, self.order_id),
                "order_updates": Counter(
                    self.refund_ids.index(r) for kind, _, r in jobs if kind == "apply_order"
                ),
                "notifications": Counter(
                    (self.refund_ids.index(r), key.rsplit(":", 1)[-1])
                    for kind, key, r in jobs
                    if kind == "notify_result"
                ),
                "events": Counter(state for state, _ in events),
                "unmatched": resolving is not None,
            }

    def comparable(self) -> dict[str, Any]:
        """The state with RideNDine's ids replaced by their position (each run has its own)."""
        state = self.state()
        state["refunds"] = [
            (*values[:3], self.partner_ids.index(values[3]) if values[3] else None)
            for values in state["refunds"]
        ]
        return state


FIGURES: Counter[str] = Counter()


@given(data=st.data())
@PROPERTY_SETTINGS
def test_any_interleaving_of_results_ends_as_the_ordered_sequence(
    results_app: Flask, data: st.DataObject
) -> None:
    plan = data.draw(plans(), label="plan")
    sent = data.draw(deliveries(plan), label="deliveries")

    ordered = ResultsRun(results_app, plan)
    for index, planned in enumerate(plan):
        for step, status in enumerate(planned.story):
            ordered.deliver(Event(index, status, step), 0)
    shuffled = ResultsRun(results_app, plan)
    for event, copy in sent:
        shuffled.deliver(event, copy)
    FIGURES["result_examples"] += 1
    FIGURES["webhooks"] += len(sent) + sum(len(p.story) for p in plan)

    expected, got = ordered.comparable(), shuffled.comparable()
    assert got["refunds"] == expected["refunds"]
    assert (got["committed"], got["refunded"]) == (expected["committed"], expected["refunded"])
    assert got["order_updates"] == expected["order_updates"]
    assert got["events"] == expected["events"]
    assert not got["unmatched"]

    # Each result applied once: one order update per REFUNDED refund, one notification per
    # result reached (a FAILED that arrives after REFUNDED is a review flag, not a result).
    for index, planned in enumerate(plan):
        final = got["refunds"][index][0]
        assert final == (
            "REFUNDED" if "REFUNDED" in planned.story else "FAILED" if planned.story else "PENDING"
        )
        assert got["order_updates"][index] == (1 if final == "REFUNDED" else 0)
        assert got["notifications"][(index, final)] == (0 if final == "PENDING" else 1)
        for status in ("REFUNDED", "FAILED"):
            assert got["notifications"][(index, status)] <= 1
        assert got["refunds"][index][2] == (
            len(planned.story) == 2 or (planned.refunded != planned.amount and final == "REFUNDED")
        )
    # Every distinct result recorded once, and applied.
    assert sum(got["events"].values()) == sum(len(p.story) for p in plan)
    assert set(got["events"]) <= {"applied"}
    # Truthful results never refund more than the refunds asked for, which never exceed
    # what was paid.
    assert got["refunded"] <= got["committed"] + sum(
        p.amount for p in plan if p.story == ("FAILED", "REFUNDED")
    )
    assert sum(p.amount for p in plan) <= PAID


# -- amounts against a real order ----------------------------------------------------------


@dataclass
class AmountsTarget:
    client: FlaskClient
    services: Services
    admin: DirectusClient
    admin_user_id: str  # a Directus admin the service token acts for (approve, deny)


@pytest.fixture(scope="module")
def amounts_target(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    ridendine_sandbox: SandboxProcess,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[AmountsTarget]:
    folder: Path = tmp_path_factory.mktemp("fuzz-amounts")
    app = create_app(
        {
            "BRIDGE_SETTINGS": make_settings(
                cooco_directus.url,
                cooco_directus.admin_token,
                ridendine_api_url=ridendine_sandbox.url,
            ),
            "DATABASE_URL": f"sqlite:///{folder / 'bridge.sqlite3'}",
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    with app.app_context():
        services = get_services()
    admin_user = make_user(directus_admin, admin=True)
    yield AmountsTarget(app.test_client(), services, directus_admin, admin_user["id"])
    reliability.record("test_fuzz_state", **FIGURES)


requests_st = st.one_of(
    st.tuples(st.just("amount"), st.integers(1, 2 * PAID)),
    st.tuples(st.just("percent"), st.integers(1, 100)),
    st.tuples(st.just("items"), st.lists(st.integers(0, PAID), min_size=1, max_size=3)),
    st.tuples(st.just("rest"), st.none()),
    st.tuples(st.just("result"), st.tuples(st.integers(0, 20), st.sampled_from(STORIES[1:]))),
    # The refund policy: a customer's request on the DELIVERED order waits (REQUESTED); an
    # admin approves or denies one of them (perhaps one already decided: 409).
    st.tuples(st.just("customer"), st.one_of(st.none(), st.integers(1, 2 * PAID))),
    st.tuples(st.just("approve"), st.integers(0, 20)),
    st.tuples(st.just("deny"), st.integers(0, 20)),
)


@given(steps=st.lists(requests_st, min_size=1, max_size=8), paid=st.integers(1, PAID))
@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
def test_the_bridge_never_commits_more_than_was_paid(
    amounts_target: AmountsTarget, steps: list[tuple[str, Any]], paid: int
) -> None:
    target = amounts_target
    FIGURES["amount_examples"] += 1
    order = make_order(target.admin, amount_paid_cents=paid)
    committed = 0  # the model: refunds asked for and not FAILED or DENIED
    refunds: list[dict[str, Any]] = []  # with their amount and whether they still count
    waiting_requests: list[dict[str, Any]] = []  # customers' requests, and whether they wait
    acting_admin = {
        "Authorization": f"Bearer {SERVICE_TOKEN}",
        "X-Directus-User-Id": target.admin_user_id,
    }
    for kind, value in steps:
        FIGURES["amount_steps"] += 1
        if kind in ("approve", "deny"):
            if not waiting_requests:
                continue
            request = waiting_requests[value % len(waiting_requests)]
            answer = target.client.post(
                f"/ridendine/refunds/{request['id']}/{kind}", headers=acting_admin
            )
            if not request["waiting"]:
                assert answer.status_code == 409, answer.get_json()
                assert answer.get_json()["code"] == "refund_not_awaiting_approval"
            else:
                assert answer.status_code == 200, answer.get_json()
                shown = answer.get_json()["refund"]
                request["waiting"] = False
                FIGURES[f"{kind}d"] += 1
                if kind == "deny":
                    assert shown["status"] == "DENIED"
                    committed -= request["amount"]
                else:
                    assert shown["status"] == "PENDING"
                    assert shown["ridendine_refund_id"]  # sent once approved
                    refunds.append(
                        {
                            "amount": request["amount"],
                            "ridendine_refund_id": shown["ridendine_refund_id"],
                            "decided": False,
                        }
                    )
        elif kind == "customer":
            body = {
                "order_id": order["id"],
                "reason": "customer_cancel",
                "requested_by": "customer",
            }
            if value is not None:
                body["amount_cents"] = value
            service = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
            answer = target.client.post("/ridendine/refunds", json=body, headers=service)
            refundable = paid - committed
            wanted = refundable if value is None else value
            if 1 <= wanted <= refundable:
                assert answer.status_code == 202, answer.get_json()
                shown = answer.get_json()["refund"]
                assert (shown["status"], shown["amount_cents"]) == ("REQUESTED", wanted)
                assert shown["ridendine_refund_id"] is None  # RideNDine hears nothing
                waiting_requests.append({"id": shown["id"], "amount": wanted, "waiting": True})
                committed += wanted
            else:
                assert answer.status_code == 409, answer.get_json()
                assert answer.get_json()["refundable_cents"] == refundable
        elif kind == "result":
            # RideNDine's word on a refund it has not decided yet (a FAILED refund that is
            # REFUNDED later, after its amount was asked for again, is the partner
            # contradicting itself: test_a_failed_refund_refunded_later_is_flagged).
            waiting = [refund for refund in refunds if not refund["decided"]]
            if not waiting:
                continue
            index, story = value
            refund = waiting[index % len(waiting)]
            refund["decided"] = True
            for status in story:
                body = event_body(
                    refund["ridendine_refund_id"], order["id"], refund["amount"], status
                )
                answer = post_event(target.client, body)
                assert answer.status_code == 200
            if story == ("FAILED",):
                committed -= refund["amount"]
        else:
            body: dict[str, Any] = {
                "order_id": order["id"],
                "reason": "chef_rejected",
                "requested_by": "admin",
            }
            if kind == "amount":
                body["amount_cents"] = value
                asked: int | None = value
            elif kind == "percent":
                body["percent"] = value
                asked = paid * value // 100
            elif kind == "items":
                body["items"] = [
                    {"external_id": f"i{n}", "name": "dish", "quantity": 1, "amount_cents": cents}
                    for n, cents in enumerate(value)
                ]
                asked = sum(value)
            else:
                asked = None
            answer = target.client.post(
                "/ridendine/refunds",
                json=body,
                headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
            )
            refundable = paid - committed
            wanted = refundable if asked is None else asked
            if wanted < 1 and kind in ("percent", "items"):
                assert answer.status_code == 400, answer.get_json()
                continue
            if 1 <= wanted <= refundable:
                assert answer.status_code == 202, answer.get_json()
                shown = answer.get_json()["refund"]
                assert shown["amount_cents"] == wanted
                assert shown["ridendine_refund_id"]  # the sandbox answered inline
                refunds.append(
                    {
                        "amount": wanted,
                        "ridendine_refund_id": shown["ridendine_refund_id"],
                        "decided": False,
                    }
                )
                committed += wanted
            else:
                assert answer.status_code == 409, answer.get_json()
                problem = answer.get_json()
                assert problem["code"] == "amount_exceeds_refundable"
                assert problem["refundable_cents"] == refundable
        with target.services.store.session() as session:
            assert ledger.committed_cents(session, order["id"]) == committed <= paid
            assert ledger.refunded_cents(session, order["id"]) <= paid
    assert json.dumps(refunds)  # the refunds stayed plain data


def test_a_failed_refund_refunded_later_is_flagged(
    amounts_target: AmountsTarget,
) -> None:
    """The one way the refunded total can pass what was paid: RideNDine says FAILED (the
    amount is free again and is asked for again), then REFUNDED for the first refund after
    all. The bridge takes the partner's word (money moved) but never silently: the refund is
    flagged for review and the admins are alerted."""
    target = amounts_target
    order = make_order(target.admin, amount_paid_cents=1000)
    headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
    body = {"order_id": order["id"], "reason": "chef_rejected", "requested_by": "admin"}
    first = target.client.post("/ridendine/refunds", json=body, headers=headers).get_json()
    partner_id = first["refund"]["ridendine_refund_id"]
    failed = event_body(partner_id, order["id"], 1000, "FAILED")
    assert post_event(target.client, failed).status_code == 200
    second = target.client.post("/ridendine/refunds", json=body, headers=headers)
    assert second.status_code == 202
    late = event_body(partner_id, order["id"], 1000, "REFUNDED")
    assert post_event(target.client, late).status_code == 200

    with target.services.store.session() as session:
        refund = session.get(Refund, first["refund"]["id"])
        assert refund is not None
        assert refund.status == RefundStatus.REFUNDED
        assert refund.needs_review
        assert "refunded after it had failed" in (refund.review_reason or "")
        alerts = session.scalars(
            select(OutboxJob.dedupe_key).where(
                OutboxJob.kind == "alert_admins", OutboxJob.refund_id == refund.id
            )
        ).all()
    assert alerts, "the admins were not alerted"
