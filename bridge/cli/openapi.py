"""`refund-bridge openapi`: write or check the committed OpenAPI description (docs/openapi.json)."""

from __future__ import annotations

from pathlib import Path

import click

from bridge.cli.base import CommandFailed

DEFAULT_OUTPUT = Path("docs") / "openapi.json"  # from the repository's root, as make runs it


@click.command()
@click.option(
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=DEFAULT_OUTPUT,
    show_default=True,
    help="where to write it; '-' prints it",
)
@click.option("--check", is_flag=True, help="write nothing; exit 1 when the file differs")
def openapi(output: Path, check: bool) -> None:
    """The OpenAPI 3.1 description of the HTTP API, for the default settings (no environment
    needed), generated from the marshmallow schemas."""
    from bridge.openapi import build_spec, render

    text = render(build_spec())
    if str(output) == "-":
        click.echo(text, nl=False)
        return
    if check:
        current = output.read_text(encoding="utf-8") if output.exists() else None
        if current != text:
            raise CommandFailed(f"{output} is not the generated description; run `make openapi`")
        click.echo(f"{output} is up to date")
        return
    output.write_text(text, encoding="utf-8")
    click.echo(f"wrote {output}")


COMMANDS = (openapi,)
