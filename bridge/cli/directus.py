"""`refund-bridge schema apply`, `flows sync` and `check`: COOCO's Directus, set up and checked.

`schema apply` creates or updates the `refunds` collection, its relation to the orders and the
list of refunds on the order's page; `flows sync` creates or updates the project's Flows;
`check` says in plain words, one line per check, whether the bridge can work with this
Directus and this token, without changing anything. docs/directus.md tells how COOCO uses them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import click

from bridge.cli.base import CommandFailed, one_line_errors, settings_from_env
from bridge.config import ConfigError, Settings
from bridge.directus.schema import SchemaError, apply_schema, create_demo_orders
from bridge.services import make_directus
from directus_client import (
    DirectusClient,
    DirectusError,
    ForbiddenError,
    InvalidCredentialsError,
)
from flows import REFUND_RESULT
from flows.sync import FlowParams, FlowRefused, FlowSyncResult, ping_refund_result, sync_flows

# What the bridge's token must be allowed, by collection: (action, fields it needs or None).
Needs = tuple[tuple[str, tuple[str, ...] | None], ...]


def flow_params(settings: Settings) -> FlowParams:
    """The Flows' settings, from the bridge's."""
    return FlowParams(
        flow_secret=settings.flow_secret,
        bridge_url=settings.public_url,
        service_token=settings.flow_service_token or settings.api_tokens[0],
        orders_collection=settings.order_fields.collection,
        refund_reasons=settings.refund_reasons,
    )


# -- schema apply ----------------------------------------------------------------------------


@click.group()
def schema() -> None:
    """The refunds schema in COOCO's Directus."""


@schema.command("apply")
@click.option("--dry-run", is_flag=True, help="print what would change, change nothing")
@click.option(
    "--with-demo-orders",
    is_flag=True,
    help="first create a minimal orders collection like COOCO's (tests, local dev) if missing",
)
@one_line_errors
def schema_apply(dry_run: bool, with_demo_orders: bool) -> None:
    """Create or update the refunds collection, its relation to the orders and the list of
    refunds on the order's page (idempotent; COOCO's own fields are never touched)."""
    settings = settings_from_env()
    client = make_directus(settings)
    orders = settings.order_fields.collection
    try:
        if with_demo_orders:
            if dry_run:
                if client.get_collection(orders) is None:
                    click.echo(f"would: create demo collection {orders}")
            elif create_demo_orders(client, settings.order_fields):
                click.echo(f"created demo collection {orders}")
        try:
            plan = apply_schema(
                client, settings.order_fields, dry_run=dry_run, demo_orders_planned=with_demo_orders
            )
        except SchemaError as exc:
            raise CommandFailed(f"schema: {exc}") from None
    finally:
        client.close()
    prefix = "would: " if dry_run else ""
    for line in plan.changes:
        click.echo(f"{prefix}{line}")
    for line in plan.conflicts:
        click.echo(f"conflict: {line}")
    if plan.conflicts:
        raise CommandFailed(
            f"schema: {len(plan.conflicts)} conflict(s) need a person (listed above)"
        )
    if not plan.changes:
        click.echo("schema is up to date: nothing to change")
    elif dry_run:
        click.echo(f"dry run: {len(plan.changes)} change(s) to make, nothing changed")
    else:
        click.echo(f"schema applied: {len(plan.changes)} change(s)")


# -- flows sync ------------------------------------------------------------------------------


@click.group()
def flows() -> None:
    """The project's Directus Flows."""


@flows.command("sync")
@click.option("--dry-run", is_flag=True, help="print what would change, change nothing")
@one_line_errors
def flows_sync(dry_run: bool) -> None:
    """Create or update the project's Flows by their stable key (idempotent) and print their
    ids; then call the "refund result" Flow once (kind ping, no e-mail) to prove it works."""
    settings = settings_from_env()
    if not settings.flow_secret:
        raise ConfigError("BRIDGE_FLOW_SECRET", "is required to sync the Flows")
    try:
        params = flow_params(settings)
        params.values()
    except ValueError as exc:
        raise CommandFailed(f"flows: {exc}") from None
    client = make_directus(settings)
    try:
        results = sync_flows(client, params, dry_run=dry_run)
        for result in results:
            _echo_sync_result(result)
        if dry_run:
            return
        flow_id = next(r.flow_id for r in results if r.key == REFUND_RESULT)
        try:
            ping_refund_result(client, settings.flow_secret, flow_id)
        except FlowRefused as exc:
            raise CommandFailed(
                f"flows: the refund-result Flow was synced but refuses a test call ({exc.error}); "
                "can this Directus run 'Run Script' operations?"
            ) from None
        click.echo("refund-result accepts BRIDGE_FLOW_SECRET")
    finally:
        client.close()


