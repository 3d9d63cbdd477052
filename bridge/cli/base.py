"""The `refund-bridge` group and what its commands share (docs/operations.md).

Each command loads and checks the settings first; any failure ends with one line on stderr
naming the cause and a non-zero exit code, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from bridge.config import ConfigError, Settings, load_settings
from bridge.jobs import registry
from directus_client import DirectusError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_FAILURE = 1


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
    registry.register_all()  # the commands that run outbox jobs (inbox replay) find them


# The report commands print a table for people, or CSV and JSON for tools.
format_option = click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
