"""`refund-bridge sandbox`: run the RideNDine sandbox (ridendine_sandbox) until Ctrl-C.

The sandbox reads its key and signing secret from the environment (RIDENDINE_SANDBOX_* or,
failing those, the bridge's own BRIDGE_RIDENDINE_API_KEY and BRIDGE_WEBHOOK_SECRETS), never from
the command line, where other users of the machine could read them.
"""

from __future__ import annotations

import socket
from typing import Any

import click

from bridge.cli.base import CommandFailed

# Listed here too (and checked against the sandbox's own list by a test), so that `--help`
# needs no import of the sandbox.
SCENARIO_NAMES = (
    "succeed",
    "fail",
    "duplicate",
    "out_of_order",
    "refunded_then_failed",
    "early",
    "late",
    "silent",
    "reject",
    "flaky",
)


@click.command("sandbox")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option(
    "--port", default=8090, show_default=True, type=click.IntRange(0, 65535), help="0: any free"
)
@click.option(
    "--bridge-webhook-url",
    default=None,
    help="where result webhooks go, e.g. http://127.0.0.1:8080/ridendine/webhooks/refund-status",
)
@click.option(
    "--scenario",
    default="succeed",
    show_default=True,
    type=click.Choice(SCENARIO_NAMES),
    help="what happens to accepted refunds (docs/sandbox.md)",
)
@click.option(
    "--delay",
    default=1.0,
    show_default=True,
    type=click.FloatRange(min=0, max=86_400),
    help="seconds before the result webhook",
)
def sandbox(
    host: str, port: int, bridge_webhook_url: str | None, scenario: str, delay: float
) -> None:
    """Run the RideNDine sandbox: POST /refunds/create, signed result webhooks, /_sandbox/."""
    from bridge.web.gunicorn_app import Server
    from ridendine_sandbox import SandboxConfigError, config_from_env, create_app, get_sandbox

    try:
        config = config_from_env(
            scenario=scenario, delay_seconds=delay, bridge_webhook_url=bridge_webhook_url
        )
    except SandboxConfigError as exc:
        raise CommandFailed(f"configuration: {exc}") from None
    _check_can_listen(host, port)
    target = bridge_webhook_url or "nowhere yet"

    def when_ready(server: Any) -> None:
        bound = server.LISTENERS[0].sock.getsockname()[1]  # the port chosen for --port 0
        click.echo(
            f"RideNDine sandbox listening on http://{host}:{bound} "
            f"(scenario {scenario}, delay {delay:g}s, webhooks to {target})",
            err=True,
        )

    def worker_exit(_server: Any, worker: Any) -> None:
        get_sandbox(worker.wsgi).close()  # its delivery threads

    def on_exit(_server: Any) -> None:
        click.echo("RideNDine sandbox stopped", err=True)

    # gunicorn, not werkzeug's server: a partner keeps connections open, and werkzeug's closes
    # every one (a new TCP connection per refund costs the bridge about 2 ms of CPU:
    # docs/performance.md, the ninth pass). One process: the sandbox keeps its state in memory.
    Server(
        {
            "bind": f"{host}:{port}",  # an IPv4 address: _check_can_listen took it
            "workers": 1,
            "worker_class": "gthread",
            "threads": 16,
            "keepalive": 5,
            "timeout": 30,
            "graceful_timeout": 5,
            "loglevel": "warning",
            "accesslog": None,
            "proc_name": "ridendine-sandbox",
            "when_ready": when_ready,
            "worker_exit": worker_exit,
            "on_exit": on_exit,
        },
        lambda: create_app(config),
    ).run()


def _check_can_listen(host: str, port: int) -> None:
    """Fail with one line (gunicorn would retry for seconds and print its own text)."""
    try:
        with socket.create_server((host, port), reuse_port=False):
            pass
    except OSError as exc:
        raise CommandFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


COMMANDS = (sandbox,)