def _echo_sync_result(result: FlowSyncResult) -> None:
    click.echo(f"{result.key}  {result.flow_id or '-'}  {result.action}")
    for change in result.changes:
        click.echo(f"  {change}")
    if result.note:
        click.echo(f"  {result.note}")
    for duplicate in result.duplicates:
        click.echo(f"  warning: Flow {duplicate} carries the same key; delete it in Directus")


# -- check -----------------------------------------------------------------------------------


@dataclass
class CheckReport:
    lines: list[tuple[bool, str]]

    def ok(self, text: str) -> None:
        self.lines.append((True, text))

    def fail(self, text: str) -> None:
        self.lines.append((False, text))

    @property
    def failures(self) -> int:
        return sum(1 for ok, _ in self.lines if not ok)


def _needs(settings: Settings) -> dict[str, Needs]:
    names = settings.order_fields
    order_read = (
        "id",
        "ridendine_order_id",
        "status",
        "payment_status",
        names.amount_paid,
        names.currency,
        names.customer,
        names.chef,
    )
    return {
        names.collection: (("read", order_read), ("update", ("status", "payment_status"))),
        "refunds": (("read", None), ("create", None), ("update", None)),
        "directus_users": (("read", ("id", "email", "status")),),
        "directus_policies": (("read", None),),
        "directus_flows": (("read", None),),
    }


_WHY = {
    "directus_users": "(customers' and chefs' e-mails)",
    "directus_policies": "(who is an admin)",
    "directus_flows": "(to find and trigger the Flows)",
}


def _check_permissions(client: DirectusClient, settings: Settings, report: CheckReport) -> None:
    try:
        permissions = client.permissions_me()
    except DirectusError as exc:
        report.fail(f"permissions: Directus would not list them ({_reason(exc)})")
        return
    for collection, needs in _needs(settings).items():
        names = [action for action, _ in needs]
        actions = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        what = f"can {actions} {collection} {_WHY.get(collection, '')}".strip()
        problems, caveats = [], []
        for action, fields in needs:
            grant = (permissions.get(collection) or {}).get(action) or {}
            access = grant.get("access", "none")
            if access == "none":
                problems.append(f"no {action} permission")
                continue
            if access != "full":
                # "partial": one of the token's permissions has a filter, maybe alongside one
                # without (Directus does not say). The bridge's own collections need none;
                # on system collections app access adds one ("your own user"), so only warn.
                if collection.startswith("directus_"):
                    caveats.append(f"a permission filter applies to {action}")
                else:
                    problems.append(f"{action} limited to some items by a permission filter")
                    continue
            if fields:
                allowed = grant.get("fields") or []
                missing = [f for f in fields if "*" not in allowed and f not in allowed]
                if missing:
                    problems.append(f"{action} lacks fields {', '.join(missing)}")
        if problems:
            report.fail(f"cannot {what.removeprefix('can ')}: {'; '.join(problems)}")
        elif caveats:
            report.ok(f"{what}; {'; '.join(caveats)}: it must not hide what the bridge reads")
        else:
            report.ok(what)


def _check_schema(client: DirectusClient, settings: Settings, report: CheckReport) -> None:
    try:
        plan = apply_schema(client, settings.order_fields, dry_run=True)
    except SchemaError as exc:
        report.fail(f"schema: {exc}")
        return
    except ForbiddenError:
        report.fail(
            "schema: the token may not read Directus's schema (directus_collections, "
            "directus_fields, directus_relations)"
        )
        return
    except DirectusError as exc:
        report.fail(f"schema: {_reason(exc)}")
        return
    if plan.in_place:
        orders = settings.order_fields.collection
        report.ok(f"schema is in place (refunds, refunds.order_id -> {orders}, {orders}.refunds)")
        return
    for line in plan.conflicts:
        report.fail(f"schema conflict: {line}")
    if plan.changes:
        shown = "; ".join(plan.changes[:3]) + (" ..." if len(plan.changes) > 3 else "")
        report.fail(
            f"schema is not in place, {len(plan.changes)} change(s) to make ({shown}): "
            "run `refund-bridge schema apply`"
        )


