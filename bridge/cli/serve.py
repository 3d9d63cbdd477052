"""`refund-bridge serve` (gunicorn, bridge/web/gunicorn_app.py) and `refund-bridge db`."""

from __future__ import annotations

import click

from bridge.cli.base import CommandFailed, one_line_errors, settings_from_env
from bridge.config import Settings


@click.command()
@click.option("--bind", default="127.0.0.1:8080", show_default=True, help="host:port to listen on")
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="gunicorn worker processes",
)
@click.option(
    "--threads",
    default=4,
    show_default=True,
    type=click.IntRange(1, 256),
    help="threads per worker",
)
@click.option("--no-migrate", is_flag=True, help="only check the store's schema, do not upgrade it")
@one_line_errors
def serve(bind: str, workers: int, threads: int, no_migrate: bool) -> None:
    """Run the HTTP bridge under gunicorn (the WSGI app of wsgi.py)."""
    from bridge.web import gunicorn_app

    settings = settings_from_env()
    _prepare_store(settings, migrate=not no_migrate)
    from bridge.logs import secrets_of

    gunicorn_app.run(
        bind=bind,
        workers=workers,
        threads=threads,
        log_level=settings.log_level,
        secrets=secrets_of(settings),  # redacted from gunicorn's own lines too
    )


@click.group()
def db() -> None:
    """The bridge's own store."""


@db.command("upgrade")
@one_line_errors
def db_upgrade() -> None:
    """Apply the store's migrations (idempotent)."""
    settings = settings_from_env()
    _prepare_store(settings, migrate=True)
    click.echo("store is up to date")


@db.command("check")
@one_line_errors
def db_check() -> None:
    """Exit non-zero when the store's schema is behind the code."""
    settings = settings_from_env()
    _prepare_store(settings, migrate=False)
    click.echo("store is up to date")


def _prepare_store(settings: Settings, *, migrate: bool) -> None:
    """Migrate (or check) the store as the worker does: on PostgreSQL under an advisory lock,
    so that web instances and workers starting together migrate one after the other."""
    from bridge.store import db as store_db
    from bridge.worker import WorkerStartError, prepare_store

    store = store_db.Store(store_db.database_url(settings.database_url))
    try:
        prepare_store(store, migrate=migrate)
    except WorkerStartError as exc:
        raise CommandFailed(str(exc)) from None
    finally:
        store.dispose()


COMMANDS = (serve, db)
