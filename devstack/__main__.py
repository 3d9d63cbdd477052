"""`python -m devstack up`: the local stack for a developer (what `make dev` runs).

Starts the SMTP sink (mails also written to .dev/mail/), a Directus on SQLite (.dev/directus/,
kept between runs), and the bridge under gunicorn; prints where each listens; Ctrl-C stops
everything it started.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from types import FrameType

import requests

from devstack.directus import ADMIN_EMAIL, ADMIN_PASSWORD, REPO, DirectusServer
from devstack.net import free_port, wait_until
from devstack.smtp import SmtpSink

DEV_DIR = REPO / ".dev"
# Local-only secrets for the dev stack (never used anywhere else).
DEV_SERVICE_TOKEN = "dev-service-token-0123456789abcdef"  # noqa: S105
DEV_WEBHOOK_SECRET = "whsec_ZGV2LXdlYmhvb2stc2VjcmV0LTMyLWJ5dGVzLWxvbmc="  # noqa: S105
DEV_RIDENDINE_KEY = "dev-ridendine-key-0123456789"
DEV_FLOW_SECRET = "dev-flow-secret-0123456789abcdef"  # noqa: S105


def bridge_env(directus: DirectusServer, ridendine_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "BRIDGE_DIRECTUS_URL": directus.url,
        "BRIDGE_DIRECTUS_TOKEN": directus.admin_token,
        "BRIDGE_RIDENDINE_API_URL": ridendine_url,
        "BRIDGE_RIDENDINE_API_KEY": DEV_RIDENDINE_KEY,
        "BRIDGE_WEBHOOK_SECRETS": DEV_WEBHOOK_SECRET,
        "BRIDGE_API_TOKENS": DEV_SERVICE_TOKEN,
        "BRIDGE_FLOW_SECRET": DEV_FLOW_SECRET,
        "BRIDGE_DATABASE_URL": f"sqlite:///{DEV_DIR / 'bridge.sqlite3'}",
        "BRIDGE_ADMIN_EMAILS": "admins@example.com",
    }


def up(args: argparse.Namespace) -> int:
    DEV_DIR.mkdir(exist_ok=True)
    processes: list[subprocess.Popen[bytes]] = []
    sink = SmtpSink(port=args.smtp_port, maildir=DEV_DIR / "mail")
    sink.start()
    directus = DirectusServer(
        data_dir=DEV_DIR / "directus",
        port=args.directus_port,
        smtp_port=sink.port,
        extra_env={"REFUND_BRIDGE_FLOW_SECRET": DEV_FLOW_SECRET},
    )
    bridge_port = args.bridge_port or free_port()

    def stop_all(*_: object) -> None:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
        directus.stop()
        sink.stop()

    try:
        started = time.monotonic()
        directus.start()
        env = bridge_env(directus, args.ridendine_url)
        bridge = subprocess.Popen(
            [sys.executable, "-m", "bridge.cli", "serve", "--bind", f"127.0.0.1:{bridge_port}"],
            env=env,
            cwd=REPO,
        )
        processes.append(bridge)
        bridge_url = f"http://127.0.0.1:{bridge_port}"

        def bridge_ready() -> bool:
            if bridge.poll() is not None:
                raise RuntimeError("the bridge exited; see its output above")
            try:
                return requests.get(f"{bridge_url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(bridge_ready, timeout=60, what="the bridge to answer /healthz")
        print(
            "\nrefund-bridge local stack is up "
            f"({time.monotonic() - started:.1f}s)\n"
            f"  Directus   {directus.url}  (admin: {ADMIN_EMAIL} / {ADMIN_PASSWORD},"
            f" static token {directus.admin_token})\n"
            f"  bridge     {bridge_url}  (service token {DEV_SERVICE_TOKEN})\n"
            f"  SMTP sink  127.0.0.1:{sink.port}  (mails written to {DEV_DIR / 'mail'})\n"
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        if args.once:
            return 0
        stop = {"flag": False}

        def on_signal(_signum: int, _frame: FrameType | None) -> None:
            stop["flag"] = True

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        while not stop["flag"]:
            if any(p.poll() is not None for p in processes) or not directus.is_running():
                print("a process of the stack exited; stopping", file=sys.stderr)
                return 1
            time.sleep(0.5)
        return 0
    finally:
        stop_all()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack")
    sub = parser.add_subparsers(dest="command", required=True)
    up_parser = sub.add_parser("up", help="start the local stack until Ctrl-C")
    up_parser.add_argument("--directus-port", type=int, default=8055)
    up_parser.add_argument("--bridge-port", type=int, default=8080)
    up_parser.add_argument("--smtp-port", type=int, default=1025)
    up_parser.add_argument("--ridendine-url", default="http://127.0.0.1:8090")
    up_parser.add_argument("--once", action="store_true", help="start, print, stop (a smoke test)")
    args = parser.parse_args(argv)
    if args.command == "up":
        return up(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