def _check_flows(client: DirectusClient, settings: Settings, report: CheckReport) -> None:
    if not settings.flow_secret:
        report.fail("BRIDGE_FLOW_SECRET is not set: the refund-result Flow cannot be called")
        return
    try:
        results = sync_flows(client, flow_params(settings), dry_run=True)
    except ValueError as exc:
        report.fail(f"flows: {exc}")
        return
    except ForbiddenError:
        report.fail("flows: the token may not read directus_flows and directus_operations")
        return
    except DirectusError as exc:
        report.fail(f"flows: {_reason(exc)}")
        return
    refund_result_id = None
    for result in results:
        if result.action == "would create":
            report.fail(f"flow {result.key} is missing: run `refund-bridge flows sync`")
            continue
        if result.changes:
            shown = "; ".join(result.changes[:3]) + (" ..." if len(result.changes) > 3 else "")
            report.fail(
                f"flow {result.key} ({result.flow_id}) differs from its definition ({shown}): "
                "run `refund-bridge flows sync`"
            )
        elif result.duplicates:
            report.fail(
                f"flow {result.key} ({result.flow_id}) has duplicates with its key: "
                f"{', '.join(result.duplicates)} (delete them in Directus)"
            )
        else:
            report.ok(f"flow {result.key} is in place ({result.flow_id})")
        if result.key == REFUND_RESULT:
            refund_result_id = result.flow_id
    if refund_result_id is None:
        return
    try:
        ping_refund_result(client, settings.flow_secret, refund_result_id)
    except FlowRefused as exc:
        report.fail(f"the refund-result Flow refuses a test call: {exc.error}")
    except DirectusError as exc:
        report.fail(f"the refund-result Flow cannot be called: {_reason(exc)}")
    else:
        report.ok("the refund-result Flow accepts BRIDGE_FLOW_SECRET (test call, no e-mail)")


def _reason(exc: DirectusError) -> str:
    # Status, Directus's code and message; never the token (the client never puts it there).
    parts = [str(exc.status) if exc.status else None, exc.code, exc.message]
    return " ".join(p for p in parts if p)


def run_checks(settings: Settings, report: CheckReport) -> None:
    client = make_directus(settings)
    try:
        if not client.ping():
            report.fail(f"Directus does not answer at {settings.directus_url}")
            return
        report.ok(f"Directus answers at {settings.directus_url}")
        try:
            me = client.me(fields=["id"])
        except InvalidCredentialsError:
            report.fail("the token is not valid: Directus refuses it (BRIDGE_DIRECTUS_TOKEN)")
            return
        report.ok(f"the token is valid (Directus user {me.get('id')})")
        steps: Iterable[Callable[[DirectusClient, Settings, CheckReport], None]] = (
            _check_permissions,
            _check_schema,
            _check_flows,
        )
        for step in steps:
            step(client, settings, report)
    finally:
        client.close()


@click.command()
@one_line_errors
def check() -> None:
    """Tell, one line per check, whether the configuration, Directus, the token's
    permissions, the schema and the Flows are as the bridge needs them (changes nothing).
    Exit code 0 only when every check passes."""
    report = CheckReport(lines=[])
    try:
        settings = settings_from_env()
    except ConfigError as exc:
        report.fail(f"configuration: {exc}")
    else:
        report.ok("configuration")
        try:
            run_checks(settings, report)
        except DirectusError as exc:
            report.fail(f"Directus: {_reason(exc)}")
    for ok, text in report.lines:
        click.echo(f"{'OK  ' if ok else 'FAIL'}  {text}")
    if report.failures:
        raise CommandFailed(f"check: {report.failures} of {len(report.lines)} checks failed")


COMMANDS = (schema, flows, check)
