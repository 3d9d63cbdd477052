"""The worker's commands: `refund-bridge worker`, `reconcile` and `housekeeping`."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import click

from bridge.cli.base import CommandFailed, format_option, one_line_errors, settings_from_env
from bridge.config import ConfigError

# `reconcile`'s exit codes (docs/worker.md): scripts tell "all agrees" from "look at this" from
# "could not compare".
RECONCILE_CLEAN = 0
RECONCILE_MISMATCHES = 1
RECONCILE_FAILED = 2


class ReconcileFailed(CommandFailed):
    exit_code = RECONCILE_FAILED


@click.command()
@click.option("--no-migrate", is_flag=True, help="only check the store's schema, do not upgrade it")
@click.option("--once", is_flag=True, help="run every due job and each check once, then exit")
@click.option(
    "--batch-size",
    type=click.IntRange(1, 1000),
    help="jobs claimed at once (default 300: bigger batches cost fewer Directus requests per "
    "event; smaller ones share a burst more evenly between several workers)",
)
@one_line_errors
def worker(no_migrate: bool, once: bool, batch_size: int | None) -> None:
    """Run the background jobs: the outbox, stale PENDING refunds, housekeeping.

    Stops cleanly on SIGTERM or SIGINT after the job in hand. On SQLite only one worker may run.
    """
    from bridge.worker import WorkerStartError, run_worker

    settings = settings_from_env()
    try:
        code = run_worker(settings, migrate=not no_migrate, once=once, batch_size=batch_size)
    except WorkerStartError as exc:
        raise CommandFailed(str(exc)) from None
    raise SystemExit(code)


def _since(value: datetime | None) -> datetime | None:
    # click's DateTime is naive; dates given to finance tools are UTC.
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


@click.command()
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%dT%H:%M:%SZ"]),
    help="only refunds created or changed since this date (UTC), e.g. 2025-01-01",
)
@format_option
@click.option("--fix", "apply_fix", is_flag=True, help="re-project the ledger into Directus")
def reconcile(since: datetime | None, fmt: str, apply_fix: bool) -> None:
    """Compare the ledger with Directus (and Stripe, when configured); print every mismatch.

    Exit code: 0 no mismatch (or all fixed), 1 mismatches (remaining), 2 could not compare.
    """
    import stripe
    from sqlalchemy.exc import SQLAlchemyError

    from bridge.ops import reconcile as reconciliation
    from bridge.services import build_services
    from bridge.webhooks import stripe_check
    from bridge.worker import WorkerStartError, prepare_store
    from directus_client import DirectusError

    try:
        settings = settings_from_env()
    except ConfigError as exc:
        raise ReconcileFailed(f"configuration: {exc}") from None
    services = build_services(settings)
    try:
        prepare_store(services.store, migrate=False)
        report = reconciliation.compare(services, since=_since(since))
        if apply_fix:
            reconciliation.fix(services, report)
    except WorkerStartError as exc:
        raise ReconcileFailed(str(exc)) from None
    except DirectusError as exc:
        raise ReconcileFailed(f"Directus: {exc}") from None
    except (stripe_check.StripeUnavailable, stripe.StripeError) as exc:
        raise ReconcileFailed(f"Stripe: {exc}") from None
    except SQLAlchemyError as exc:
        raise ReconcileFailed(f"store: {type(exc).__name__}") from None
    finally:
        services.close()
    click.echo(reconciliation.render(report, fmt), nl=False)
    raise SystemExit(RECONCILE_MISMATCHES if report.remaining else RECONCILE_CLEAN)


@click.command()
@click.option("--dry-run", is_flag=True, help="count what would be deleted, delete nothing")
@click.option("--retention-days", type=click.IntRange(1), help="default: BRIDGE_RETENTION_DAYS")
@one_line_errors
def housekeeping(dry_run: bool, retention_days: int | None) -> None:
    """Delete finished outbox jobs and applied webhook events past the retention period."""
    from sqlalchemy.exc import SQLAlchemyError

    from bridge.services import build_services
    from bridge.store import housekeeping as tidy
    from bridge.worker import WorkerStartError, prepare_store

    settings = settings_from_env()
    services = build_services(settings)
    try:
        prepare_store(services.store, migrate=False)
        report = tidy.run(services, retention_days=retention_days, dry_run=dry_run)
    except WorkerStartError as exc:
        raise CommandFailed(str(exc)) from None
    except SQLAlchemyError as exc:
        raise CommandFailed(f"store: {type(exc).__name__}") from None
    finally:
        services.close()
    click.echo(json.dumps(report.as_dict()))


COMMANDS = (worker, reconcile, housekeeping)
