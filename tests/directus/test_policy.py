"""The bridge's Directus policy (bridge/directus/policy.py): `policy apply` makes it exactly,
docs/directus.md shows it, and a bridge whose token holds exactly that policy runs every
feature; with any one permission removed, `check` names it and no caller is blamed with 401."""

from __future__ import annotations

import logging
import re
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from flask import Flask
from flask.testing import FlaskClient

from bridge import create_app
from bridge.cli import load_commands
from bridge.config import Settings
from bridge.directus.policy import (
    Grant,
    apply_policy,
    bridge_grants,
    find_policy,
    grants_for,
    marker,
    policy_table,
)
from bridge.services import Services
from bridge.store.models import OutboxState
from devstack.directus import DirectusServer
from devstack.sandbox import SandboxProcess
from devstack.smtp import SmtpSink
from directus_client import DirectusClient
from tests.support.helpers import SERVICE_TOKEN, make_order, make_settings, make_user, settings_env
from tests.support.helpers import unique_id as new_id
from tests.support.webhook_helpers import (
    drain,
    event_body,
    jobs,
    make_due,
    post_event,
    wait_for_jobs_done,
)

DOCS = Path(__file__).resolve().parents[2] / "docs" / "directus.md"
TABLE = re.compile(r"<!-- policy-table:start[^>]*-->\n(.*?)\n<!-- policy-table:end -->", re.S)
GRANTS = bridge_grants()


def run(runner: CliRunner, env: dict[str, str], *args: str) -> Result:
    return runner.invoke(load_commands(), list(args), env=env)


def bridge_user(admin: DirectusClient, grants: tuple[Grant, ...] | list[Grant]) -> dict[str, Any]:
    """A Directus user holding exactly `grants` (a policy of its own) and a static token."""
    key = new_id("test-policy")
    token = "bridge-" + secrets.token_hex(16)
    user = admin.create_system(
        "users",
        {"email": f"{new_id('bridge')}@example.com", "token": token, "status": "active"},
    )
    plan = apply_policy(admin, grants, key=key, name=key, users=[user["id"]])
    return {"id": user["id"], "token": token, "key": key, "policy": plan.policy_id}


def policy_permissions(admin: DirectusClient, policy_id: str) -> list[dict[str, Any]]:
    return admin.list_system(
        "permissions",
        filter={"policy": {"_eq": policy_id}},
        fields=["id", "collection", "action", "fields", "permissions", "validation", "presets"],
    )


def as_granted(rows: list[dict[str, Any]]) -> set[tuple[str, str, tuple[str, ...]]]:
    return {(r["collection"], r["action"], tuple(sorted(r["fields"] or []))) for r in rows}


WANTED = {(g.collection, g.action, tuple(sorted(g.fields))) for g in GRANTS}


# -- the data and its table -------------------------------------------------------------------


def test_docs_show_the_policy_table_generated_from_the_data(runner: CliRunner) -> None:
    found = TABLE.search(DOCS.read_text())
    assert found, "docs/directus.md has no policy table between its markers"
    assert found.group(1) == policy_table(GRANTS), "run `refund-bridge policy show` into the docs"
    shown = run(runner, {}, "policy", "show")
    assert shown.exit_code == 0
    assert shown.stdout.strip() == policy_table(GRANTS)
    assert "showing the defaults" in shown.stderr  # no configuration here


def test_the_policy_follows_the_configured_order_fields(settings: Settings) -> None:
    from dataclasses import replace

    from bridge.config import OrderFields

    custom = replace(
        settings,
        order_fields=OrderFields(
            collection="commandes",
            amount_paid="paid",
            customer="client",
            customer_email="client.mail",
        ),
        report_order_date_field="paid_at",
    )
    grants = {g.name: g for g in grants_for(custom)}
    assert "read orders" not in grants
    assert {"paid", "client", "paid_at", "chef"} <= set(grants["read commandes"].fields)
    assert grants["update commandes"].fields == ("status", "payment_status")
    assert grants["read directus_users"].fields == ("id", "mail", "email", "status", "role")
    # Nothing the bridge does not need: no delete anywhere, nothing on other system tables.
    assert all(g.action in ("read", "create", "update") for g in GRANTS)
    assert all(g.why for g in GRANTS)
    assert len({g.name for g in GRANTS}) == len(GRANTS)


