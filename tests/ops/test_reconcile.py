"""`refund-bridge reconcile`: the ledger against the real Directus and a mocked Stripe. After a
normal run it finds nothing; it finds each planted mismatch (an order changed by hand, a refund
item deleted, an amount changed, Stripe disagreeing); `--fix` repairs what re-projecting can."""

from __future__ import annotations

import csv
import io
import json
import re
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import responses
from click.testing import CliRunner
from flask import Flask
from sqlalchemy import update

from bridge import create_app
from bridge.cli import load_commands
from bridge.config import Settings
from bridge.directus.projection import refund_item
from bridge.ledger import ledger
from bridge.ops import reconcile
from bridge.services import Services
from bridge.store.models import OutboxJob, OutboxState, Refund, RefundStatus, utcnow
from bridge.worker import Worker, WorkerOptions
from devstack.directus import DirectusServer
from directus_client import DirectusClient
from tests.support.helpers import (
    RIDENDINE_URL,
    SERVICE_TOKEN,
    make_order,
    make_settings,
    make_user,
    settings_env,
)
from tests.support.webhook_helpers import event_body, post_event, sync_result_flow

STRIPE_BASE = "https://stripe.example"
STRIPE_KEY = "rk_test_read_only_0123456789"


class FakeStripe:
    """Stripe's refunds as RideNDine made them: created when RideNDine accepts a refund."""

    def __init__(self) -> None:
        self.refunds: dict[str, dict[str, Any]] = {}
        self.requests: list[str] = []

    def create(self, amount: int) -> str:
        refund_id = f"re_{uuid.uuid4().hex[:20]}"
        self.refunds[refund_id] = {
            "id": refund_id,
            "object": "refund",
            "amount": amount,
            "currency": "eur",
            "status": "pending",
            "created": int(time.time()),
        }
        return refund_id

    def set(self, refund_id: str, status: str) -> None:
        self.refunds[refund_id]["status"] = status

    def retrieve(self, request: Any) -> tuple[int, dict[str, str], str]:
        self.requests.append(request.url)
        refund_id = request.path_url.split("?")[0].rsplit("/", 1)[1]
        if refund_id not in self.refunds:
            error = {"error": {"type": "invalid_request_error", "code": "resource_missing"}}
            return 404, {}, json.dumps(error)
        return 200, {}, json.dumps(self.refunds[refund_id])

    def list(self, request: Any) -> tuple[int, dict[str, str], str]:
        self.requests.append(request.url)
        page = {"object": "list", "url": "/v1/refunds", "has_more": False}
        return 200, {}, json.dumps({**page, "data": list(self.refunds.values())})


@pytest.fixture
def bridge_settings(cooco_directus: DirectusServer) -> Settings:
    return make_settings(
        cooco_directus.url,
        cooco_directus.admin_token,
        stripe_api_key=STRIPE_KEY,
        stripe_api_base=STRIPE_BASE,
    )


@pytest.fixture
def fake_stripe() -> FakeStripe:
    return FakeStripe()


@pytest.fixture
def outside(
    cooco_directus: DirectusServer, fake_stripe: FakeStripe
) -> Iterator[responses.RequestsMock]:
    """RideNDine (accepts every refund, which creates it at Stripe) and Stripe, mocked."""

    def accept(request: Any) -> tuple[int, dict[str, str], str]:
        amount = json.loads(request.body)["amount_cents"]
        return 200, {}, json.dumps({"refund_id": fake_stripe.create(amount)})

    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(cooco_directus.url)
        mock.add_callback(responses.POST, f"{RIDENDINE_URL}/refunds/create", callback=accept)
        mock.add_callback(responses.GET, f"{STRIPE_BASE}/v1/refunds", callback=fake_stripe.list)
        mock.add_callback(
            responses.GET,
            re.compile(re.escape(STRIPE_BASE) + r"/v1/refunds/re_\w+"),
            callback=fake_stripe.retrieve,
        )
        yield mock


