"""The stack the benchmark runs on: a real Directus on SQLite, the bridge under gunicorn with its
documented production settings (`refund-bridge serve --workers 2 --threads 4`), one worker
(`refund-bridge worker`), the RideNDine sandbox and an SMTP sink, all on 127.0.0.1.

`start_stack` makes everything fresh in a work folder (what `make bench` runs); `attach_stack`
runs the bridge, worker and sandbox against a Directus that is already there (the quick test,
on the test session's Directus). `stop()` ends only the processes this module started.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from bridge.cli.directus import flow_params
from bridge.config import Settings
from bridge.directus.schema import apply_schema, create_demo_orders
from devstack.directus import REPO, DirectusServer, link_extension
from devstack.net import free_port, wait_until
from devstack.sandbox import SandboxProcess
from directus_client import DirectusClient
from flows import REFUND_RESULT
from flows.sync import ping_refund_result, sync_flows

# Local-only secrets of the benchmark stack.
API_TOKEN = "bench-service-token-0123456789abcdef"
RIDENDINE_KEY = "bench-ridendine-key-0123456789"
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"bench-webhook-secret-32-bytes-ok").decode()
FLOW_SECRET = "bench-flow-secret-0123456789abcdef"
ADMIN_EMAILS = "admins@example.com"
BRIDGE_USER_AGENT = "refund-bridge-directus-client"
SEED_USER_AGENT = "refund-bridge-bench-seed"
SEED_TIMEOUT_SECONDS = 300.0
WEB_WORKERS = 2  # docs/deployment.md: serve --workers 2 --threads 4
WEB_THREADS = 4
STOP_TIMEOUT = 20.0


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM to the process's group, SIGKILL after a bounded wait."""
    if process is None or process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def children(pid: int) -> list[int]:
    """The direct children of a process (gunicorn's workers of its master)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ...": comm may hold spaces, so split after its ')'.
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU time the processes used so far (Linux /proc); a process that is gone
    counts nothing."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with suppress(OSError, ValueError, IndexError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / ticks


def _process_tree(process: subprocess.Popen[bytes] | None) -> list[int]:
    return [process.pid, *children(process.pid)] if process is not None else []


def memory_kib(pid: int) -> dict[str, int]:
    """Current (VmRSS) and peak (VmHWM) resident memory of a process, in KiB."""
    values = {}
    with suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
    return values


@dataclass
class BenchStack:
    workdir: Path
    directus: DirectusServer
    settings: Settings
    mail_count: Callable[[], int]
    directus_log: Path | None  # Directus's request log (LOG_LEVEL=info), when we started it
    owns_directus: bool = False
    flow_id: str = ""
    customer: dict[str, str] = field(default_factory=dict)
    chef: dict[str, str] = field(default_factory=dict)
    bridge_port: int = 0
    worker_metrics_port: int = 0
    sandbox: SandboxProcess | None = None
    bridge: subprocess.Popen[bytes] | None = None
    worker: subprocess.Popen[bytes] | None = None
    mailsink: subprocess.Popen[bytes] | None = None

    @property
    def bridge_url(self) -> str:
        return f"http://127.0.0.1:{self.bridge_port}"

    @property
    def database_path(self) -> Path:
        return self.workdir / "bridge.sqlite3"

    def seed_client(self) -> DirectusClient:
        # Seeding creates 1000 items a request; late in a full run (Directus's database holds
        # tens of thousands of orders by then) one took more than the default 10 s.
        return DirectusClient(
            self.directus.url,
            self.directus.admin_token,
            user_agent=SEED_USER_AGENT,
            read_timeout=SEED_TIMEOUT_SECONDS,
        )

    def env(self) -> dict[str, str]:
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("BRIDGE_", "RIDENDINE_SANDBOX_", "PROMETHEUS_"))
        }
        settings = self.settings
        return {
            **inherited,
            "BRIDGE_DIRECTUS_URL": settings.directus_url,
            "BRIDGE_DIRECTUS_TOKEN": settings.directus_token,
            "BRIDGE_RIDENDINE_API_URL": settings.ridendine_api_url,
            "BRIDGE_RIDENDINE_API_KEY": settings.ridendine_api_key,
            "BRIDGE_WEBHOOK_SECRETS": ",".join(settings.webhook_secrets),
            "BRIDGE_API_TOKENS": ",".join(settings.api_tokens),
            "BRIDGE_FLOW_SECRET": settings.flow_secret or "",
            "BRIDGE_ADMIN_EMAILS": ",".join(settings.admin_emails),
            "BRIDGE_DATABASE_URL": f"sqlite:///{self.database_path}",
            "BRIDGE_PUBLIC_URL": self.bridge_url,
            "BRIDGE_WORKER_METRICS_PORT": str(self.worker_metrics_port),
            "BRIDGE_LOG_LEVEL": "INFO",
        }

    # -- the processes ---------------------------------------------------------------------

    def start_bridge(self) -> None:
        """The bridge under gunicorn, then the worker once the store is migrated."""
        cli = [sys.executable, "-m", "bridge.cli"]
        env = self.env()
        self.bridge = spawn(
            [
                *cli,
                "serve",
                "--bind",
                f"127.0.0.1:{self.bridge_port}",
                "--workers",
                str(WEB_WORKERS),
                "--threads",
                str(WEB_THREADS),
            ],
            env,
            self.workdir / "bridge.log",
        )

        def bridge_ready() -> bool:
            if self.bridge is not None and self.bridge.poll() is not None:
                raise RuntimeError(f"the bridge exited; see {self.workdir / 'bridge.log'}")
            try:
                return requests.get(f"{self.bridge_url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(bridge_ready, timeout=90, interval=0.2, what="the bridge under gunicorn")
        self.worker = spawn([*cli, "worker"], env, self.workdir / "worker.log")

        def worker_ready() -> bool:
            self.check_running()
            try:
                url = f"http://127.0.0.1:{self.worker_metrics_port}/metrics"
                return requests.get(url, timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(worker_ready, timeout=60, interval=0.2, what="the worker's metrics port")

    def web_pids(self) -> list[int]:
        """gunicorn's master and its workers."""
        return _process_tree(self.bridge)

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far by Directus, the bridge's web processes and the sandbox (the
        processes that a refund request keeps busy), to be subtracted around a run."""
        groups = {
            "directus": _process_tree(self.directus.process),
            "bridge_web": self.web_pids(),
            "sandbox": _process_tree(self.sandbox.process if self.sandbox else None),
        }
        return {name: cpu_seconds(pids) for name, pids in groups.items()}

    def memory(self) -> dict[str, Any]:
        """Peak and current RSS (MiB) of each web process and of the worker."""
        web = {pid: memory_kib(pid) for pid in self.web_pids()}
        worker = memory_kib(self.worker.pid) if self.worker is not None else {}
        return {
            "web_processes": [
                {
                    "pid": pid,
                    "role": "master" if index == 0 else "worker",
                    "peak_mib": round(values.get("VmHWM", 0) / 1024, 1),
                    "rss_mib": round(values.get("VmRSS", 0) / 1024, 1),
                }
                for index, (pid, values) in enumerate(web.items())
            ],
            "worker_process": {
                "peak_mib": round(worker.get("VmHWM", 0) / 1024, 1),
                "rss_mib": round(worker.get("VmRSS", 0) / 1024, 1),
            },
        }

    def check_running(self) -> None:
        for name, process in (("bridge", self.bridge), ("worker", self.worker)):
            if process is not None and process.poll() is not None:
                raise RuntimeError(
                    f"the {name} exited with {process.returncode}; "
                    f"see {self.workdir / (name + '.log')}"
                )

    def stop(self) -> None:
        stop_process(self.worker)
        stop_process(self.bridge)
        if self.sandbox is not None:
            self.sandbox.stop()
        if self.owns_directus:
            self.directus.stop()
        stop_process(self.mailsink)


def bench_settings(directus: DirectusServer, sandbox_url: str, flow_secret: str) -> Settings:
    return Settings(
        directus_url=directus.url,
        directus_token=directus.admin_token,
        ridendine_api_url=sandbox_url,
        ridendine_api_key=RIDENDINE_KEY,
        webhook_secrets=(WEBHOOK_SECRET,),
        api_tokens=(API_TOKEN,),
        flow_secret=flow_secret,
        admin_emails=(ADMIN_EMAILS,),
    )


def _prepare_directus(stack: BenchStack) -> None:
    """COOCO's side: the orders collection, the refunds schema, the "refund result" Flow (only
    that one: on a shared Directus the "request refund" Flow points at another bridge), a
    customer and a chef with e-mails (every order is theirs: each result e-mails three)."""
    client = stack.seed_client()
    try:
        create_demo_orders(client)
        apply_schema(client)
        results = sync_flows(client, flow_params(stack.settings), keys=[REFUND_RESULT])
        flow_ids = {result.key: str(result.flow_id) for result in results}
        stack.flow_id = flow_ids[REFUND_RESULT]
        # Directus reloads its Flows in the background after a change: wait until it has.
        deadline = time.monotonic() + 30
        while True:
            try:
                ping_refund_result(client, stack.settings.flow_secret or "", stack.flow_id)
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        suffix = os.urandom(4).hex()
        for role, target in (("customer", stack.customer), ("chef", stack.chef)):
            email = f"bench-{role}-{suffix}@example.com"
            created = client.create_system(
                "users", {"email": email, "status": "active", "password": os.urandom(12).hex()}
            )
            target.update(id=str(created["id"]), email=email)
    finally:
        client.close()


def _start_sandbox(stack: BenchStack) -> None:
    # `silent`: RideNDine accepts every refund (201 with its refund id) and sends no webhook;
    # the benchmark sends the results itself, signed, when it wants them.
    stack.sandbox = SandboxProcess(
        api_key=RIDENDINE_KEY,
        webhook_secret=WEBHOOK_SECRET,
        scenario="silent",
        delay_seconds=0.0,
        log_path=stack.workdir / "sandbox.log",
    )
    stack.sandbox.start()


def bench_directus(workdir: Path, smtp_port: int) -> DirectusServer:
    """The benchmark's own Directus (not started), with the repo's extension: the "refund
    result" Flow mails through its "refund-bridge-mail" operation."""
    extensions_dir = workdir / "directus-extensions"
    link_extension(extensions_dir)
    return DirectusServer(
        data_dir=workdir / "directus",
        smtp_port=smtp_port,
        extensions_dir=extensions_dir,
        # Every request logged by Directus itself: how the benchmark counts them.
        extra_env={"LOG_LEVEL": "info"},
    )


