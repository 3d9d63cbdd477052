"""`refund-bridge sandbox` and devstack's SandboxProcess: the sandbox as its own process."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import requests
from click.testing import CliRunner
from standardwebhooks import Webhook

from bridge.cli import load_commands
from bridge.cli.sandbox import SCENARIO_NAMES
from devstack.net import free_port
from devstack.sandbox import Receiver, SandboxProcess
from ridendine_sandbox import SCENARIOS
from tests.support.helpers import RIDENDINE_KEY, WEBHOOK_SECRET, unique_id


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver().start()
    yield server
    server.stop()


def test_the_commands_scenarios_are_the_sandboxes() -> None:
    assert SCENARIO_NAMES == SCENARIOS


def test_help_lists_the_options(runner: CliRunner) -> None:
    result = runner.invoke(load_commands(), ["sandbox", "--help"])
    assert result.exit_code == 0
    for option in ("--host", "--port", "--bridge-webhook-url", "--scenario", "--delay"):
        assert option in result.output


def test_without_a_key_it_stops_with_one_line(runner: CliRunner) -> None:
    result = runner.invoke(
        load_commands(),
        ["sandbox", "--port", "0"],
        env={
            "RIDENDINE_SANDBOX_API_KEY": "",
            "BRIDGE_RIDENDINE_API_KEY": "",
            "RIDENDINE_SANDBOX_WEBHOOK_SECRET": WEBHOOK_SECRET,
        },
    )
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "refund-bridge: configuration: RIDENDINE_SANDBOX_API_KEY: is required but not set"
        " (nor BRIDGE_RIDENDINE_API_KEY)"
    ]


def test_a_bad_webhook_url_stops_with_one_line(runner: CliRunner) -> None:
    result = runner.invoke(
        load_commands(),
        ["sandbox", "--bridge-webhook-url", "localhost:8080"],
        env={
            "RIDENDINE_SANDBOX_API_KEY": "k" * 20,
            "RIDENDINE_SANDBOX_WEBHOOK_SECRET": WEBHOOK_SECRET,
        },
    )
    assert result.exit_code == 1
    assert "--bridge-webhook-url: must be an http(s) URL" in result.output


def test_the_sandbox_process_round_trip(receiver: Receiver) -> None:
    sandbox = SandboxProcess(
        api_key=RIDENDINE_KEY,
        webhook_secret=WEBHOOK_SECRET,
        bridge_webhook_url=f"{receiver.url}/ridendine/webhooks/refund-status",
        delay_seconds=0.1,
    )
    started = time.monotonic()
    sandbox.start()
    try:
        startup = time.monotonic() - started
        key = unique_id("key")
        body = {
            "ridendine_order_id": "rdn-1",
            "external_order_id": unique_id("ord"),
            "amount_cents": 1234,
            "reason": "chef_rejected",
            "requested_by": "admin",
        }
        answer = requests.post(
            f"{sandbox.url}/refunds/create",
            json=body,
            headers={"Authorization": f"Bearer {RIDENDINE_KEY}", "Idempotency-Key": key},
            timeout=5,
        )
        assert answer.status_code == 201, answer.text
        (request,) = receiver.wait_for(1)
        event = Webhook(WEBHOOK_SECRET).verify(request.body, request.headers)
        assert event["refund_id"] == answer.json()["refund_id"]
        assert len(sandbox.control.requests(idempotency_key=key)) == 1
        (delivery,) = sandbox.control.wait_for_deliveries(1, refund_id=event["refund_id"])
        assert delivery["attempts"][0]["status_code"] == 200
        sandbox.control.reset()
        assert sandbox.control.requests() == []
    finally:
        process = sandbox.process
        sandbox.stop()
    assert process is not None and process.returncode == 0
    assert not sandbox.is_running()
    assert startup < 15


def test_a_taken_port_stops_with_one_line(runner: CliRunner) -> None:
    holder = Receiver(free_port()).start()
    try:
        result = runner.invoke(
            load_commands(),
            ["sandbox", "--port", str(holder.port)],
            env={
                "RIDENDINE_SANDBOX_API_KEY": "k" * 20,
                "RIDENDINE_SANDBOX_WEBHOOK_SECRET": WEBHOOK_SECRET,
            },
        )
    finally:
        holder.stop()
    assert result.exit_code == 1
    assert result.output.startswith(f"refund-bridge: cannot listen on 127.0.0.1:{holder.port}")


def test_the_session_sandbox_accepts_the_bridges_key(ridendine_sandbox: SandboxProcess) -> None:
    answer = requests.post(
        f"{ridendine_sandbox.url}/refunds/create",
        json={
            "ridendine_order_id": "rdn-2",
            "external_order_id": unique_id("ord"),
            "amount_cents": 1,
            "reason": "customer_cancel",
            "requested_by": "customer",
        },
        headers={"Authorization": f"Bearer {RIDENDINE_KEY}", "Idempotency-Key": unique_id("k")},
        timeout=5,
    )
    try:
        assert answer.status_code == 201
        (delivery,) = ridendine_sandbox.control.wait_for_deliveries(
            1, state="not_sent", refund_id=answer.json()["refund_id"]
        )
        assert delivery["url"] is None
    finally:
        ridendine_sandbox.control.reset()


def test_port_0_serves_keep_alive_and_stops_cleanly() -> None:
    # A partner keeps connections open; werkzeug's server closed each one, which cost the
    # bridge a TCP connection per refund in the benchmark (docs/performance.md, ninth pass).
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "RIDENDINE_SANDBOX_API_KEY": RIDENDINE_KEY,
        "RIDENDINE_SANDBOX_WEBHOOK_SECRET": WEBHOOK_SECRET,
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "sandbox", "--port", "0", "--scenario", "silent"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        first = process.stderr.readline()  # bounded: the process prints it or exits
        match = re.match(r"RideNDine sandbox listening on http://127\.0\.0\.1:(\d+) ", first)
        assert match, first
        port = int(match.group(1))
        assert port != 0
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            sockets = []
            for _ in range(3):
                connection.request("GET", "/_sandbox/health")
                answer = connection.getresponse()
                assert answer.status == 200
                assert answer.getheader("Connection", "").lower() != "close"
                answer.read()
                sockets.append(connection.sock)
            assert sockets[0] is not None
            assert sockets == [sockets[0]] * 3  # one connection for all three
        finally:
            connection.close()
        os.killpg(process.pid, signal.SIGTERM)
        _, rest = process.communicate(timeout=20)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
    assert process.returncode == 0
    assert rest.strip().splitlines()[-1] == "RideNDine sandbox stopped"