# -- policy apply -----------------------------------------------------------------------------


def test_apply_creates_exactly_the_grants_and_is_idempotent(
    cooco_directus: DirectusServer, directus_admin: DirectusClient
) -> None:
    key = new_id("apply")
    planned = apply_policy(directus_admin, GRANTS, key=key, name=key, dry_run=True)
    assert planned.changes[0] == f"would create policy {key!r}"
    assert len(planned.changes) == 1 + len(GRANTS)
    assert find_policy(directus_admin, key) is None  # a dry run changes nothing

    applied = apply_policy(directus_admin, GRANTS, key=key, name=key)
    assert applied.changes == [c.removeprefix("would ") for c in planned.changes]
    assert applied.policy_id
    rows = policy_permissions(directus_admin, applied.policy_id)
    assert as_granted(rows) == WANTED
    assert all(r["permissions"] is None and r["validation"] is None for r in rows)
    policy = directus_admin.list_system(
        "policies",
        filter={"id": {"_eq": applied.policy_id}},
        fields=["admin_access", "app_access", "description"],
    )[0]
    assert (policy["admin_access"], policy["app_access"]) == (False, False)
    assert marker(key) in policy["description"]
    assert apply_policy(directus_admin, GRANTS, key=key, name=key).changes == []

    # An admin widened it, filtered it and duplicated a line: the next run puts it back.
    by_name = {f"{r['action']} {r['collection']}": r for r in rows}
    directus_admin.update_system("permissions", by_name["read orders"]["id"], {"fields": ["*"]})
    directus_admin.update_system(
        "permissions", by_name["read refunds"]["id"], {"permissions": {"id": {"_eq": "x"}}}
    )
    directus_admin.create_system(
        "permissions",
        {"policy": applied.policy_id, "collection": "orders", "action": "delete", "fields": ["*"]},
    )
    directus_admin.create_system(
        "permissions",
        {"policy": applied.policy_id, "collection": "refunds", "action": "create", "fields": []},
    )
    fixing = apply_policy(directus_admin, GRANTS, key=key, name=key, dry_run=True).changes
    assert any(c.startswith("would set fields of read orders (") for c in fixing), fixing
    assert any(c.startswith("would set permissions of read refunds (") for c in fixing), fixing
    assert "would delete a duplicate permission create refunds" in fixing
    assert "would revoke delete orders (not needed)" in fixing
    assert len(fixing) == 4
    fixed = apply_policy(directus_admin, GRANTS, key=key, name=key)
    assert fixed.changes == [c.removeprefix("would ") for c in fixing]
    assert as_granted(policy_permissions(directus_admin, applied.policy_id)) == WANTED
    assert apply_policy(directus_admin, GRANTS, key=key, name=key).changes == []


def test_policy_apply_command_gives_the_policy_to_the_bridge_s_user(
    cooco_directus: DirectusServer, directus_admin: DirectusClient, runner: CliRunner
) -> None:
    env = settings_env(make_settings(cooco_directus.url, cooco_directus.admin_token))
    user = make_user(directus_admin)
    planned = run(runner, env, "policy", "apply", "--dry-run", "--user", user["email"])
    assert planned.exit_code == 0, planned.output
    assert f"would give it to user {user['id']}" in planned.stdout.splitlines()
    assert planned.stdout.splitlines()[-1].startswith("dry run: ")

    applied = run(runner, env, "policy", "apply", "--user", user["email"])
    assert applied.exit_code == 0, applied.output
    assert f"give it to user {user['id']}" in applied.stdout.splitlines()
    again = run(runner, env, "policy", "apply", "--user", user["id"])
    assert again.exit_code == 0
    assert again.stdout.strip().endswith(": nothing to change")
    policy = find_policy(directus_admin)
    assert policy is not None and policy["name"] == "refund-bridge"
    assert as_granted(policy_permissions(directus_admin, str(policy["id"]))) == WANTED

    nobody = run(runner, env, "policy", "apply", "--user", "nobody-here@example.com")
    assert nobody.exit_code == 1
    assert "no Directus user 'nobody-here@example.com'" in nobody.stderr
    not_admin = settings_env(make_settings(cooco_directus.url, user["token"]))
    refused = run(runner, not_admin, "policy", "apply")
    assert refused.exit_code == 1
    assert "run it with an admin's token" in refused.stderr


