"""A test-only outbox job kind for real worker processes, and an idempotent HTTP stand-in.

`python -m tests.support.worker_probe worker ...` is `refund-bridge worker` with the `probe` kind
registered. A probe job records each run in the `probe_runs` table of the store (phase `start`,
then `end`), optionally POSTs to a stand-in partner with the job's key as `Idempotency-Key` (the
outside call), and optionally sleeps (work after the call, where a kill -9 can land).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import requests
from sqlalchemy import Column, DateTime, Engine, Integer, MetaData, String, Table, func, select

from bridge.jobs import outbox
from bridge.services import Services
from bridge.store.models import OutboxJob

PROBE_KIND = "probe"
metadata = MetaData()
probe_runs = Table(
    "probe_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", Integer, nullable=False),
    Column("phase", String(8), nullable=False),
    Column("pid", Integer, nullable=False),
    # When the run reached the phase (UTC, to the microsecond: `_record` sets it).
    Column("at", DateTime, server_default=func.now()),
)


def create_probe_table(engine: Engine) -> None:
    metadata.create_all(engine)


def runs(engine: Engine, phase: str = "start") -> Counter[int]:
    """How many times each job id ran (reached `phase`)."""
    with engine.connect() as connection:
        rows = connection.execute(select(probe_runs.c.job_id).where(probe_runs.c.phase == phase))
        return Counter(row[0] for row in rows)


def runs_by_pid(engine: Engine) -> Counter[int]:
    with engine.connect() as connection:
        rows = connection.execute(select(probe_runs.c.pid).where(probe_runs.c.phase == "start"))
        return Counter(row[0] for row in rows)


def pick_up_seconds(engine: Engine, job_id: int) -> float:
    """From the job's creation (`outbox_jobs.created_at`, set by the enqueuer) to its first
    start in a worker (the probe's `start` row): the worker's pick-up alone, without what the
    test's own enqueueing and polling cost."""
    with engine.connect() as connection:
        created = connection.scalar(select(OutboxJob.created_at).where(OutboxJob.id == job_id))
        started = connection.scalar(
            select(func.min(probe_runs.c.at)).where(
                probe_runs.c.job_id == job_id, probe_runs.c.phase == "start"
            )
        )
    assert created is not None and started is not None, (job_id, created, started)
    return (started - created.astimezone(UTC).replace(tzinfo=None)).total_seconds()


def _record(services: Services, job_id: int, phase: str) -> None:
    at = datetime.now(UTC).replace(tzinfo=None)
    with services.store.session() as session:
        session.execute(
            probe_runs.insert().values(job_id=job_id, phase=phase, pid=os.getpid(), at=at)
        )


@outbox.handler(PROBE_KIND)
def _probe(services: Services, job: OutboxJob) -> None:
    _record(services, job.id, "start")
    call = job.payload.get("call")
    if call:
        try:
            requests.post(
                call,
                json={"job": job.id},
                headers={"Idempotency-Key": job.dedupe_key},
                timeout=5,
            ).raise_for_status()
        except requests.RequestException as exc:
            raise outbox.RetryLater(f"stand-in: {type(exc).__name__}", delay=1) from None
    time.sleep(float(job.payload.get("sleep") or 0))
    _record(services, job.id, "end")


class IdempotentStandIn:
    """A partner on 127.0.0.1 that applies each Idempotency-Key once and answers every repeat
    with the first answer, like RideNDine's /refunds/create."""

    def __init__(self) -> None:
        self.received: Counter[str] = Counter()
        self.applied: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._arrivals = threading.Condition(self._lock)
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                key = self.headers.get("Idempotency-Key") or ""
                with stand_in._lock:
                    stand_in.received[key] += 1
                    if stand_in.received[key] == 1:
                        stand_in.applied[key] += 1  # the effect happens once per key
                    stand_in._arrivals.notify_all()
                body = json.dumps({"refund_id": f"re_{abs(hash(key))}"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/refunds/create"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait_for_requests(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(self.received.values()) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrivals.wait(left)
        return True


if __name__ == "__main__":
    from bridge.cli import run

    run()


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class WorkerProcess:
    """`refund-bridge worker` (with the probe kind) as a child process, its log in a file."""

    def __init__(self, env: dict[str, str], log_path: str, *args: str) -> None:
        import subprocess
        import sys

        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.worker_probe", "worker", *args],
            cwd=REPO,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def wait_started(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if '"worker ' in self.log() and ' started"' in self.log():
                return
            if self.process.poll() is not None:
                raise AssertionError(f"worker exited with {self.process.returncode}: {self.log()}")
            time.sleep(0.05)
        raise AssertionError(f"worker did not start in {timeout} s: {self.log()}")

    def wait(self, timeout: float = 30.0) -> int:
        try:
            return self.process.wait(timeout=timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.wait()

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far (Linux /proc)."""
        with open(f"/proc/{self.pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