@pytest.fixture
def bridge(
    bridge_settings: Settings, database_url: str, directus_admin: DirectusClient
) -> Iterator[Flask]:
    app = create_app(
        {
            "BRIDGE_SETTINGS": bridge_settings,
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    services: Services = app.extensions["bridge.services"]
    services.extras["flow_id:refund-result"] = sync_result_flow(directus_admin)
    yield app
    services.directus.close()


@pytest.fixture
def services(bridge: Flask) -> Services:
    services: Services = bridge.extensions["bridge.services"]
    return services


@pytest.fixture
def env(bridge_settings: Settings, database_url: str) -> dict[str, str]:
    return {
        **settings_env(bridge_settings, database_url),
        "BRIDGE_STRIPE_API_KEY": STRIPE_KEY,
        "BRIDGE_STRIPE_API_BASE": STRIPE_BASE,
    }


def request_refund(bridge: Flask, order_id: str, **fields: Any) -> dict[str, Any]:
    response = bridge.test_client().post(
        "/ridendine/refunds",
        json={"order_id": order_id, "reason": "chef_rejected", "requested_by": "admin", **fields},
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    )
    assert response.status_code == 202, response.get_data(as_text=True)
    refund: dict[str, Any] = response.get_json()["refund"]
    return refund


def run_worker(services: Services) -> None:
    worker = Worker(services, WorkerOptions(housekeeping=False))
    for _ in range(4):
        with services.store.session() as session:
            session.execute(
                update(OutboxJob)
                .where(OutboxJob.state == OutboxState.PENDING)
                .values(next_attempt_at=utcnow() - timedelta(seconds=1))
            )
        worker.drain_due()


def run_reconcile(env: dict[str, str], *args: str) -> tuple[int, Any]:
    result = CliRunner().invoke(load_commands(), ["reconcile", "--format", "json", *args], env=env)
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.output)


@pytest.fixture
def normal_run(
    bridge: Flask,
    services: Services,
    outside: responses.RequestsMock,
    fake_stripe: FakeStripe,
    directus_admin: DirectusClient,
) -> dict[str, dict[str, Any]]:
    """Five orders through a normal day: full and partial refunds, a failure, one in flight."""
    orders = {
        "full": make_order(directus_admin, amount_paid_cents=10_000),
        "partial": make_order(directus_admin, amount_paid_cents=8_000),
        "failed": make_order(directus_admin, amount_paid_cents=5_000),
        "stripe": make_order(directus_admin, amount_paid_cents=6_000),
        "in_flight": make_order(directus_admin, amount_paid_cents=4_000),
    }
    refunds = {
        "full": request_refund(bridge, orders["full"]["id"]),
        "partial": request_refund(bridge, orders["partial"]["id"], amount_cents=3_000),
        "failed": request_refund(bridge, orders["failed"]["id"]),
        "stripe": request_refund(bridge, orders["stripe"]["id"], reason="customer_cancel"),
        "in_flight": request_refund(bridge, orders["in_flight"]["id"]),
    }
    client = bridge.test_client()
    for name, status in (
        ("full", "REFUNDED"),
        ("partial", "REFUNDED"),
        ("stripe", "REFUNDED"),
        ("failed", "FAILED"),
    ):
        refund = refunds[name]
        fake_stripe.set(
            refund["ridendine_refund_id"], "succeeded" if status == "REFUNDED" else "failed"
        )
        body = event_body(
            refund["ridendine_refund_id"], refund["order_id"], refund["amount_cents"], status
        )
        assert post_event(client, body).status_code == 200
    run_worker(services)
    for name, refund in refunds.items():
        refund.update(order=orders[name])
    return refunds


def test_a_normal_run_reconciles_with_no_mismatch(
    normal_run: dict[str, dict[str, Any]], env: dict[str, str], directus_admin: DirectusClient
) -> None:
    partial = directus_admin.get_item("orders", normal_run["partial"]["order_id"])
    assert partial["payment_status"] == "PARTIALLY_REFUNDED"  # the run did happen
    code, report = run_reconcile(env)
    assert report["mismatches"] == []
    assert code == 0
    summary = report["summary"]
    assert (summary["refunds_checked"], summary["orders_checked"]) == (5, 5)
    assert summary["stripe_checked"] == 5
    table = CliRunner().invoke(load_commands(), ["reconcile"], env=env)
    assert table.exit_code == 0
    assert table.output.startswith("0 mismatch(es) (all time): 5 refund(s), 5 order(s)")


def test_each_planted_mismatch_is_found_and_fix_repairs_the_directus_ones(
    normal_run: dict[str, dict[str, Any]],
    env: dict[str, str],
    directus_admin: DirectusClient,
    fake_stripe: FakeStripe,
) -> None:
    full, partial, failed, stripe_side = (
        normal_run["full"],
        normal_run["partial"],
        normal_run["failed"],
        normal_run["stripe"],
    )
    # 1. An admin set the cancelled, refunded order back to DELIVERED by hand.
    directus_admin.update_item("orders", full["order_id"], {"status": "DELIVERED"})
    # 2. Someone deleted a refund item.
    directus_admin.delete_item("refunds", partial["id"])
    # 3. Someone changed a refund item's amount.
    directus_admin.update_item("refunds", failed["id"], {"amount_cents": 1})
    # 4. Stripe says the refund the ledger has as REFUNDED failed.
    fake_stripe.set(stripe_side["ridendine_refund_id"], "failed")
    # 5. An item projected before the amount was shown as money.
    directus_admin.update_item("refunds", full["id"], {"amount": None})

    code, report = run_reconcile(env)

    assert code == 1
    found = {(m["kind"], m["order_id"], m["refund_id"]): m for m in report["mismatches"]}
    assert set(found) == {
        (reconcile.ORDER_FIELDS_DIFFER, full["order_id"], "-"),
        (reconcile.REFUND_ITEM_MISSING, partial["order_id"], partial["id"]),
        (reconcile.REFUND_ITEM_DIFFERS, failed["order_id"], failed["id"]),
        (reconcile.STRIPE_STATUS_DIFFERS, stripe_side["order_id"], stripe_side["id"]),
        (reconcile.REFUND_ITEM_DIFFERS, full["order_id"], full["id"]),
    }
    shown = found[(reconcile.REFUND_ITEM_DIFFERS, full["order_id"], full["id"])]
    assert (shown["ledger"], shown["directus"]) == ("amount=100.00 EUR", "amount=-")
    order_mismatch = found[(reconcile.ORDER_FIELDS_DIFFER, full["order_id"], "-")]
    assert order_mismatch["ledger"].startswith("status=CANCELLED")
    assert order_mismatch["directus"] == "status=DELIVERED"
    amount = found[(reconcile.REFUND_ITEM_DIFFERS, failed["order_id"], failed["id"])]
    assert (amount["ledger"], amount["directus"]) == ("amount_cents=5000", "amount_cents=1")
    stripe_mismatch = found[
        (reconcile.STRIPE_STATUS_DIFFERS, stripe_side["order_id"], stripe_side["id"])
    ]
    assert stripe_mismatch["ledger"] == "REFUNDED 6000 cents"
    assert stripe_mismatch["stripe"].startswith("failed 6000 cents")
    assert all(set(m) == set(reconcile.COLUMNS) - {"fixed"} for m in report["mismatches"])

    code, fixed = run_reconcile(env, "--fix")

    assert code == 1  # Stripe's disagreement is a person's to settle
    assert directus_admin.get_item("refunds", full["id"])["amount"] == "100.00 EUR"
    assert {(m["kind"], m["fixed"]) for m in fixed["mismatches"]} == {
        (reconcile.ORDER_FIELDS_DIFFER, True),
        (reconcile.REFUND_ITEM_MISSING, True),
        (reconcile.REFUND_ITEM_DIFFERS, True),
        (reconcile.STRIPE_STATUS_DIFFERS, False),
    }
    assert fixed["summary"]["remaining"] == 1
    order = directus_admin.get_item("orders", full["order_id"])
    assert (order["status"], order["payment_status"]) == ("CANCELLED", "REFUNDED")
    restored = directus_admin.get_item("refunds", partial["id"])
    assert (restored["status"], int(restored["amount_cents"])) == ("REFUNDED", 3_000)
    assert restored["order_id"] == partial["order_id"]
    assert int(directus_admin.get_item("refunds", failed["id"])["amount_cents"]) == 5_000

    code, after = run_reconcile(env)
    assert [m["kind"] for m in after["mismatches"]] == [reconcile.STRIPE_STATUS_DIFFERS]
    fake_stripe.set(stripe_side["ridendine_refund_id"], "succeeded")
    code, after = run_reconcile(env)
    assert (code, after["mismatches"]) == (0, [])


def test_csv_and_table_show_the_same_mismatch(
    normal_run: dict[str, dict[str, Any]], env: dict[str, str], directus_admin: DirectusClient
) -> None:
    partial = normal_run["partial"]
    directus_admin.update_item("orders", partial["order_id"], {"payment_status": "PAID"})
    result = CliRunner().invoke(load_commands(), ["reconcile", "--format", "csv"], env=env)
    assert result.exit_code == 1
    rows = list(csv.DictReader(io.StringIO(result.output)))
    assert [(r["kind"], r["order_id"], r["directus"]) for r in rows] == [
        (reconcile.ORDER_FIELDS_DIFFER, partial["order_id"], "payment_status=PAID")
    ]
    assert list(rows[0]) == [c for c in reconcile.COLUMNS if c != "fixed"]
    table = CliRunner().invoke(load_commands(), ["reconcile"], env=env)
    assert table.exit_code == 1
    header, line = table.output.splitlines()[:2]
    assert header.split() == [c.upper() for c in reconcile.COLUMNS if c != "fixed"]
    assert line.split()[:2] == [reconcile.ORDER_FIELDS_DIFFER, partial["order_id"]]


def test_since_limits_the_refunds_checked(
    normal_run: dict[str, dict[str, Any]], env: dict[str, str], services: Services
) -> None:
    old = normal_run["full"]["id"]
    with services.store.session() as session:
        session.execute(
            update(Refund).where(Refund.id != old).values(updated_at=utcnow() - timedelta(days=40))
        )
    since = (utcnow() - timedelta(days=1)).strftime("%Y-%m-%d")
    code, report = run_reconcile(env, "--since", since)
    assert code == 0
    assert report["summary"]["refunds_checked"] == 1
    assert report["summary"]["since"].startswith(since)


def test_an_item_the_ledger_does_not_know_is_reported_not_fixed(
    normal_run: dict[str, dict[str, Any]], env: dict[str, str], directus_admin: DirectusClient
) -> None:
    order_id = normal_run["full"]["order_id"]
    stranger = f"rf_{uuid.uuid4().hex[:24]}"
    directus_admin.create_item(
        "refunds", {"id": stranger, "order_id": order_id, "status": "REFUNDED", "amount_cents": 99}
    )
    code, report = run_reconcile(env, "--fix")
    assert code == 1
    (mismatch,) = report["mismatches"]
    assert (mismatch["kind"], mismatch["refund_id"], mismatch["fixed"]) == (
        reconcile.REFUND_ITEM_UNKNOWN,
        stranger,
        False,
    )
    directus_admin.delete_item("refunds", stranger)


def test_a_pending_refund_stripe_already_settled_is_reported_once_stale(
    normal_run: dict[str, dict[str, Any]],
    env: dict[str, str],
    services: Services,
    fake_stripe: FakeStripe,
) -> None:
    in_flight = normal_run["in_flight"]
    fake_stripe.set(in_flight["ridendine_refund_id"], "succeeded")
    assert run_reconcile(env)[0] == 0  # fresh: the webhook may be on its way
    with services.store.session() as session:
        session.execute(
            update(Refund)
            .where(Refund.id == in_flight["id"])
            .values(created_at=utcnow() - timedelta(hours=2))
        )
    code, report = run_reconcile(env)
    assert code == 1
    assert [(m["kind"], m["refund_id"]) for m in report["mismatches"]] == [
        (reconcile.STRIPE_STATUS_DIFFERS, in_flight["id"])
    ]


def test_stripe_refunding_another_amount_or_not_having_the_refund_is_for_a_person(
    normal_run: dict[str, dict[str, Any]], env: dict[str, str], fake_stripe: FakeStripe
) -> None:
    full, partial = normal_run["full"], normal_run["partial"]
    fake_stripe.refunds[full["ridendine_refund_id"]]["amount"] = 9_000
    del fake_stripe.refunds[partial["ridendine_refund_id"]]
    code, report = run_reconcile(env, "--fix")
    assert code == 1
    assert sorted(report["mismatches"], key=lambda m: m["kind"]) == [
        {
            "kind": reconcile.STRIPE_AMOUNT_DIFFERS,
            "order_id": full["order_id"],
            "refund_id": full["id"],
            "ledger": "REFUNDED 10000 cents",
            "directus": "-",
            "stripe": f"succeeded 9000 cents ({full['ridendine_refund_id']})",
            "fix": "review by hand: Stripe says what was refunded",
            "fixed": False,
        },
        {
            "kind": reconcile.STRIPE_REFUND_MISSING,
            "order_id": partial["order_id"],
            "refund_id": partial["id"],
            "ledger": "REFUNDED 3000 cents",
            "directus": "-",
            "stripe": f"no refund {partial['ridendine_refund_id']}",
            "fix": "review with RideNDine: the refund id is not Stripe's",
            "fixed": False,
        },
    ]


def test_directus_down_is_exit_2_with_one_line(env: dict[str, str], bridge: Flask) -> None:
    down = {**env, "BRIDGE_DIRECTUS_URL": "http://127.0.0.1:9", "BRIDGE_STRIPE_API_KEY": ""}
    services: Services = bridge.extensions["bridge.services"]
    with services.store.session() as session:
        refund = Refund(
            order_id="ord-x",
            amount_cents=1,
            currency="EUR",
            reason="chef_rejected",
            requested_by="admin",
            status=RefundStatus.PENDING,
        )
        session.add(refund)
        ledger.record_created(refund)
    result = CliRunner().invoke(load_commands(), ["reconcile"], env=down)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("refund-bridge: Directus: ")
    assert "Traceback" not in result.output


def test_many_refunds_are_read_in_a_few_requests(
    services: Services,
    env: dict[str, str],
    outside: responses.RequestsMock,
    directus_admin: DirectusClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    count = 250
    orders = [
        {
            "id": f"ord-bulk-{uuid.uuid4().hex[:12]}",
            "ridendine_order_id": f"rdn-{i}",
            "status": "CANCELLED",
            "payment_status": "REFUNDED",
            "amount_paid_cents": 1_000,
            "currency": "EUR",
        }
        for i in range(count)
    ]
    directus_admin.create_items("orders", orders)
    items = []
    with services.store.session() as session:
        for order in orders:
            refund = Refund(
                order_id=order["id"],
                ridendine_order_id=order["ridendine_order_id"],
                amount_cents=1_000,
                currency="EUR",
                reason="chef_rejected",
                requested_by="admin",
                status=RefundStatus.PENDING,
            )
            session.add(refund)
            ledger.record_created(refund)
            ledger.transition(refund, RefundStatus.REFUNDED, source="webhook")
            refund.refunded_amount_cents = 1_000
            session.flush()
            items.append(refund_item(refund))
    directus_admin.create_items("refunds", items)

    calls: list[str] = []
    real_request = DirectusClient.request

    def counting(self: DirectusClient, method: str, path: str, **kwargs: Any) -> Any:
        calls.append(f"{method} {path}")
        return real_request(self, method, path, **kwargs)

    monkeypatch.setattr(DirectusClient, "request", counting)
    started = time.monotonic()
    code, report = run_reconcile(env)
    elapsed = time.monotonic() - started
    print(f"reconcile of {count} refunds: {elapsed:.2f} s, {len(calls)} Directus requests")
    assert report["mismatches"] == [] and code == 0
    assert report["summary"]["refunds_checked"] == count
    # Items by order and orders by id, 100 at a time: 3 + 3 requests, not one per refund.
    assert len(calls) == 2 * 3, calls


def test_waiting_and_denied_refunds_reconcile_and_a_stale_decision_is_fixed(
    bridge: Flask,
    services: Services,
    outside: responses.RequestsMock,
    env: dict[str, str],
    directus_admin: DirectusClient,
    fake_stripe: FakeStripe,
) -> None:
    """REQUESTED and DENIED refunds (the refund policy) compare like any other; Directus still
    showing a denied refund as REQUESTED is fixed; a Stripe refund for a refund nobody approved
    is for a person."""
    admin = make_user(directus_admin, admin=True)
    waiting = request_refund(
        bridge, make_order(directus_admin)["id"], reason="customer_cancel", requested_by="customer"
    )
    denied = request_refund(
        bridge, make_order(directus_admin)["id"], reason="customer_cancel", requested_by="customer"
    )
    assert (waiting["status"], denied["status"]) == ("REQUESTED", "REQUESTED")
    answer = bridge.test_client().post(
        f"/ridendine/refunds/{denied['id']}/deny",
        json={"comment": "no"},
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}", "X-Directus-User-Id": admin["id"]},
    )
    assert answer.status_code == 200, answer.get_data(as_text=True)
    code, report = run_reconcile(env)
    assert (code, report["mismatches"]) == (0, [])

    directus_admin.update_item("refunds", denied["id"], {"status": "REQUESTED", "decided_by": None})
    code, report = run_reconcile(env, "--fix")
    (mismatch,) = report["mismatches"]
    assert (mismatch["kind"], mismatch["refund_id"], mismatch["fixed"]) == (
        reconcile.REFUND_ITEM_DIFFERS,
        denied["id"],
        True,
    )
    assert "status=DENIED" in mismatch["ledger"]
    assert directus_admin.get_item("refunds", denied["id"])["status"] == "DENIED"

    stray = fake_stripe.create(waiting["amount_cents"])
    fake_stripe.set(stray, "succeeded")
    with services.store.session() as session:
        session.execute(
            update(Refund).where(Refund.id == waiting["id"]).values(ridendine_refund_id=stray)
        )
    code, report = run_reconcile(env)
    kinds = [(m["kind"], m["refund_id"]) for m in report["mismatches"]]
    assert (reconcile.STRIPE_STATUS_DIFFERS, waiting["id"]) in kinds
    assert code == 1