# -- a bridge on exactly that policy ----------------------------------------------------------


@pytest.fixture
def least(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    refund_flows: dict[str, str],
    ridendine_sandbox: SandboxProcess,
) -> dict[str, Any]:
    """The bridge's user with exactly the applied policy, and settings on its token with
    BRIDGE_ADMIN_EMAILS empty (the admins are found in Directus)."""
    user = bridge_user(directus_admin, GRANTS)
    settings = make_settings(
        cooco_directus.url,
        user["token"],
        admin_emails=(),
        ridendine_api_url=ridendine_sandbox.url,
    )
    return {"user": user, "settings": settings}


def make_bridge(settings: Settings, database_url: str) -> Flask:
    return create_app(
        {"BRIDGE_SETTINGS": settings, "DATABASE_URL": database_url, "AUTO_MIGRATE": True}
    )


def bearer(token: str, **headers: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **headers}


def people(admin: DirectusClient) -> dict[str, dict[str, Any]]:
    return {
        "admin": make_user(admin, admin=True),
        "customer": make_user(admin),
        "chef": make_user(admin),
    }


def an_order(admin: DirectusClient, who: dict[str, dict[str, Any]], amount: int) -> str:
    # ACCEPTED: outside any approval policy, so a customer's own refund goes straight through.
    order = make_order(
        admin,
        amount_paid_cents=amount,
        status="ACCEPTED",
        customer=who["customer"]["id"],
        chef=who["chef"]["id"],
    )
    return str(order["id"])


