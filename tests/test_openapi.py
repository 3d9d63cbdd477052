"""The OpenAPI description: generated from the marshmallow schemas, served, committed, and in
step with the app's routes and answers (the fuzz tests hold every answer to it)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import schemathesis
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from bridge import create_app
from bridge.cli import load_commands
from bridge.config import Settings
from bridge.ledger import ledger
from bridge.openapi import SPEC_PATH, RefundSchema, RefundWithHistorySchema, build_spec, render
from bridge.ops.report import RefundReport
from bridge.services import get_services
from bridge.store.models import Refund, RefundStatus

COMMITTED = Path(__file__).resolve().parent.parent / "docs" / "openapi.json"


def test_the_committed_description_is_the_generated_one() -> None:
    # If this fails: run `make openapi` and commit docs/openapi.json.
    assert COMMITTED.read_text(encoding="utf-8") == render(build_spec())


def test_the_app_serves_the_committed_description(client: FlaskClient) -> None:
    answer = client.get(SPEC_PATH)
    assert answer.status_code == 200
    assert answer.mimetype == "application/json"
    assert answer.get_data(as_text=True) == COMMITTED.read_text(encoding="utf-8")
    served = answer.get_json()
    assert served["openapi"] == "3.1.0"


def test_the_served_description_follows_the_configured_reasons(
    settings: Settings, database_url: str
) -> None:
    from dataclasses import replace

    reasons = (*settings.refund_reasons, "late_delivery")
    app = create_app(
        {
            "BRIDGE_SETTINGS": replace(settings, refund_reasons=reasons),
            "DATABASE_URL": database_url,
            "TESTING": True,
        }
    )
    served = app.test_client().get(SPEC_PATH).get_json()
    reason = served["components"]["schemas"]["RefundRequest"]["properties"]["reason"]
    assert reason["enum"] == ["chef_rejected", "customer_cancel", "late_delivery"]


def test_the_description_is_valid_openapi() -> None:
    # schemathesis refuses a description it cannot use; every operation must load.
    schema = schemathesis.openapi.from_dict(build_spec())
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 11  # approve and deny (the refund policy) included


def _rules(app: Flask) -> set[tuple[str, str]]:
    found = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            if method not in ("HEAD", "OPTIONS"):
                found.add((path, method.lower()))
    return found


def test_every_route_is_described_and_nothing_else(app: Flask) -> None:
    described = {
        (path, method)
        for path, operations in build_spec()["paths"].items()
        for method in operations
    }
    assert described == _rules(app)


def test_every_operation_describes_its_errors_as_problem_json() -> None:
    for path, operations in build_spec()["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if int(status) >= 400:
                    assert list(answer["content"]) == ["application/problem+json"], (
                        path,
                        method,
                        status,
                    )


def test_the_refund_schema_names_exactly_what_the_api_shows(app: Flask) -> None:
    with app.app_context():
        services = get_services()
        with services.store.session() as session:
            refund = Refund(
                order_id="ord-openapi",
                ridendine_order_id="rdn-1",
                amount_cents=500,
                currency="EUR",
                reason="chef_rejected",
                requested_by="admin",
                status=RefundStatus.PENDING,
            )
            ledger.record_created(refund)
            session.add(refund)
            session.flush()
            shown = ledger.refund_to_dict(refund)
            with_history = ledger.refund_to_dict(refund, with_history=True)
    assert set(RefundSchema().fields) == set(shown)
    assert set(RefundWithHistorySchema().fields) == set(with_history)
    # And the answer validates against the description (as the fuzz tests do for every answer).
    assert RefundWithHistorySchema().validate(json.loads(json.dumps(with_history))) == {}


def test_the_stats_schema_follows_the_report() -> None:
    stats = build_spec()["components"]["schemas"]["RefundStats"]
    report = RefundReport(month="2025-01", period_start="a", period_end="b").as_dict()
    assert set(stats["properties"]) == set(report)
    assert set(stats["required"]) == set(report)


def test_the_command_writes_and_checks_the_file(tmp_path: Path) -> None:
    target = tmp_path / "openapi.json"
    runner = CliRunner()
    main = load_commands()

    missing = runner.invoke(main, ["openapi", "--check", "--output", str(target)])
    assert missing.exit_code == 1
    assert "run `make openapi`" in missing.output

    written = runner.invoke(main, ["openapi", "--output", str(target)])
    assert written.exit_code == 0, written.output
    assert target.read_text(encoding="utf-8") == render(build_spec())
    assert runner.invoke(main, ["openapi", "--check", "--output", str(target)]).exit_code == 0

    target.write_text(target.read_text(encoding="utf-8").replace("refund", "refnud"))
    assert runner.invoke(main, ["openapi", "--check", "--output", str(target)]).exit_code == 1

    printed = runner.invoke(main, ["openapi", "--output", "-"])
    assert json.loads(printed.output) == build_spec()
