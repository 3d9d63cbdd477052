"""The monthly refund report against a hand-computed fixture of 30 refunds (March 2019).

The expected figures below were worked out by hand from the fixture, not by running the code;
the comments show the arithmetic.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from bridge import create_app
from bridge.cli import load_commands
from bridge.config import Settings
from bridge.ops.report import (
    BadMonth,
    average_cents,
    build_report,
    parse_month,
    percentile,
    render,
)
from bridge.services import Services, get_services
from bridge.store.models import Refund
from devstack.directus import DirectusServer
from directus_client import DirectusClient
from tests.support.helpers import SERVICE_TOKEN, make_settings, make_user, settings_env, unique_id

MONTH = "2019-03"
PAID_AT = "paid_at"


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


# (key, order, currency, amount, refunded_amount, reason, source, status, created,
#  seconds to result or None, needs_review, failure_reason)
R, F, P = "REFUNDED", "FAILED", "PENDING"
EXP, FUNDS = "card_expired", "insufficient_funds"
CC, CR = "customer_cancel", "chef_rejected"
FIXTURE: list[tuple[Any, ...]] = [
    # 19 refunds requested and REFUNDED in March
    ("r1", "a", "EUR", 1000, None, CR, "cooco", R, "2019-03-02 10:00:00", 60, False, None),
    ("r2", "a", "EUR", 500, None, CC, "cooco", R, "2019-03-03 10:00:00", 120, False, None),
    ("r3", "b", "EUR", 2500, None, CR, "cooco", R, "2019-03-04 10:00:00", 180, False, None),
    ("r4", "c", "EUR", 1999, None, CC, "cooco", R, "2019-03-05 10:00:00", 240, False, None),
    # RideNDine refunded 2800 of the 3000 asked: 2800 counts, and it needs review
    ("r5", "d", "EUR", 3000, 2800, CR, "cooco", R, "2019-03-06 10:00:00", 300, True, None),
    ("r6", "e", "EUR", 750, None, CC, "cooco", R, "2019-03-07 10:00:00", 360, False, None),
    ("r7", "f", "EUR", 1200, None, CR, "cooco", R, "2019-03-08 10:00:00", 420, False, None),
    ("r8", "g", "EUR", 4000, None, CR, "cooco", R, "2019-03-09 10:00:00", 480, False, None),
    ("r9", "h", "EUR", 999, None, CC, "cooco", R, "2019-03-10 10:00:00", 540, False, None),
    ("r10", "i", "EUR", 1500, None, CR, "cooco", R, "2019-03-11 10:00:00", 600, False, None),
    ("r11", "j", "EUR", 2000, None, CC, "cooco", R, "2019-03-12 10:00:00", 660, False, None),
    ("r12", "k", "EUR", 250, None, CR, "cooco", R, "2019-03-13 10:00:00", 720, False, None),
    ("r13", "l", "EUR", 5000, None, CR, "cooco", R, "2019-03-14 10:00:00", 780, False, None),
    ("r14", "m", "EUR", 1300, None, CC, "cooco", R, "2019-03-15 10:00:00", 840, False, None),
    ("r15", "n", "EUR", 800, None, CR, "cooco", R, "2019-03-16 10:00:00", 900, False, None),
    ("r16", "o", "EUR", 1100, None, CC, "cooco", R, "2019-03-17 10:00:00", 3600, False, None),
    ("r17", "p", "GBP", 1500, None, CR, "cooco", R, "2019-03-18 10:00:00", 7200, False, None),
    ("r18", "q", "GBP", 2250, None, CC, "cooco", R, "2019-03-19 10:00:00", 10800, False, None),
    ("r19", "q", "GBP", 250, None, CC, "cooco", R, "2019-03-20 10:00:00", 86400, False, None),
    # requested in February, REFUNDED on 1 March: counts as refunded, not as requested
    ("b1", "r", "EUR", 600, None, CR, "cooco", R, "2019-02-28 23:50:00", 1200, False, None),
    # 5 FAILED in March
    ("f1", "s", "EUR", 1000, None, CR, "cooco", F, "2019-03-21 10:00:00", 30, False, EXP),
    ("f2", "t", "EUR", 2000, None, CC, "cooco", F, "2019-03-21 11:00:00", 90, False, EXP),
    ("f3", "u", "EUR", 1500, None, CR, "cooco", F, "2019-03-22 10:00:00", 150, False, FUNDS),
    ("f4", "v", "GBP", 500, None, CC, "cooco", F, "2019-03-22 11:00:00", 210, False, None),
    ("f5", "a", "EUR", 700, None, CR, "cooco", F, "2019-03-23 10:00:00", 270, True, EXP),
    # 2 still PENDING, requested in March
    ("p1", "w", "EUR", 1000, None, CR, "cooco", P, "2019-03-20 10:00:00", None, False, None),
    ("p2", "x", "EUR", 1000, None, CC, "cooco", P, "2019-03-25 10:00:00", None, True, None),
    # started outside COOCO on 31 March, REFUNDED on 1 April: requested in March only
    ("b2", "y", "EUR", 900, None, CC, "ridendine", R, "2019-03-31 23:00:00", 7200, True, None),
    # outside March entirely
    ("b3", "z", "EUR", 100, None, CR, "cooco", P, "2019-04-01 00:00:00", None, False, None),
    ("b4", "zz", "EUR", 100, None, CR, "cooco", F, "2019-02-10 10:00:00", 86400, True, "x"),
]  # fmt: skip

EXPECTED: dict[str, Any] = {
    "month": "2019-03",
    "period_start": "2019-03-01T00:00:00Z",
    "period_end": "2019-04-01T00:00:00Z",
    # r1..r19, f1..f5, p1, p2, b2
    "requested": 27,
    "pending": 2,
    # r1..r19 and b1
    "refunded": 20,
    # EUR: r1..r16 (r5 as 2800) + b1 = 28298; GBP: 1500 + 2250 + 250 = 4000
    "refunded_cents": {"EUR": 28298, "GBP": 4000},
    # 28298 / 17 = 1664.59 -> 1665; 4000 / 3 = 1333.33 -> 1333
    "average_refund_cents": {"EUR": 1665, "GBP": 1333},
    # orders a..r (a twice, q twice)
    "refunded_orders": 18,
    "paid_orders": None,
    "refund_rate": None,
    "failed": 5,
    # 5 / (20 + 5)
    "failure_rate": 0.2,
    "failure_reasons": {"card_expired": 3, "insufficient_funds": 1, "unknown": 1},
    "by_reason": {
        # r1 r3 r5 r7 r8 r10 r12 r13 r15 b1 (EUR) + r17 (GBP)
        "chef_rejected": {"count": 11, "refunded_cents": {"EUR": 19650, "GBP": 1500}},
        # r2 r4 r6 r9 r11 r14 r16 (EUR) + r18 r19 (GBP)
        "customer_cancel": {"count": 9, "refunded_cents": {"EUR": 8648, "GBP": 2500}},
    },
    "by_source": {"cooco": 26, "ridendine": 1},
    # 25 resolved in March, sorted: 30 60 90 120 150 180 210 240 270 300 360 420 [480] 540 ...
    # 900 1200 3600 7200 [10800] 86400: p50 = 13th (ceil 12.5), p95 = 24th (ceil 23.75)
    "processing_seconds": {"count": 25, "p50": 480, "p95": 10800},
    # r5, f5, p2, b2 (b4 is February's)
    "needs_review": 4,
    # the refund policy: no refund of the fixture waited for an admin
    "awaiting_approval": 0,
    "approved": 0,
    "denied": 0,
    "decision_seconds": {"count": 0, "p50": None, "p95": None},
    "warnings": [],
}


def load_fixture(services: Services, order_prefix: str) -> None:
    with services.store.session() as session:
        for row in FIXTURE:
            key, order, currency, amount, refunded, reason, source, status = row[:8]
            created_text, seconds, review, failure = row[8:]
            created = at(created_text)
            resolved = created + timedelta(seconds=seconds) if seconds is not None else None
            session.add(
                Refund(
                    id=f"rf_{order_prefix}_{key}",
                    order_id=f"{order_prefix}-{order}",
                    ridendine_order_id=f"rdn-{order}",
                    amount_cents=amount,
                    refunded_amount_cents=refunded,
                    currency=currency,
                    reason=reason,
                    requested_by="admin",
                    status=status,
                    source=source,
                    needs_review=review,
                    review_reason="fixture" if review else None,
                    failure_reason=failure,
                    created_at=created,
                    updated_at=resolved or created,
                    resolved_at=resolved,
                )
            )


def test_the_fixture_has_30_refunds() -> None:
    assert len(FIXTURE) == 30
    assert len({row[0] for row in FIXTURE}) == 30


def test_report_figures_match_the_hand_computed_fixture(app: Flask) -> None:
    with app.app_context():
        services = get_services()
        load_fixture(services, unique_id("o"))
        report = build_report(services, MONTH, paid_orders=None)
    assert report.as_dict() == EXPECTED


def test_report_counts_the_admins_decisions(app: Flask) -> None:
    """April 2019, by hand: q1 waits; a1 approved after 1 h and REFUNDED 10 min later; d1 denied
    after 2 h; d2 requested on 31 March, denied 2 h later on 1 April."""
    prefix = unique_id("o")
    rows = [
        # key, status, created, seconds to decision, seconds from decision to result
        ("q1", "REQUESTED", "2019-04-02 10:00:00", None, None),
        ("a1", "REFUNDED", "2019-04-03 10:00:00", 3600, 600),
        ("d1", "DENIED", "2019-04-04 10:00:00", 7200, None),
        ("d2", "DENIED", "2019-03-31 23:00:00", 7200, None),
    ]
    with app.app_context():
        services = get_services()
        with services.store.session() as session:
            for key, status, created_text, to_decision, to_result in rows:
                created = at(created_text)
                decided = created + timedelta(seconds=to_decision) if to_decision else None
                resolved = decided + timedelta(seconds=to_result) if decided and to_result else None
                session.add(
                    Refund(
                        id=f"rf_{prefix}_{key}",
                        order_id=f"{prefix}-{key}",
                        ridendine_order_id=f"rdn-{key}",
                        amount_cents=1000,
                        currency="EUR",
                        reason="customer_cancel",
                        requested_by="customer",
                        status=status,
                        source="cooco",
                        created_at=created,
                        updated_at=resolved or decided or created,
                        decided_at=decided,
                        resolved_at=resolved,
                    )
                )
        report = build_report(services, "2019-04", paid_orders=None)
    # q1, a1, d1 were requested in April (d2 in March)
    assert (report.requested, report.awaiting_approval) == (3, 1)
    assert (report.approved, report.denied) == (1, 2)
    # decisions 3600, 7200, 7200: p50 = 2nd (ceil 1.5), p95 = 3rd (ceil 2.85)
    assert report.decision_seconds == {"count": 3, "p50": 7200, "p95": 7200}
    # a1 is processed from its approval: 600 s, not the 4200 s since it was asked for
    assert report.processing_seconds == {"count": 1, "p50": 600, "p95": 600}
    figures = {
        (r["metric"], r["dimension"]): r["value"]
        for r in csv.DictReader(io.StringIO(render(report, "csv")))
    }
    assert (figures[("approved", "")], figures[("denied", "")]) == ("1", "2")
    assert figures[("decision_seconds_p50", "")] == "7200.0"


def test_refund_rate_uses_the_given_paid_orders(app: Flask) -> None:
    with app.app_context():
        services = get_services()
        load_fixture(services, unique_id("o"))
        report = build_report(services, MONTH, paid_orders=36)
    assert report.paid_orders == 36
    assert report.refund_rate == 0.5  # 18 refunded orders / 36 paid


def test_a_month_without_refunds_is_all_zeros(app: Flask) -> None:
    with app.app_context():
        report = build_report(get_services(), "2001-01", paid_orders=None)
    assert report.requested == report.refunded == report.failed == 0
    assert report.refunded_cents == {}
    assert report.failure_rate is None
    assert report.processing_seconds == {"count": 0, "p50": None, "p95": None}


def test_directus_down_leaves_the_rate_out_with_a_warning(app: Flask) -> None:
    # The app's Directus URL leads nowhere: the ledger's figures are still there.
    with app.app_context():
        services = get_services()
        load_fixture(services, unique_id("o"))
        report = build_report(services, MONTH)
    assert report.refunded == 20
    assert report.paid_orders is None and report.refund_rate is None
    assert len(report.warnings) == 1 and "paid orders could not be counted" in report.warnings[0]
    assert "directus-token" not in report.warnings[0]


@pytest.mark.parametrize("text", ["2019-3", "2019-13", "19-03", "2019-03-01", "", "1969-12"])
def test_bad_months_are_refused(text: str) -> None:
    with pytest.raises(BadMonth):
        parse_month(text)


def test_month_bounds_roll_over_the_year() -> None:
    assert parse_month("2019-12") == (at("2019-12-01 00:00:00"), at("2020-01-01 00:00:00"))


def test_percentile_is_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5], 95) == 5
    assert percentile([1, 2, 3, 4], 50) == 2  # ceil(2.0) = 2nd
    assert percentile([4, 1, 3, 2], 75) == 3  # ceil(3.0) = 3rd, whatever the input order
    assert percentile(list(range(1, 21)), 95) == 19  # ceil(19.0) = 19th


def test_average_rounds_half_up() -> None:
    assert average_cents(5, 2) == 3  # 2.5 -> 3
    assert average_cents(7, 3) == 2  # 2.33 -> 2
    assert average_cents(8, 3) == 3  # 2.67 -> 3


def test_csv_and_table_show_the_same_figures(app: Flask) -> None:
    with app.app_context():
        services = get_services()
        load_fixture(services, unique_id("o"))
        report = build_report(services, MONTH, paid_orders=36)
    rows = list(csv.DictReader(io.StringIO(render(report, "csv"))))
    figures = {(r["metric"], r["dimension"]): r["value"] for r in rows}
    assert all(r["month"] == MONTH for r in rows)
    assert figures[("refunded_cents", "EUR")] == "28298"
    assert figures[("refund_rate", "")] == "0.5"
    assert figures[("reason_refunded_cents", "customer_cancel GBP")] == "2500"
    assert figures[("processing_seconds_p95", "")] == "10800.0"
    assert figures[("failure_reason", "card_expired")] == "3"
    table = render(report, "table")
    assert table.splitlines()[0].startswith("Refund report 2019-03 (UTC")
    assert any(line.split() == ["refunded_cents", "EUR", "28298"] for line in table.splitlines())
    assert json.loads(render(report, "json"))["refunded_orders"] == 18


# -- with the real Directus: paid orders, the endpoint, the command -------------------------


@pytest.fixture(scope="module")
def paid_orders_in_march(cooco_directus: DirectusServer, directus_admin: DirectusClient) -> int:
    """36 orders paid in March 2019 (and some that must not count); returns 36."""
    fields = {f["field"] for f in directus_admin.list_fields("orders")}
    if PAID_AT not in fields:
        directus_admin.create_field(
            "orders",
            {
                "field": PAID_AT,
                "type": "timestamp",
                "schema": {},
                "meta": {"interface": "datetime"},
            },
        )
    statuses = ["PAID", "PARTIALLY_REFUNDED", "REFUNDED"]
    rows = [
        # spread over the month, the first second of it included
        (statuses[i % 3], f"2019-03-{1 + i % 31:02d}T{'00:00:00' if i == 0 else '12:30:00'}Z")
        for i in range(36)
    ]
    rows += [
        ("UNPAID", "2019-03-10T12:00:00Z"),
        ("UNPAID", "2019-03-11T12:00:00Z"),
        ("PAID", "2019-02-28T23:59:59Z"),
        ("PAID", "2019-04-01T00:00:00Z"),
    ]
    directus_admin.create_items(
        "orders",
        [
            {
                "id": unique_id("rep"),
                "payment_status": status,
                "status": "DELIVERED",
                "amount_paid_cents": 1000,
                "currency": "EUR",
                PAID_AT: paid_at,
            }
            for status, paid_at in rows
        ],
    )
    return 36


@pytest.fixture
def report_settings(directus: DirectusServer) -> Settings:
    return make_settings(directus.url, directus.admin_token, report_order_date_field=PAID_AT)


@pytest.fixture
def report_app(report_settings: Settings, database_url: str) -> Flask:
    return create_app(
        {
            "BRIDGE_SETTINGS": report_settings,
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )


def test_paid_orders_are_counted_in_directus(report_app: Flask, paid_orders_in_march: int) -> None:
    with report_app.app_context():
        services = get_services()
        load_fixture(services, unique_id("o"))
        report = build_report(services, MONTH)
    assert report.warnings == []
    assert report.paid_orders == paid_orders_in_march == 36
    assert report.refund_rate == 0.5
    assert {**report.as_dict(), "paid_orders": None, "refund_rate": None} == EXPECTED


def test_stats_endpoint_for_a_service_token(report_app: Flask, paid_orders_in_march: int) -> None:
    with report_app.app_context():
        load_fixture(get_services(), unique_id("o"))
    client = report_app.test_client()
    answer = client.get(
        f"/ridendine/refunds/stats?month={MONTH}",
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    )
    assert answer.status_code == 200, answer.get_json()
    stats = answer.get_json()["stats"]
    assert stats == {**EXPECTED, "paid_orders": 36, "refund_rate": 0.5}


def test_stats_endpoint_admits_directus_admins_only(
    report_app: Flask, directus_admin: DirectusClient, cooco_directus: DirectusServer
) -> None:
    client: FlaskClient = report_app.test_client()
    admin = make_user(directus_admin, admin=True)
    customer = make_user(directus_admin)
    ok = client.get("/ridendine/refunds/stats?month=2001-01", headers=_bearer(admin["token"]))
    assert ok.status_code == 200, ok.get_json()
    assert ok.get_json()["stats"]["refunded"] == 0
    denied = client.get("/ridendine/refunds/stats", headers=_bearer(customer["token"]))
    assert denied.status_code == 403
    assert denied.get_json()["code"] == "forbidden"
    acting = client.get(
        "/ridendine/refunds/stats",
        headers={**_bearer(SERVICE_TOKEN), "X-Directus-User-Id": customer["id"]},
    )
    assert acting.status_code == 403


def test_stats_endpoint_errors_are_problems(client: FlaskClient) -> None:
    anonymous = client.get("/ridendine/refunds/stats")
    assert anonymous.status_code == 401
    assert anonymous.content_type == "application/problem+json"
    bad = client.get("/ridendine/refunds/stats?month=2019-13", headers=_bearer(SERVICE_TOKEN))
    assert bad.status_code == 400
    assert bad.get_json()["errors"] == {"month": ["Use YYYY-MM, e.g. 2025-03."]}
    unknown = client.get("/ridendine/refunds/stats?format=csv", headers=_bearer(SERVICE_TOKEN))
    assert unknown.status_code == 400
    assert "format" in unknown.get_json()["errors"]


def test_stats_does_not_shadow_a_refund(client: FlaskClient) -> None:
    answer = client.get("/ridendine/refunds/rf_stats", headers=_bearer(SERVICE_TOKEN))
    assert answer.get_json()["code"] == "refund_not_found"


def test_report_command(
    report_app: Flask,
    report_settings: Settings,
    database_url: str,
    paid_orders_in_march: int,
    runner: Any,
) -> None:
    with report_app.app_context():
        load_fixture(get_services(), unique_id("o"))
    env = {
        **settings_env(report_settings, database_url),
        "BRIDGE_REPORT_ORDER_DATE_FIELD": PAID_AT,
    }
    result = runner.invoke(
        load_commands(), ["report", "--month", MONTH, "--format", "json"], env=env
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {**EXPECTED, "paid_orders": 36, "refund_rate": 0.5}
    table = runner.invoke(load_commands(), ["report", "--month", MONTH], env=env)
    assert table.exit_code == 0
    assert "refund_rate" in table.stdout and "0.5" in table.stdout
    bad = runner.invoke(load_commands(), ["report", "--month", "March"], env=env)
    assert bad.exit_code == 1
    assert bad.output.strip() == "refund-bridge: month must be YYYY-MM, got 'March'"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_stats_answers_503_when_the_ledger_cannot_be_read(
    settings: Settings, tmp_path: Any
) -> None:
    # A store that was never migrated: the query fails, the answer is a problem, not a 500.
    app = create_app(
        {
            "BRIDGE_SETTINGS": settings,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'empty.sqlite3'}",
            "TESTING": True,
        }
    )
    answer = app.test_client().get("/ridendine/refunds/stats", headers=_bearer(SERVICE_TOKEN))
    assert answer.status_code == 503
    assert answer.get_json()["code"] == "service_unavailable"


def test_report_command_without_directus(
    app: Flask, settings: Settings, database_url: str, runner: Any
) -> None:
    with app.app_context():
        load_fixture(get_services(), unique_id("o"))
    env = settings_env(settings, database_url)  # Directus's URL leads nowhere
    down = runner.invoke(load_commands(), ["report", "--month", MONTH, "--format", "csv"], env=env)
    assert down.exit_code == 0, down.output
    assert down.stderr.startswith("refund-bridge: warning: paid orders could not be counted")
    rows = list(csv.DictReader(io.StringIO(down.stdout)))
    assert {(r["metric"], r["dimension"], r["value"]) for r in rows} >= {
        ("refunded_cents", "EUR", "28298"),
        ("refund_rate", "", ""),
    }
    skipped = runner.invoke(
        load_commands(), ["report", "--month", MONTH, "--no-directus", "--format", "json"], env=env
    )
    assert skipped.exit_code == 0 and skipped.stderr == ""
    assert json.loads(skipped.stdout) == EXPECTED


def test_report_command_on_a_store_never_migrated(
    settings: Settings, tmp_path: Any, runner: Any
) -> None:
    env = settings_env(settings, f"sqlite:///{tmp_path / 'new.sqlite3'}")
    result = runner.invoke(load_commands(), ["report", "--no-directus"], env=env)
    assert result.exit_code == 1
    assert result.output.startswith("refund-bridge: the store is at revision none")