def test_a_bridge_on_exactly_the_policy_runs_every_feature(
    least: dict[str, Any],
    directus_admin: DirectusClient,
    database_url: str,
    smtp_sink: SmtpSink,
    runner: CliRunner,
) -> None:
    app = make_bridge(least["settings"], database_url)
    services: Services = app.extensions["bridge.services"]
    http = app.test_client()
    who = people(directus_admin)
    by_customer = an_order(directus_admin, who, 3200)
    by_extension = an_order(directus_admin, who, 5000)

    # A customer's own Directus token.
    own = http.post(
        "/ridendine/refunds",
        json={"order_id": by_customer, "reason": "customer_cancel"},
        headers=bearer(who["customer"]["token"]),
    )
    assert own.status_code == 202, own.get_json()
    assert (own.get_json()["refund"]["requested_by"], own.get_json()["refund"]["status"]) == (
        "customer",
        "PENDING",
    )
    # The extension: the service token acting for the signed-in admin.
    acting = http.post(
        "/ridendine/refunds",
        json={"order_id": by_extension, "reason": "chef_rejected", "requested_by": "admin"},
        headers=bearer(SERVICE_TOKEN, **{"X-Directus-User-Id": who["admin"]["id"]}),
    )
    assert acting.status_code == 202, acting.get_json()
    assert acting.get_json()["refund"]["requested_by_user"] == who["admin"]["id"]
    # The customer may not refund for someone else's order through the extension either.
    other = an_order(directus_admin, {**who, "customer": make_user(directus_admin)}, 1000)
    refused = http.post(
        "/ridendine/refunds",
        json={"order_id": other, "reason": "customer_cancel", "requested_by": "customer"},
        headers=bearer(SERVICE_TOKEN, **{"X-Directus-User-Id": who["customer"]["id"]}),
    )
    assert refused.status_code == 403
    assert refused.get_json()["code"] == "forbidden"

    # RideNDine's results, by webhook; the worker applies them with the bridge's token.
    for answer, amount in ((own, 3200), (acting, 5000)):
        refund = answer.get_json()["refund"]
        settled = http.get(f"/ridendine/refunds/{refund['id']}", headers=bearer(SERVICE_TOKEN))
        ridendine_id = settled.get_json()["refund"]["ridendine_refund_id"]
        assert ridendine_id  # RideNDine's answer named it
        posted = post_event(http, event_body(ridendine_id, refund["order_id"], amount))
        assert posted.status_code == 200
    wait_for_jobs_done(services)

    for order_id in (by_customer, by_extension):
        order = directus_admin.get_item("orders", order_id)
        assert (order["payment_status"], order["status"]) == ("REFUNDED", "CANCELLED")
        [item] = directus_admin.query_items("refunds", filter={"order_id": {"_eq": order_id}})
        assert item["status"] == "REFUNDED"
        # One e-mail each to the customer, the chef, and the admins found in Directus.
        smtp_sink.wait_for(order_id, 3, timeout=30)
        time.sleep(0.5)
        mails = smtp_sink.matching(order_id)
        recipients = sorted(m.rcpt_to for m in mails)
        assert len(mails) == 3, recipients
        assert (who["customer"]["email"],) in recipients
        assert (who["chef"]["email"],) in recipients
        [admins] = [r for r in recipients if len(r) > 1 or r[0] == who["admin"]["email"]]
        assert who["admin"]["email"] in admins
        assert who["customer"]["email"] not in admins

    # The monthly stats, for the admin through the extension.
    stats = http.get(
        "/ridendine/refunds/stats",
        headers=bearer(SERVICE_TOKEN, **{"X-Directus-User-Id": who["admin"]["id"]}),
    )
    assert stats.status_code == 200, stats.get_json()

    checked = run(runner, settings_env(least["settings"]), "check")
    assert checked.exit_code == 0, checked.output
    output = checked.stdout.splitlines()
    assert all(line.startswith("OK    ") for line in output), output
    assert any(line.startswith("OK    admin e-mails from Directus") for line in output)
    assert any(line.startswith("OK    can tell admins from customers (admin ") for line in output)
    assert any(
        line.startswith("OK    can read an order with its people's e-mails") for line in output
    )
    assert sum(line.startswith("OK    can ") for line in output) >= len(GRANTS)
    services.directus.close()


