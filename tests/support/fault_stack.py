"""The whole bridge as real processes, for the fault tests (tests/test_faults*.py).

`refund-bridge serve` (gunicorn, 2 workers) and `refund-bridge worker` on one SQLite store, a
RideNDine sandbox of their own (posting signed results to the bridge, retrying deliveries for
about a minute like a partner would, recording every call), the session's Directus behind a
FaultProxy, and the session's SMTP sink. Processes can be killed (SIGKILL) and started again;
the test reads what the sandbox, Directus, the sink and the store say afterwards.
"""

from __future__ import annotations

import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import requests

from devstack.directus import REPO, DirectusServer
from devstack.net import free_port, wait_until
from devstack.sandbox import SandboxProcess
from devstack.smtp import SmtpSink
from directus_client import DirectusClient
from tests.support.fault_proxy import FaultProxy
from tests.support.helpers import (
    RIDENDINE_KEY,
    SERVICE_TOKEN,
    WEBHOOK_SECRET,
    make_settings,
    settings_env,
    unique_id,
)

WEBHOOK_PATH = "/ridendine/webhooks/refund-status"
ADMINS = "admins@example.com"
_ORDER_ID = re.compile(r"ord-[0-9a-f]{12}")


@dataclass
class FaultStack:
    directus: DirectusServer
    admin: DirectusClient
    sink: SmtpSink
    folder: Path
    proxy: FaultProxy = field(init=False)
    sandbox: SandboxProcess = field(init=False)
    port: int = field(default_factory=free_port)
    web: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    kills: Counter[str] = field(default_factory=Counter)
    # The secrets the sandbox uses, and settings over the defaults (tests/test_attacks_secrets).
    ridendine_key: str = RIDENDINE_KEY
    webhook_secret: str = WEBHOOK_SECRET
    env_overrides: dict[str, str] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def db_path(self) -> Path:
        return self.folder / "bridge.sqlite3"

    def env(self) -> dict[str, str]:
        settings = make_settings(
            self.proxy.url,
            self.directus.admin_token,
            ridendine_api_url=self.sandbox.url,
        )
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            **settings_env(settings, f"sqlite:///{self.db_path}"),
            # Short timeouts, so that a slow Directus is a timeout within the test's time.
            "BRIDGE_DIRECTUS_TIMEOUT_SECONDS": "1",
            "BRIDGE_RIDENDINE_TIMEOUT_SECONDS": "2",
            "BRIDGE_WORKER_POLL_SECONDS": "0.2",
            "BRIDGE_WORKER_LEASE_SECONDS": "5",
            **self.env_overrides,
        }

    # -- processes ---------------------------------------------------------------------------

    def start(self) -> FaultStack:
        self.proxy = FaultProxy("127.0.0.1", self.directus.port).start()
        self.sandbox = SandboxProcess(
            api_key=self.ridendine_key,
            webhook_secret=self.webhook_secret,
            delay_seconds=0.2,
            bridge_webhook_url=f"{self.url}{WEBHOOK_PATH}",
            extra_env={
                # A partner retries for a long time; here about a minute, quickly.
                "RIDENDINE_SANDBOX_MAX_ATTEMPTS": "40",
                "RIDENDINE_SANDBOX_RETRY_BASE_SECONDS": "0.2",
                "RIDENDINE_SANDBOX_RETRY_MAX_SECONDS": "2",
                "RIDENDINE_SANDBOX_DELIVERY_TIMEOUT_SECONDS": "5",
            },
            log_path=self.folder / "sandbox.log",
        )
        self.sandbox.start()
        self.start_web()
        self.start_worker()
        return self

    def _spawn(self, args: list[str], log: str) -> subprocess.Popen[bytes]:
        with open(self.folder / log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", "bridge.cli", *args],
                cwd=REPO,
                env=self.env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def start_web(self) -> None:
        self.web = self._spawn(
            ["serve", "--bind", f"127.0.0.1:{self.port}", "--workers", "2"], "serve.log"
        )

        def up() -> bool:
            assert self.web is not None and self.web.poll() is None, self.tail("serve.log")
            try:
                return requests.get(f"{self.url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(up, timeout=60, interval=0.1, what="refund-bridge serve")

    def start_worker(self) -> None:
        self.worker = self._spawn(["worker"], "worker.log")

    def web_workers(self) -> list[int]:
        """The gunicorn worker processes (children of the master)."""
        if self.web is None:
            return []
        try:
            children = Path(f"/proc/{self.web.pid}/task/{self.web.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in children.split()]

    def kill_web_worker(self) -> bool:
        """SIGKILL one gunicorn worker (its master starts another)."""
        workers = self.web_workers()
        if not workers:
            return False
        os.kill(workers[0], signal.SIGKILL)
        self.kills["web worker"] += 1
        return True

    def kill_web(self) -> None:
        """SIGKILL the whole web server (master and workers), then start it again."""
        assert self.web is not None
        os.killpg(self.web.pid, signal.SIGKILL)
        self.web.wait(timeout=10)
        self.kills["web server"] += 1
        self.start_web()

    def kill_worker(self) -> None:
        """SIGKILL the worker, then start it again."""
        assert self.worker is not None
        os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait(timeout=10)
        self.kills["worker"] += 1
        self.start_worker()

    def stop(self) -> None:
        for process in (self.worker, self.web):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait(timeout=5)
        self.sandbox.stop()
        self.proxy.stop()

    def tail(self, log: str, chars: int = 3000) -> str:
        path = self.folder / log
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    # -- COOCO's side --------------------------------------------------------------------------

    def orders(self, count: int, customer: dict[str, Any], chef: dict[str, Any]) -> list[str]:
        values = [
            {
                "id": order_id,
                "ridendine_order_id": f"rdn-{order_id}",
                "status": "DELIVERED",
                "payment_status": "PAID",
                "amount_paid_cents": 2500,
                "currency": "EUR",
                "customer": customer["id"],
                "chef": chef["id"],
            }
            for order_id in (unique_id("ord") for _ in range(count))
        ]
        for start in range(0, count, 100):
            self.admin.create_items("orders", values[start : start + 100])
        return [str(value["id"]) for value in values]

    def request_refund(self, order_id: str, timeout: float = 30.0) -> requests.Response:
        return requests.post(
            f"{self.url}/ridendine/refunds",
            json={"order_id": order_id, "reason": "chef_rejected", "requested_by": "admin"},
            headers={
                "Authorization": f"Bearer {SERVICE_TOKEN}",
                "Idempotency-Key": f"fault-{order_id}",
            },
            timeout=timeout,
        )

    # -- the store, read (and its clock moved) from outside --------------------------------------

    def query(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with sqlite3.connect(self.db_path, timeout=30) as connection:
            return list(connection.execute(sql, params))

    def skip_backoff(self) -> None:
        """Bring retries due now (the test does not wait out the backoff schedule); leases are
        left alone (a job in a live process's hands stays there)."""
        now = datetime.now(UTC).replace(tzinfo=None)
        with sqlite3.connect(self.db_path, timeout=30) as connection:
            connection.execute(
                "UPDATE outbox_jobs SET next_attempt_at = ? WHERE state = 'pending' "
                "AND next_attempt_at > ?",
                (str(now - timedelta(seconds=1)), str(now)),
            )

    def pending_jobs(self) -> list[tuple[str, str | None]]:
        return [
            (kind, error)
            for kind, error in self.query(
                "SELECT kind, last_error FROM outbox_jobs WHERE state = 'pending'"
            )
        ]

    def settle(self, order_ids: list[str], timeout: float = 180.0) -> None:
        """Wait until every order is REFUNDED in Directus and no job is left, skipping backoff."""

        def settled() -> bool:
            self.skip_backoff()
            if self.pending_jobs():
                return False
            orders = self.admin.query_items(
                "orders",
                filter={"id": {"_in": order_ids}},
                fields=["id", "payment_status"],
                limit=-1,
            )
            return len(orders) == len(order_ids) and all(
                order["payment_status"] == "REFUNDED" for order in orders
            )

        try:
            wait_until(settled, timeout=timeout, interval=1.0, what="every refund to settle")
        except Exception as exc:  # say what is left
            raise AssertionError(
                f"not settled: jobs {self.pending_jobs()[:10]}; worker log: "
                f"{self.tail('worker.log')}"
            ) from exc

    def reconcile(self) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bridge.cli", "reconcile", "--format", "json"],
            cwd=REPO,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def mails_by_order(self) -> dict[str, Counter[str]]:
        """Recipients of the e-mails mentioning each order: {order id: {address: count}}."""
        found: dict[str, Counter[str]] = {}
        for mail in self.sink.messages:
            text = mail.subject + mail.text()
            for order_id in set(_ORDER_ID.findall(text)):
                found.setdefault(order_id, Counter()).update(mail.rcpt_to)
        return found

    def submissions(self, order_id: str) -> list[dict[str, Any]]:
        return self.sandbox.control.requests(external_order_id=order_id)

    def wait_for(self, what: str, check: Any, timeout: float = 60.0) -> None:
        wait_until(check, timeout=timeout, interval=0.2, what=what)

    @staticmethod
    def now() -> float:
        return time.monotonic()
