"""`refund-bridge sandbox`: run the RideNDine sandbox (ridendine_sandbox) until Ctrl-C.

The sandbox reads its key and signing secret from the environment (RIDENDINE_SANDBOX_* or,
failing those, the bridge's own BRIDGE_RIDENDINE_API_KEY and BRIDGE_WEBHOOK_SECRETS), never from
the command line, where other users of the machine could read them.
"""

from __future__ import annotations

import signal
import socket
import threading
from types import FrameType

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
    from werkzeug.serving import make_server

    from ridendine_sandbox import SandboxConfigError, config_from_env, create_app, get_sandbox

    try:
        config = config_from_env(
            scenario=scenario, delay_seconds=delay, bridge_webhook_url=bridge_webhook_url
        )
    except SandboxConfigError as exc:
        raise CommandFailed(f"configuration: {exc}") from None
    _check_can_listen(host, port)
    app = create_app(config)
    server = make_server(host, port, app, threaded=True)

    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    # serve_forever runs in a thread: shutdown() must come from another thread than it.
    serving = threading.Thread(target=server.serve_forever, name="sandbox-http", daemon=True)
    serving.start()
    target = bridge_webhook_url or "nowhere yet"
    click.echo(
        f"RideNDine sandbox listening on http://{host}:{server.port} "
        f"(scenario {scenario}, delay {delay:g}s, webhooks to {target})",
        err=True,
    )
    try:
        while not stop.wait(0.5):
            pass
    finally:
        server.shutdown()
        serving.join(10)
        server.server_close()
        get_sandbox(app).close()
        click.echo("RideNDine sandbox stopped", err=True)


def _check_can_listen(host: str, port: int) -> None:
    """Fail with one line (werkzeug's make_server would print its own text and exit)."""
    try:
        with socket.create_server((host, port), reuse_port=False):
            pass
    except OSError as exc:
        raise CommandFailed(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None


COMMANDS = (sandbox,)
