"""The `refund-bridge` console command: `main` with the commands of every group
(docs/operations.md lists them)."""

from __future__ import annotations

import click

from bridge.cli import directus, inbox, openapi, reports, sandbox, serve, worker
from bridge.cli.base import main

for group in (serve, directus, inbox, worker, reports, openapi, sandbox):
    for command in group.COMMANDS:
        main.add_command(command)


def load_commands() -> click.Group:
    """`main` with every command (kept for callers that ask for it)."""
    return main


def run() -> None:
    """The console script's entry point."""
    main(prog_name="refund-bridge")
