"""`python -m devstack up` (what `make dev` runs) and `python -m devstack demo` (`make demo`).

`up` starts the whole refund flow on this machine, at COOCO's URLs: the SMTP sink (mails also
written as .eml files), Directus on SQLite (kept between runs) with the `ridendine` extension
linked in, the bridge's schema, Flows and demo data, the bridge under gunicorn, the worker and
the RideNDine sandbox posting its webhooks through Directus. It prints where everything is, runs
the demo once, and keeps running until Ctrl-C, which stops every process it started (each in a
process group of its own; SIGTERM, then SIGKILL after a bounded wait). docs/local-stack.md.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import requests

from devstack import demo
from devstack.directus import (
    ADMIN_EMAIL,
    ADMIN_PASSWORD,
    ADMIN_TOKEN,
    DIRECTUS_VERSION,
    REPO,
    DirectusServer,
    install_directus,
    link_extension,
)
from devstack.net import wait_until
from devstack.sandbox import SandboxProcess
from devstack.smtp import SmtpSink
from directus_client import DirectusClient, DirectusError

DEV_DIR = REPO / ".dev"
# Local-only secrets of the dev stack (never used anywhere else).
DEV_SERVICE_TOKEN = "dev-service-token-0123456789abcdef"  # noqa: S105
DEV_FLOW_SERVICE_TOKEN = "dev-flow-service-token-0123456789"  # noqa: S105
DEV_WEBHOOK_SECRET = "whsec_ZGV2LXdlYmhvb2stc2VjcmV0LTMyLWJ5dGVzLWxvbmc="  # noqa: S105
DEV_RIDENDINE_KEY = "dev-ridendine-key-0123456789"
DEV_FLOW_SECRET = "dev-flow-secret-0123456789abcdef"  # noqa: S105
DEV_ADMIN_EMAILS = "admins@example.com"
WEBHOOK_PATH = "/ridendine/webhooks/refund-status"
STOP_TIMEOUT_SECONDS = 20.0
SETUP_TIMEOUT_SECONDS = 120.0
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class StackError(Exception):
    """The stack cannot start; the message is the one line `up` prints."""


@dataclass(frozen=True)
class Ports:
    directus: int
    bridge: int
    sandbox: int
    smtp: int

    def named(self) -> list[tuple[str, str, int]]:
        return [
            ("Directus", "--directus-port", self.directus),
            ("the bridge", "--bridge-port", self.bridge),
            ("the RideNDine sandbox", "--sandbox-port", self.sandbox),
            ("the SMTP sink", "--smtp-port", self.smtp),
        ]


def check_ports(ports: Ports) -> None:
    """One clear line when a port is taken, before anything starts."""
    seen: dict[int, str] = {}
    for name, option, port in ports.named():
        if port in seen:
            raise StackError(f"{name} and {seen[port]} cannot share port {port}")
        seen[port] = name
        try:
            with socket.create_server(("127.0.0.1", port)):
                pass
        except OSError:
            raise StackError(
                f"port {port} for {name} is already in use: stop what listens there "
                f"or choose another with {option}"
            ) from None


def stack_env(directus_url: str, ports: Ports, state_dir: Path) -> dict[str, str]:
    """The bridge's, the worker's and the setup commands' environment. The caller's own
    BRIDGE_* and RIDENDINE_SANDBOX_* variables are left out: the stack is the same everywhere."""
    inherited = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("BRIDGE_", "RIDENDINE_SANDBOX_"))
    }
    return {
        **inherited,
        "BRIDGE_DIRECTUS_URL": directus_url,
        "BRIDGE_DIRECTUS_TOKEN": ADMIN_TOKEN,
        "BRIDGE_RIDENDINE_API_URL": f"http://127.0.0.1:{ports.sandbox}",
        "BRIDGE_RIDENDINE_API_KEY": DEV_RIDENDINE_KEY,
        "BRIDGE_WEBHOOK_SECRETS": DEV_WEBHOOK_SECRET,
        "BRIDGE_API_TOKENS": f"{DEV_SERVICE_TOKEN},{DEV_FLOW_SERVICE_TOKEN}",
        "BRIDGE_FLOW_SERVICE_TOKEN": DEV_FLOW_SERVICE_TOKEN,
        "BRIDGE_FLOW_SECRET": DEV_FLOW_SECRET,
        "BRIDGE_PUBLIC_URL": f"http://127.0.0.1:{ports.bridge}",
        "BRIDGE_DATABASE_URL": f"sqlite:///{state_dir / 'bridge.sqlite3'}",
        "BRIDGE_ADMIN_EMAILS": DEV_ADMIN_EMAILS,
        "BRIDGE_LOG_LEVEL": "INFO",
    }


def bridge_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "bridge.cli", *args]


@dataclass
class Stack:
    """What `up` started, stopped in reverse order."""

    state_dir: Path
    ports: Ports
    logs_dir: Path = field(init=False)
    sink: SmtpSink | None = None
    directus: DirectusServer | None = None
    sandbox: SandboxProcess | None = None
    processes: list[tuple[str, subprocess.Popen[bytes], Path]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.logs_dir = self.state_dir / "logs"

    @property
    def directus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.directus}"

    @property
    def bridge_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.bridge}"

    @property
    def maildir(self) -> Path:
        return self.state_dir / "mail"

    def spawn(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        """A child in a process group of its own (so that Ctrl-C reaches only us, and we stop
        it with everything it forked), output appended to logs/<name>.log."""
        log_path = self.logs_dir / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command,
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append((name, process, log_path))
        return process

    def exited(self) -> str | None:
        """The first child that is no longer running, as a line for the user."""
        for name, process, log_path in self.processes:
            if process.poll() is not None:
                return f"{name} exited with code {process.returncode} (see {log_path})"
        if self.sandbox is not None and not self.sandbox.is_running():
            return f"the RideNDine sandbox exited (see {self.logs_dir / 'sandbox.log'})"
        if self.directus is not None and not self.directus.is_running():
            return f"Directus exited (see {self.directus.log_path})"
        return None

    def stop(self) -> None:
        for _name, process, _log in reversed(self.processes):
            _terminate_group(process)
        for _name, process, _log in reversed(self.processes):
            _wait_group(process)
        self.processes.clear()
        if self.sandbox is not None:
            self.sandbox.stop(timeout=STOP_TIMEOUT_SECONDS)
        if self.directus is not None:
            self.directus.stop(timeout=STOP_TIMEOUT_SECONDS)
        if self.sink is not None:
            self.sink.stop()
            self.sink = None


def _terminate_group(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)


def _wait_group(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)
    # Whatever the group leader left behind (gunicorn's workers after a crash of the master).
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)


def _start_sandbox(sandbox: SandboxProcess) -> None:
    # In a thread: its failure is found by the caller (the process is not running).
    with suppress(RuntimeError, TimeoutError):
        sandbox.start()


def run_setup(stack: Stack, what: str, args: list[str], env: dict[str, str]) -> str:
    """A `refund-bridge` setup command to its end; its output goes to logs/setup.log and its
    last line is returned. A failure is a StackError with the command's own reason."""
    result = subprocess.run(
        bridge_command(*args),
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=SETUP_TIMEOUT_SECONDS,
        check=False,
    )
    with open(stack.logs_dir / "setup.log", "a") as log:
        log.write(f"$ refund-bridge {' '.join(args)}\n{result.stdout}{result.stderr}\n")
    lines = (result.stdout + result.stderr).strip().splitlines()
    last = lines[-1] if lines else ""
    if result.returncode != 0:
        raise StackError(f"{what} failed: {last} (see {stack.logs_dir / 'setup.log'})")
    return last