def start_stack(workdir: Path) -> BenchStack:
    """Everything fresh in `workdir` (Directus bootstrapped anew: about 10 to 30 s)."""
    workdir.mkdir(parents=True, exist_ok=True)
    smtp_port = free_port()
    count_file = workdir / "mail.count"
    mailsink = spawn(
        [sys.executable, "-m", "bench.mailsink", str(smtp_port), str(count_file)],
        dict(os.environ),
        workdir / "mailsink.log",
    )
    wait_until(count_file.exists, timeout=30, interval=0.1, what="the SMTP sink")

    def mail_count() -> int:
        try:
            return int(count_file.read_text() or 0)
        except (OSError, ValueError):
            return 0

    directus = bench_directus(workdir, smtp_port)
    sandbox_port = free_port()
    directus.port = free_port()
    stack = BenchStack(
        workdir=workdir,
        directus=directus,
        settings=bench_settings(directus, f"http://127.0.0.1:{sandbox_port}", FLOW_SECRET),
        mail_count=mail_count,
        directus_log=workdir / "directus" / "directus.log",
        owns_directus=True,
        bridge_port=free_port(),
        worker_metrics_port=free_port(),
        mailsink=mailsink,
    )
    try:
        directus.start(timeout=120)
        _start_sandbox(stack)
        assert stack.sandbox is not None
        stack.settings = bench_settings(directus, stack.sandbox.url, FLOW_SECRET)
        _prepare_directus(stack)
        stack.start_bridge()
    except BaseException:
        stack.stop()
        raise
    return stack


def attach_stack(
    workdir: Path, directus: DirectusServer, mail_count: Callable[[], int], flow_secret: str
) -> BenchStack:
    """The bridge, worker and sandbox against an existing Directus (the quick test's session
    Directus, whose Flow secret must stay the one its other tests use)."""
    workdir.mkdir(parents=True, exist_ok=True)
    stack = BenchStack(
        workdir=workdir,
        directus=directus,
        settings=bench_settings(directus, "http://127.0.0.1:9", flow_secret),
        mail_count=mail_count,
        directus_log=None,
        bridge_port=free_port(),
        worker_metrics_port=free_port(),
    )
    try:
        _start_sandbox(stack)
        assert stack.sandbox is not None
        stack.settings = bench_settings(directus, stack.sandbox.url, flow_secret)
        _prepare_directus(stack)
        stack.start_bridge()
    except BaseException:
        stack.stop()
        raise
    return stack
