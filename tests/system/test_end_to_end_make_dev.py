"""`make dev` (`python -m devstack up`): the whole stack starts on free ports in a fresh state
folder, shows a refund going through, and Ctrl-C stops every process it started; a taken port
is one clear line; the demo data is seeded once however often it runs."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from devstack import demo
from devstack.directus import REPO, DirectusServer
from devstack.net import free_port, wait_until
from directus_client import DirectusClient

UP_TIMEOUT_SECONDS = 150.0  # fresh Directus bootstrap included; about 30 s when idle


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def devstack_env() -> dict[str, str]:
    # The developer's own BRIDGE_* settings must not matter; the stack sets its own.
    return {
        **os.environ,
        "BRIDGE_STRIPE_API_KEY": "sk_test_must_be_ignored",
        "PYTHONUNBUFFERED": "1",
    }


@pytest.mark.directus  # starts a Directus of its own
def test_up_shows_a_refund_going_through_and_ctrl_c_stops_everything(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("directus", "bridge", "sandbox", "smtp")}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "devstack",
            "up",
            "--state-dir",
            str(tmp_path / "dev"),
            *(arg for name, port in ports.items() for arg in (f"--{name}-port", str(port))),
        ],
        cwd=REPO,
        env=devstack_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # a terminal's Ctrl-C: SIGINT to `up` alone, never to pytest
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stdout or ()), daemon=True)
    reader.start()
    try:
        wait_until(
            lambda: (
                any("Ctrl-C stops everything." in line for line in lines)
                or process.poll() is not None
            ),
            timeout=UP_TIMEOUT_SECONDS,
            interval=0.2,
            what="`python -m devstack up` to start and run the demo",
        )
        assert process.poll() is None, "".join(lines)
        assert all(port_open(port) for port in ports.values()), "".join(lines)
        started = descendants(process.pid)
        # gunicorn and its 2 workers, the worker, the sandbox, Directus.
        assert len(started) >= 6, started
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        reader.join(5)
        if process.stdout is not None:
            process.stdout.close()
    output = "".join(lines)
    print(output)  # shown by pytest -s or on failure: the timings of each step

    assert process.returncode == 0, output
    assert re.search(
        r"demo: refund rf_\w+ REFUNDED; order demo-run-\S+ payment_status REFUNDED, "
        r"status CANCELLED; 3 e-mails",
        output,
    ), output
    # The refund policy: a customer's request waited, the admin approved it.
    assert re.search(
        r"demo: refund rf_\w+ waited, was approved by the admin, and is REFUNDED", output
    ), output
    assert f"http://127.0.0.1:{ports['directus']}/ridendine/refunds" in output
    assert "stopped." in output
    # Nothing it started is left: no port answers, no child process remains.
    assert not any(port_open(port) for port in ports.values())
    assert not [pid for pid in started if alive(pid)]
    # The e-mails were also written where the summary says: the first refund's three, then the
    # approved request's three (its notices may be skipped: it was decided at once).
    assert len(list((tmp_path / "dev" / "mail").glob("*.eml"))) >= 3 + 3


def parent_and_state(pid: int) -> tuple[int, str] | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), fields[0]


def descendants(root: int) -> list[int]:
    """Every living process below `root`."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (found := parent_and_state(int(name))) is not None:
            parents[int(name)] = found[0]
    below, frontier = [], [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent]
        below += children
        frontier += children
    return below


def alive(pid: int) -> bool:
    found = parent_and_state(pid)
    return found is not None and found[1] != "Z"


def test_a_taken_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "devstack",
                "up",
                "--state-dir",
                str(tmp_path / "dev"),
                "--bridge-port",
                str(port),
                "--directus-port",
                str(free_port()),
                "--sandbox-port",
                str(free_port()),
                "--smtp-port",
                str(free_port()),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert result.stderr.strip() == (
        f"devstack: port {port} for the bridge is already in use: stop what listens there "
        "or choose another with --bridge-port"
    )
    assert "Traceback" not in result.stdout + result.stderr


def test_the_demo_data_is_seeded_once(
    cooco_directus: DirectusServer, directus_admin: DirectusClient
) -> None:
    first = demo.seed(directus_admin)
    again = demo.seed(directus_admin)

    assert again.created == []
    assert again.user_ids == first.user_ids
    for user in demo.DEMO_USERS:
        found = directus_admin.list_system("users", filter={"email": {"_eq": user.email}})
        assert len(found) == 1
        me = directus_admin.with_token(user.token).me(fields=["id"])
        assert me["id"] == first.user_ids[user.key]
    for order in demo.DEMO_ORDERS:
        item = directus_admin.get_item("orders", order.id)
        assert item["customer"] == first.user_ids[order.customer]
        assert item["chef"] == first.user_ids["chef"]
        assert (item["payment_status"], item["amount_paid_cents"]) == (
            "PAID",
            order.amount_paid_cents,
        )


def test_the_demo_says_when_no_stack_runs(tmp_path: Path) -> None:
    started = time.monotonic()
    nothing_there = f"http://127.0.0.1:{free_port()}"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devstack",
            "demo",
            "--directus-url",
            nothing_there,
            "--maildir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "is `make dev` running?" in result.stderr
    assert "Traceback" not in result.stderr
    assert time.monotonic() - started < 30