@pytest.mark.parametrize("missing", GRANTS, ids=[g.name for g in GRANTS])
def test_one_permission_less_check_names_it_and_no_caller_is_blamed(
    missing: Grant,
    least: dict[str, Any],
    directus_admin: DirectusClient,
    database_url: str,
    runner: CliRunner,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user = bridge_user(directus_admin, [g for g in GRANTS if g is not missing])
    settings = make_settings(
        least["settings"].directus_url,
        user["token"],
        admin_emails=(),
        ridendine_api_url=least["settings"].ridendine_api_url,
    )
    checked = run(runner, settings_env(settings), "check")
    assert checked.exit_code == 1, checked.output
    failed = [line for line in checked.stdout.splitlines() if line.startswith("FAIL")]
    assert f"FAIL  cannot {missing.name} (no such permission): needed to {missing.why}" in failed

    app = make_bridge(settings, database_url)
    http: FlaskClient = app.test_client()
    who = people(directus_admin)
    callers = [
        bearer(who["customer"]["token"]),
        bearer(who["admin"]["token"]),
        bearer(SERVICE_TOKEN, **{"X-Directus-User-Id": who["customer"]["id"]}),
    ]
    caplog.set_level(logging.ERROR, logger="bridge.web.auth")
    answers = []
    for headers in callers:
        answer = http.post(
            "/ridendine/refunds",
            json={
                "order_id": an_order(directus_admin, who, 1000),
                "reason": "customer_cancel",
                "requested_by": "customer",
            },
            headers=headers,
        )
        assert answer.status_code != 401, answer.get_json()
        if answer.status_code >= 500:
            assert (answer.status_code, answer.get_json()["code"]) == (503, "directus_unavailable")
        answers.append(answer)
    lookups = {"read directus_users", "read directus_roles", "read directus_access"}
    lookups.add("read directus_policies")
    if missing.name in lookups:
        # The admin (a role, an admin policy) cannot be told from a customer: the bridge's
        # configuration error, not the caller's. (A customer with no role and no policy of
        # their own needs fewer of these reads, and may get through.)
        admin_answer = answers[1]
        assert admin_answer.status_code == 503
        assert "not of your token" in admin_answer.get_json()["detail"]
        # One error for all those requests, naming the permission.
        logged = [r for r in caplog.records if "lacks a permission" in r.getMessage()]
        assert len(logged) == 1, [r.getMessage() for r in logged]
        assert f"cannot {missing.name} (" in logged[0].getMessage()
    app.extensions["bridge.services"].directus.close()


def test_admins_not_found_do_not_hold_back_the_customer_and_chef_mail(
    least: dict[str, Any],
    directus_admin: DirectusClient,
    database_url: str,
    smtp_sink: SmtpSink,
    caplog: pytest.LogCaptureFixture,
) -> None:
    without_access = [g for g in GRANTS if g.name != "read directus_access"]
    user = bridge_user(directus_admin, without_access)
    settings = make_settings(
        least["settings"].directus_url,
        user["token"],
        admin_emails=(),
        ridendine_api_url=least["settings"].ridendine_api_url,
    )
    app = make_bridge(settings, database_url)
    services: Services = app.extensions["bridge.services"]
    http = app.test_client()
    who = people(directus_admin)
    order_id = an_order(directus_admin, who, 2500)
    created = http.post(
        "/ridendine/refunds",
        json={"order_id": order_id, "reason": "chef_rejected", "requested_by": "admin"},
        headers=bearer(SERVICE_TOKEN),
    )
    assert created.status_code == 202
    caplog.set_level(logging.ERROR, logger="bridge.directus.notify")
    refund_id = created.get_json()["refund"]["id"]
    settled = http.get(f"/ridendine/refunds/{refund_id}", headers=bearer(SERVICE_TOKEN))
    ridendine_id = settled.get_json()["refund"]["ridendine_refund_id"]
    assert ridendine_id  # RideNDine's answer named it
    assert post_event(http, event_body(ridendine_id, order_id, 2500)).status_code == 200
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not jobs(services, "notify_result_admins"):
        make_due(services)
        drain(services)
    [result_job] = jobs(services, "notify_result")
    assert result_job.state == OutboxState.DONE
    [admins_job] = jobs(services, "notify_result_admins")
    assert admins_job.state == OutboxState.PENDING
    smtp_sink.wait_for(order_id, 2, timeout=30)
    time.sleep(1.0)
    assert sorted(m.rcpt_to for m in smtp_sink.matching(order_id)) == sorted(
        [(who["customer"]["email"],), (who["chef"]["email"],)]
    )
    logged = [r.getMessage() for r in caplog.records if r.name == "bridge.directus.notify"]
    assert any("cannot read directus_access" in m for m in logged), logged
    [admins_job] = jobs(services, "notify_result_admins")
    assert "cannot read directus_access" in (admins_job.last_error or "")

    # The permission is given back: the admins' part goes, and only it.
    apply_policy(directus_admin, GRANTS, key=user["key"], name=user["key"])
    wait_for_jobs_done(services)
    smtp_sink.wait_for(order_id, 3, timeout=30)
    time.sleep(1.0)
    mails = smtp_sink.matching(order_id)
    assert len(mails) == 3, [(m.rcpt_to, m.subject) for m in mails]
    assert any(who["admin"]["email"] in m.rcpt_to for m in mails)
    services.directus.close()
