"""`refund-bridge check`: one OK/FAIL line per check, exit 0 only when all is well."""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from click.testing import CliRunner, Result

from bridge.cli import load_commands
from devstack.directus import DirectusServer
from devstack.net import free_port
from directus_client import DirectusClient
from flows import REFUND_RESULT
from flows.sync import find_flow_id
from tests.support.helpers import make_settings, settings_env, unique_id


def token_with(
    admin: DirectusClient,
    grants: Mapping[str, Sequence[str]],
    *,
    app_access: bool,
    item_filter: dict[str, object] | None = None,
) -> str:
    """A user's token whose one policy grants `grants` (each with `item_filter`, if given)."""
    policy = admin.create_system(
        "policies", {"name": unique_id("policy"), "icon": "badge", "app_access": app_access}
    )
    for collection, actions in grants.items():
        for action in actions:
            admin.create_system(
                "permissions",
                {
                    "policy": policy["id"],
                    "collection": collection,
                    "action": action,
                    "fields": ["*"],
                    "permissions": item_filter,
                },
            )
    token = "check-" + secrets.token_hex(16)
    admin.create_system(
        "users",
        {
            "email": f"{unique_id('check')}@example.com",
            "token": token,
            "status": "active",
            "policies": {"create": [{"policy": policy["id"]}]},
        },
    )
    return token


def run(runner: CliRunner, env: dict[str, str], *args: str) -> Result:
    return runner.invoke(load_commands(), list(args), env=env)


def lines(result: Result) -> list[str]:
    return result.stdout.splitlines()


def test_check_fails_for_a_read_only_token(
    cooco_directus: DirectusServer, directus_admin: DirectusClient, runner: CliRunner
) -> None:
    read_only = token_with(
        directus_admin, {"orders": ("read",), "refunds": ("read",)}, app_access=False
    )
    env = settings_env(make_settings(cooco_directus.url, read_only))
    result = run(runner, env, "check")
    assert result.exit_code == 1
    output = lines(result)
    assert output[:3] == [
        "OK    configuration",
        f"OK    Directus answers at {cooco_directus.url}",
        output[2],
    ]
    assert output[2].startswith("OK    the token is valid (Directus user ")
    assert "OK    can read refunds" in output
    assert (
        "FAIL  cannot update orders (no such permission): needed to set the two fields the "
        "bridge owns when a refund's result comes (contract section 3)"
    ) in output
    assert (
        "FAIL  cannot create refunds (no such permission): needed to project each new refund"
    ) in output
    assert "OK    can read orders" in output
    assert any(line.startswith("FAIL  cannot find the admins: cannot read ") for line in output)
    assert any(line.startswith("FAIL  schema: the token may not read") for line in output)
    failures = [line for line in output if line.startswith("FAIL")]
    assert result.stderr.strip().splitlines() == [
        f"refund-bridge: check: {len(failures)} of {len(output)} checks failed"
    ]
    assert read_only not in result.output


def test_check_passes_after_schema_apply_and_flows_sync(
    cooco_directus: DirectusServer, directus_admin: DirectusClient, runner: CliRunner
) -> None:
    env = settings_env(make_settings(cooco_directus.url, cooco_directus.admin_token))
    assert run(runner, env, "flows", "sync").exit_code == 0
    # An admin switched the "refund result" Flow off: check says so, and what to do.
    flow_id = find_flow_id(directus_admin, REFUND_RESULT)
    assert flow_id is not None
    directus_admin.update_flow(flow_id, {"status": "inactive"})
    broken = run(runner, env, "check")
    assert broken.exit_code == 1
    assert (
        f"FAIL  flow refund-result ({flow_id}) differs from its definition (set status): "
        "run `refund-bridge flows sync`"
    ) in lines(broken)

    applied = run(runner, env, "schema", "apply")
    assert applied.exit_code == 0, applied.output
    synced = run(runner, env, "flows", "sync")
    assert synced.exit_code == 0, synced.output
    assert f"refund-result  {flow_id}  updated" in lines(synced)
    assert lines(synced)[-1] == "refund-result accepts BRIDGE_FLOW_SECRET"

    result = run(runner, env, "check")
    assert result.exit_code == 0, result.output
    output = lines(result)
    assert all(line.startswith("OK    ") for line in output), output
    assert (
        "OK    schema is in place (refunds, refunds.order_id -> orders, orders.refunds)" in output
    )
    assert f"OK    flow refund-result is in place ({flow_id})" in output
    assert (
        "OK    the refund-result Flow accepts BRIDGE_FLOW_SECRET (test call, no e-mail)" in output
    )
    assert result.stderr == ""


def test_check_fails_when_a_filter_hides_orders(
    cooco_directus: DirectusServer, directus_admin: DirectusClient, runner: CliRunner
) -> None:
    token = token_with(
        directus_admin,
        {"orders": ("read", "update")},
        app_access=False,
        item_filter={"status": {"_eq": "NEW"}},
    )
    result = run(runner, settings_env(make_settings(cooco_directus.url, token)), "check")
    assert result.exit_code == 1
    output = lines(result)
    assert any(
        line.startswith("FAIL  cannot read orders (limited to some items by a permission filter)")
        for line in output
    ), output
    assert any(
        line.startswith("FAIL  cannot update orders (limited to some items by a permission filter)")
        for line in output
    ), output


def test_check_tells_a_wrong_flow_secret(cooco_directus: DirectusServer, runner: CliRunner) -> None:
    env = settings_env(make_settings(cooco_directus.url, cooco_directus.admin_token))
    assert run(runner, env, "flows", "sync").exit_code == 0
    env["BRIDGE_FLOW_SECRET"] = "another-secret-0123456789"
    result = run(runner, env, "check")
    assert result.exit_code == 1
    assert "FAIL  the refund-result Flow refuses a test call: forbidden" in lines(result)
    assert "another-secret" not in result.output


def test_check_stops_early_when_directus_cannot_be_used(
    cooco_directus: DirectusServer, runner: CliRunner
) -> None:
    bad_token = run(
        runner, settings_env(make_settings(cooco_directus.url, "no-such-token-01234567")), "check"
    )
    assert bad_token.exit_code == 1
    assert lines(bad_token)[-1] == (
        "FAIL  the token is not valid: Directus refuses it (BRIDGE_DIRECTUS_TOKEN)"
    )
    url = f"http://127.0.0.1:{free_port()}"
    down = run(runner, settings_env(make_settings(url, "token-0123456789")), "check")
    assert down.exit_code == 1
    assert lines(down) == ["OK    configuration", f"FAIL  Directus does not answer at {url}"]

    env = settings_env(make_settings(url, "token-0123456789"))
    del env["BRIDGE_DIRECTUS_URL"]
    no_config = run(runner, env, "check")
    assert no_config.exit_code == 1
    assert lines(no_config) == ["FAIL  configuration: BRIDGE_DIRECTUS_URL: is required but not set"]
