"""`refund-bridge inbox list|show|replay`: operators see the webhooks the bridge received and
replay an unmatched one after fixing the data."""

from __future__ import annotations

import json

from click.testing import CliRunner
from flask import Flask

from bridge import create_app
from bridge.cli import load_commands
from bridge.config import Settings
from bridge.services import Services
from bridge.store.models import InboxState
from devstack.directus import DirectusServer
from directus_client import DirectusClient
from tests.support.helpers import make_order, settings_env, unique_id
from tests.support.webhook_helpers import (
    drain,
    event_body,
    load_refund,
    make_pending_refund,
    new_ridendine_id,
    post_event,
    refund_by_ridendine_id,
    sign,
    sync_result_flow,
)


def invoke(runner: CliRunner, env: dict[str, str], *args: str) -> tuple[int, str]:
    result = runner.invoke(load_commands(), ["inbox", *args], env=env)
    return result.exit_code, result.output


def services_of(app: Flask) -> Services:
    services: Services = app.extensions["bridge.services"]
    return services


def test_list_and_show(
    runner: CliRunner, app: Flask, settings: Settings, database_url: str
) -> None:
    env = settings_env(settings, database_url)
    assert invoke(runner, env, "list") == (0, "no inbox events\n")
    client = app.test_client()
    order = {"id": unique_id("ord"), "ridendine_order_id": "rdn-1", "amount_paid_cents": 900}
    refund_id = make_pending_refund(services_of(app), order, amount_cents=900)
    applied = event_body(new_ridendine_id(), order["id"], 900, "REFUNDED")
    headers = {**sign(applied), "Authorization": "Bearer not-to-be-shown"}
    assert post_event(client, applied, headers=headers).status_code == 200
    waiting = event_body(new_ridendine_id(), unique_id("ghost"), 100, "FAILED", extra="kept")
    assert post_event(client, waiting).status_code == 200

    code, output = invoke(runner, env, "list")
    assert code == 0
    lines = output.splitlines()
    assert len(lines) == 2
    assert lines[0].split()[0] == "2" and "received" in lines[0]  # newest first
    assert "applied" in lines[1] and refund_id in lines[1]

    code, output = invoke(runner, env, "list", "--state", "applied", "--json")
    assert code == 0
    [row] = [json.loads(line) for line in output.splitlines()]
    assert row["id"] == 1 and row["refund_id"] == refund_id and row["state"] == "applied"

    code, output = invoke(runner, env, "show", "2")
    assert code == 0
    shown = json.loads(output)
    assert shown["payload"]["extra"] == "kept"
    assert shown["raw_body"] == waiting.decode()
    assert [job["kind"] for job in shown["jobs"]] == ["process_event", "resolve_event"]
    code, output = invoke(runner, env, "show", "1")
    assert "not-to-be-shown" not in output
    assert "webhook-signature" in json.loads(output)["headers"]
    assert {job["kind"] for job in json.loads(output)["jobs"]} >= {"apply_order", "notify_result"}


def test_failures_are_one_line(
    runner: CliRunner, app: Flask, settings: Settings, database_url: str
) -> None:
    env = settings_env(settings, database_url)
    code, output = invoke(runner, env, "show", "42")
    assert code == 1
    assert output == "refund-bridge: inbox event 42 does not exist\n"
    code, output = invoke(runner, env, "replay", "42")
    assert (code, output) == (1, "refund-bridge: inbox event 42 does not exist\n")
    code, output = invoke(runner, env, "list", "--state", "bogus")
    assert code == 2 and "bogus" in output
    broken = {**env, "BRIDGE_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:9/none"}
    code, output = invoke(runner, broken, "list")
    assert code == 1
    assert output.startswith("refund-bridge: store: OperationalError")
    assert len(output.splitlines()) == 1
    assert "Traceback" not in output


def test_replay_applies_an_unmatched_event_after_the_order_was_fixed(
    runner: CliRunner,
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    directus_settings: Settings,
    database_url: str,
) -> None:
    sync_result_flow(directus_admin)
    app = create_app(
        {"BRIDGE_SETTINGS": directus_settings, "DATABASE_URL": database_url, "AUTO_MIGRATE": True}
    )
    services = services_of(app)
    env = settings_env(directus_settings, database_url)
    order_id = unique_id("late")
    ridendine_id = new_ridendine_id()
    post_event(app.test_client(), event_body(ridendine_id, order_id, 2500, "REFUNDED"))
    drain(services)  # Directus does not know the order (yet)
    code, output = invoke(runner, env, "list", "--state", "unmatched")
    assert code == 0 and order_id in output and "not in Directus" in output

    # The order was created late in Directus, with the refund COOCO had requested.
    order = make_order(directus_admin, order_id=order_id, amount_paid_cents=2500)
    refund_id = make_pending_refund(services, order, amount_cents=2500)
    code, output = invoke(runner, env, "replay", "1")
    assert code == 0, output
    assert output == f"inbox event 1 applied to refund {refund_id}\n"
    assert load_refund(services, refund_id).status == "REFUNDED"
    assert refund_by_ridendine_id(services, ridendine_id) is not None
    drain(services)
    assert directus_admin.get_item("orders", order_id)["payment_status"] == "REFUNDED"

    code, output = invoke(runner, env, "replay", "1")
    assert code == 1
    assert output == f"refund-bridge: inbox event 1 is already applied (to refund {refund_id})\n"


def test_replay_of_a_still_unknown_order_says_so(
    runner: CliRunner,
    cooco_directus: DirectusServer,
    directus_settings: Settings,
    database_url: str,
) -> None:
    app = create_app(
        {"BRIDGE_SETTINGS": directus_settings, "DATABASE_URL": database_url, "AUTO_MIGRATE": True}
    )
    order_id = unique_id("ghost")
    post_event(app.test_client(), event_body(new_ridendine_id(), order_id, 100))
    code, output = invoke(runner, settings_env(directus_settings, database_url), "replay", "1")
    assert code == 1
    assert output == (
        f"refund-bridge: inbox event 1 is still {InboxState.UNMATCHED}: order {order_id} is "
        "not in Directus; the worker retries it\n"
    )
