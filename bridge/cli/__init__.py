"""The `refund-bridge` console command.

Each command loads and checks the settings first; any failure ends with one line on stderr
naming the cause and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from bridge.config import ConfigError, Settings, load_settings
from bridge.store.instance import instance_path
from directus_client import DirectusError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILURE = 1
# Modules that add their commands to `main` (each feature keeps its commands beside its code).
COMMAND_MODULES: tuple[str, ...] = (
    "bridge.cli.directus",
    "bridge.cli.inbox",
    "bridge.cli.openapi",
    "bridge.cli.reports",
    "bridge.cli.sandbox",
    "bridge.cli.worker",
)


class CommandFailed(click.ClickException):
    """A command's one-line reason for failing."""

    exit_code = EXIT_FAILURE

    def show(self, file: Any = None) -> None:
        click.echo(f"refund-bridge: {self.format_message()}", err=True)


def one_line_errors(func: F) -> F:
    """Turn the failures a command can meet into one line and exit code 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ConfigError as exc:
            raise CommandFailed(f"configuration: {exc}") from None
        except DirectusError as exc:
            raise CommandFailed(f"Directus: {exc}") from None

    return wrapper  # type: ignore[return-value]


def settings_from_env() -> Settings:
    return load_settings()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="refund-bridge")
def main() -> None:
    """refund-bridge: refunds between COOCO's Directus and RideNDine."""


@main.command()
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


@main.group()
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

    url = settings.database_url or store_db.default_database_url(instance_path())
    store = store_db.Store(url)
    try:
        prepare_store(store, migrate=migrate)
    except WorkerStartError as exc:
        raise CommandFailed(str(exc)) from None
    finally:
        store.dispose()


def load_commands() -> click.Group:
    """`main` with every feature's commands added."""
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)
    return main


def run() -> None:
    """The console script's entry point."""
    load_commands()(prog_name="refund-bridge")


if __name__ == "__main__":  # pragma: no cover
    # `python -m bridge.cli`: feature modules register on the imported `bridge.cli.main`,
    # not on this `__main__` copy, so run that one.
    from bridge.cli import run as run_registered

    run_registered()
