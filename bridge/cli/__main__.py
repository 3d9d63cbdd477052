"""`python -m bridge.cli`: the `refund-bridge` command."""

from bridge.cli import run

run()
