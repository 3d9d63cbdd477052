"""`refund-bridge report` and `refund-bridge dashboard sync`: what admins and finance read."""

from __future__ import annotations

import click

from bridge.cli.base import CommandFailed, format_option, one_line_errors, settings_from_env


@click.command()
@click.option(
    "--month",
    metavar="YYYY-MM",
    help="the calendar month (UTC); default: the current month",
)
@format_option
@click.option(
    "--no-directus",
    is_flag=True,
    help="leave out paid orders and the refund rate (no call to Directus)",
)
@one_line_errors
def report(month: str | None, fmt: str, no_directus: bool) -> None:
    """The monthly refund report: totals, count, rate, reasons, processing time, failures."""
    from sqlalchemy.exc import SQLAlchemyError

    from bridge.ops.report import BadMonth, build_report, current_month, render
    from bridge.services import build_services
    from bridge.store import db as store_db

    settings = settings_from_env()
    services = build_services(settings)
    try:
        store_db.check_migrated(services.store.engine)
        built = build_report(services, month or current_month(), paid_orders=not no_directus)
    except BadMonth as exc:
        raise CommandFailed(str(exc)) from None
    except store_db.StoreNotMigrated as exc:
        raise CommandFailed(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CommandFailed(f"store: {type(exc).__name__}") from None
    finally:
        services.close()
    for warning in built.warnings:
        click.echo(f"refund-bridge: warning: {warning}", err=True)
    click.echo(render(built, fmt))


@click.group()
def dashboard() -> None:
    """The "Refunds" Insights dashboard in Directus."""


@dashboard.command("sync")
@click.option("--dry-run", is_flag=True, help="print what would change, change nothing")
@one_line_errors
def dashboard_sync(dry_run: bool) -> None:
    """Create or update the dashboard and its panels (idempotent)."""
    from bridge.directus.dashboard import refunds_dashboard, sync_dashboard
    from bridge.services import make_directus

    settings = settings_from_env()
    client = make_directus(settings)
    try:
        dashboard = refunds_dashboard(settings.default_currency)
        result = sync_dashboard(client, dashboard, dry_run=dry_run)
    finally:
        client.close()
    prefix = "would " if dry_run else ""
    for change in result.changes:
        click.echo(f"{prefix}{change}")
    if not result.changed:
        click.echo("dashboard is up to date")
    elif not dry_run:
        click.echo(f"dashboard {result.dashboard_id} is up to date")


COMMANDS = (report, dashboard)