@contextmanager
def signals_stop_us() -> Iterator[None]:
    """SIGTERM and SIGHUP (the terminal closed) end `up` like Ctrl-C does: KeyboardInterrupt,
    then the clean-up."""

    def interrupt(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = {signum: signal.signal(signum, interrupt) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def start(stack: Stack) -> None:
    """Everything up, in an order that overlaps the slow starts (Directus, gunicorn)."""
    began = time.monotonic()

    def step(text: str) -> None:
        say(f"  {time.monotonic() - began:5.1f}s  {text}")

    stack.state_dir.mkdir(parents=True, exist_ok=True)
    stack.logs_dir.mkdir(exist_ok=True)
    ports = stack.ports
    env = stack_env(stack.directus_url, ports, stack.state_dir)

    stack.sink = SmtpSink(port=ports.smtp, maildir=stack.maildir)
    stack.sink.start()
    step(f"SMTP sink on 127.0.0.1:{ports.smtp}")
    # The bridge needs no Directus to start: it boots (and migrates its store) meanwhile.
    stack.spawn(
        "bridge",
        bridge_command("serve", "--bind", f"127.0.0.1:{ports.bridge}", "--workers", "2"),
        env,
    )
    stack.sandbox = SandboxProcess(
        api_key=DEV_RIDENDINE_KEY,
        webhook_secret=DEV_WEBHOOK_SECRET,
        port=ports.sandbox,
        bridge_webhook_url=f"{stack.directus_url}{WEBHOOK_PATH}",
        delay_seconds=1.0,
        log_path=stack.logs_dir / "sandbox.log",
    )
    # The sandbox and Directus start side by side (a few seconds each).
    sandbox_start = threading.Thread(target=_start_sandbox, args=(stack.sandbox,), daemon=True)
    sandbox_start.start()

    directus_dir = stack.state_dir / "directus"
    try:
        link_extension(directus_dir / "extensions")
    except FileExistsError as exc:
        raise StackError(str(exc)) from None
    stack.directus = DirectusServer(
        data_dir=directus_dir,
        port=ports.directus,
        smtp_port=ports.smtp,
        extra_env={
            "BRIDGE_URL": stack.bridge_url,
            "BRIDGE_SERVICE_TOKEN": DEV_SERVICE_TOKEN,
            # The "request refund" Flow calls the bridge on 127.0.0.1, which Directus's
            # default deny list (0.0.0.0: every local address) would refuse.
            "IMPORT_IP_DENY_LIST": "169.254.169.254",
        },
    )
    # Bootstrapping an existing database only re-checks it (several seconds): skipped once a
    # bootstrap of this version went through.
    bootstrapped = directus_dir / f".bootstrapped-{DIRECTUS_VERSION}"
    if bootstrapped.exists() and (directus_dir / "directus.sqlite3").exists():
        stack.directus.install_dir = install_directus()
    stack.directus.start(timeout=120)
    bootstrapped.touch()
    step(f"Directus on {stack.directus_url} with the ridendine extension")
    sandbox_start.join(60)
    if not stack.sandbox.is_running() or not stack.sandbox.control.healthy():
        raise StackError(
            f"the RideNDine sandbox did not start (see {stack.logs_dir / 'sandbox.log'})"
        )
    step(f"RideNDine sandbox on {stack.sandbox.url}")

    step(
        "schema apply: "
        + run_setup(stack, "schema apply", ["schema", "apply", "--with-demo-orders"], env)
    )
    step("flows sync: " + run_setup(stack, "flows sync", ["flows", "sync"], env))
    step("dashboard sync: " + run_setup(stack, "dashboard sync", ["dashboard", "sync"], env))
    client = DirectusClient(stack.directus_url, stack.directus.admin_token)
    try:
        created = demo.seed(client).created
    finally:
        client.close()
    step(f"demo data: {', '.join(created) if created else 'already there'}")

    def bridge_ready() -> bool:
        problem = stack.exited()
        if problem:
            raise StackError(problem)
        try:
            return requests.get(f"{stack.bridge_url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_until(bridge_ready, timeout=60, interval=0.2, what="the bridge to answer /healthz")
    step(f"bridge on {stack.bridge_url}")
    # After the bridge: its store is migrated by then (the worker would migrate it too).
    stack.spawn("worker", bridge_command("worker"), env)
    step("worker started")


def summary(stack: Stack, seconds: float) -> str:
    directus = stack.directus_url
    users = "\n".join(
        f"    {user.key:<15} {user.email:<27} token {user.token}" for user in demo.DEMO_USERS
    )
    orders = ", ".join(
        f"{order.id} ({order.customer}, {order.amount_paid_cents / 100:.2f} EUR)"
        for order in demo.DEMO_ORDERS
    )
    customer = demo.DEMO_USERS[0]
    return (
        f"\nrefund-bridge local stack is up ({seconds:.1f}s)\n"
        f"  Directus (COOCO)   {directus}  login {ADMIN_EMAIL} / {ADMIN_PASSWORD}\n"
        f"                     admin static token {ADMIN_TOKEN}\n"
        f"                     refunds {directus}/ridendine/refunds, "
        f"webhooks {directus}{WEBHOOK_PATH}\n"
        f"  bridge             {stack.bridge_url}  (logs {stack.logs_dir / 'bridge.log'})\n"
        f"  worker             logs {stack.logs_dir / 'worker.log'}\n"
        f"  RideNDine sandbox  http://127.0.0.1:{stack.ports.sandbox}  "
        f"(what it saw: /_sandbox/requests, /_sandbox/deliveries)\n"
        f"  SMTP sink          127.0.0.1:{stack.ports.smtp}  e-mails: {stack.maildir}/*.eml\n"
        f"  demo users (Directus static tokens):\n{users}\n"
        f"  demo orders: {orders}\n"
        f"  try: curl -X POST {directus}/ridendine/refunds "
        f"-H 'Authorization: Bearer {customer.token}' -H 'Content-Type: application/json' "
        f'-d \'{{"order_id": "demo-1001", "reason": "customer_cancel"}}\'\n'
        "  `make demo` runs another refund end to end; docs/local-stack.md tells the rest.\n"
    )


def say(text: str, *, err: bool = False) -> None:
    """Print, never failing: a closed stdout (`| head`) must not skip the clean-up."""
    with suppress(OSError, ValueError):
        print(text, file=sys.stderr if err else sys.stdout, flush=True)


def up(args: argparse.Namespace) -> int:
    ports = Ports(args.directus_port, args.bridge_port, args.sandbox_port, args.smtp_port)
    stack = Stack(state_dir=args.state_dir.resolve(), ports=ports)
    started = time.monotonic()
    code = 0
    with signals_stop_us():
        try:
            check_ports(ports)
            say(f"starting the local stack in {stack.state_dir} ...")
            start(stack)
            say(summary(stack, time.monotonic() - started))
            if not args.no_demo:
                code = demo.run_demo(stack.directus_url, stack.maildir, print_=say)
                say(f"(demo finished {time.monotonic() - started:.1f}s after start)")
            if args.once:
                return code
            say("Ctrl-C stops everything.")
            while True:
                problem = stack.exited()
                if problem:
                    say(f"devstack: {problem}; stopping the rest", err=True)
                    return 1
                time.sleep(0.5)
        except KeyboardInterrupt:
            return code
        except (StackError, TimeoutError, RuntimeError, DirectusError, OSError) as exc:
            say(f"devstack: {exc}".splitlines()[0], err=True)
            return 1
        except requests.RequestException as exc:
            say(f"devstack: the demo could not reach the stack ({type(exc).__name__})", err=True)
            return 1
        finally:
            # A second Ctrl-C must not cut the clean-up short (it is bounded by itself).
            for signum in STOP_SIGNALS:
                signal.signal(signum, signal.SIG_IGN)
            say("stopping the local stack ...")
            stack.stop()
            say("stopped.")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start the local stack until Ctrl-C")
    up_parser.add_argument("--directus-port", type=int, default=8055)
    up_parser.add_argument("--bridge-port", type=int, default=8080)
    up_parser.add_argument("--sandbox-port", type=int, default=8090)
    up_parser.add_argument("--smtp-port", type=int, default=1025)
    up_parser.add_argument(
        "--state-dir", type=Path, default=DEV_DIR, help="Directus's data, the store, mails, logs"
    )
    up_parser.add_argument("--no-demo", action="store_true", help="skip the demo refund")
    up_parser.add_argument(
        "--once", action="store_true", help="start, run the demo, stop (exit code: the demo's)"
    )
    demo_parser = sub.add_parser("demo", help="one refund end to end against a running stack")
    demo.add_arguments(demo_parser)
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args)
    return demo.run_from_args(args)


if __name__ == "__main__":
    sys.exit(main())
