"""Scenario "floor" (docs/performance.md): the bridge's webhook ingest against the floor of what
Python does on this machine, one after the other in the same run, with the same load generator
and the same pre-signed deliveries.

1. The floor app (bench/floor_app.py: Flask, the Standard Webhooks check, `json.loads`, one
   SQLite WAL INSERT) under gunicorn, 2 workers x 4 gthread threads.
2. The bridge (`refund-bridge serve --workers 2 --threads 4`) on a fresh SQLite store.
3. The bridge on a PostgreSQL store (a throwaway cluster, devstack/postgres.py).

Directus is unreachable for the bridge (a closed port) and no worker runs: only the webhook's
answer counts, which is what the contract makes the partner wait for. Every delivery is a
distinct, freshly signed REFUNDED result of an unknown order. The load generator is wrk
(Debian's package) with bench/wrk_deliveries.lua, which sends the deliveries of a file, each
once, over `concurrency` keep-alive connections for at most `seconds`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests
from sqlalchemy import func, select
from standardwebhooks.webhooks import Webhook

from bench.stack import (
    API_TOKEN,
    RIDENDINE_KEY,
    WEB_THREADS,
    WEB_WORKERS,
    WEBHOOK_SECRET,
    children,
    cpu_seconds,
)
from bridge.store.db import Store
from bridge.store.models import InboxEvent
from devstack.directus import REPO
from devstack.net import free_port, wait_until
from devstack.postgres import PostgresCluster

WRK = "/usr/bin/wrk"
WRK_SCRIPT = Path(__file__).resolve().parent / "wrk_deliveries.lua"
WRK_THREADS = 2
# Deliveries made per second of a run: above anything measured here (the floor reached about
# 3,700 a second), so a run never runs out (it would say so: `exhausted`).
DELIVERIES_PER_SECOND = 6000
# Signatures are accepted for 5 minutes: deliveries older than this are signed again.
MAX_DELIVERY_AGE = 200.0
# Each server is measured in this many rounds of an equal share of the time, in alternating
# order (`Floor.run`).
FLOOR_ROUNDS = 2
STOP_TIMEOUT = 20.0


def make_deliveries(path: Path, count: int, *, secret: str, label: str) -> None:
    """`count` distinct signed deliveries, one a line: webhook-id TAB timestamp TAB signature
    TAB body (what wrk_deliveries.lua reads)."""
    webhook = Webhook(secret)
    now = datetime.now(UTC)
    stamp = str(int(now.timestamp()))
    run = uuid.uuid4().hex[:8]
    with open(path, "w", encoding="utf-8") as out:
        for index in range(count):
            body = json.dumps(
                {
                    "refund_id": f"re_floor_{run}_{label}_{index:07d}",
                    "external_order_id": f"floor-{run}-{label}-{index:07d}",
                    "amount_cents": 5000,
                    "status": "REFUNDED",
                    "currency_code": "EUR",
                },
                separators=(",", ":"),
            )
            webhook_id = f"msg_{run}_{label}_{index:07d}"
            out.write(f"{webhook_id}\t{stamp}\t{webhook.sign(webhook_id, now, body)}\t{body}\n")


def run_wrk(url: str, deliveries: Path, *, seconds: float, connections: int) -> dict[str, Any]:
    """One wrk run; its figures (requests per second, latency percentiles in ms, errors)."""
    threads = min(WRK_THREADS, connections)
    command = [
        WRK,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(WRK_SCRIPT),
        url,
        "--",
        str(deliveries),
        str(threads),
    ]
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    raw = json.loads(lines[-1])
    duration = raw["duration_us"] / 1e6
    errors = {
        "not_200": raw["not_200"],
        "duplicates": raw["duplicates"],
        "ran_out_of_deliveries": raw["exhausted"],
        "socket_errors": raw["connect_errors"]
        + raw["read_errors"]
        + raw["write_errors"]
        + raw["timeouts"],
    }
    return {
        "requests": raw["requests"],
        "seconds": round(duration, 3),
        "per_second": round(raw["requests"] / duration, 1) if duration else 0.0,
        "latency_ms": {
            "p50": round(raw["p50_us"] / 1000, 2),
            "p90": round(raw["p90_us"] / 1000, 2),
            "p99": round(raw["p99_us"] / 1000, 2),
            "max": round(raw["max_us"] / 1000, 2),
        },
        "errors": errors,
        # (percentile, ms) from 1 to 99.9, and the maximum as the 100th: for merged_percentile.
        "latency_cdf_ms": [[q, round(us / 1000, 3)] for q, us in raw["cdf_us"]]
        + [[100, round(raw["max_us"] / 1000, 3)]],
    }


def merged_percentile(rounds: list[dict[str, Any]], q: float) -> float:
    """The q-th percentile (ms) of all the rounds' requests together: their latency
    distributions (`latency_cdf_ms`, linear between the points) weighted by their requests."""
    total = sum(run["requests"] for run in rounds)
    if not total:
        return 0.0

    def below(table: list[list[float]], ms: float) -> float:
        """The share (0 to 100) of a round's requests answered within `ms`."""
        previous_q, previous_ms = 0.0, 0.0
        for point_q, point_ms in table:
            if ms < point_ms:
                span = point_ms - previous_ms
                return previous_q + (point_q - previous_q) * (ms - previous_ms) / span
            previous_q, previous_ms = point_q, point_ms
        return 100.0

    def share(ms: float) -> float:
        return sum(below(run["latency_cdf_ms"], ms) * run["requests"] for run in rounds) / total

    low, high = 0.0, max(run["latency_cdf_ms"][-1][1] for run in rounds)
    for _ in range(60):
        middle = (low + high) / 2
        if share(middle) >= q:
            high = middle
        else:
            low = middle
    return round(high, 2)


def combine_runs(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One server's rounds (`Floor._measure`) as one run: requests, time, errors and CPU
    summed, the latency percentiles those of all the rounds' requests together."""
    requests = sum(run["requests"] for run in rounds)
    seconds = sum(run["seconds"] for run in rounds)

    errors: dict[str, int] = {}
    for run in rounds:
        for key, value in run["errors"].items():
            errors[key] = errors.get(key, 0) + value
    cpu = [(run["cpu_ms_per_request"] or 0.0) * run["requests"] for run in rounds]
    return {
        "requests": requests,
        "seconds": round(seconds, 3),
        "per_second": round(requests / seconds, 1) if seconds else 0.0,
        "latency_ms": {
            "p50": merged_percentile(rounds, 50),
            "p90": merged_percentile(rounds, 90),
            "p99": merged_percentile(rounds, 99),
            "max": max(run["latency_ms"]["max"] for run in rounds),
        },
        "cpu_ms_per_request": round(sum(cpu) / requests, 3) if requests else None,
        "recorded": sum(run["recorded"] for run in rounds),
        "errors": errors,
        "error_count": sum(errors.values()),
        "rounds": [
            {"per_second": run["per_second"], "p99_ms": run["latency_ms"]["p99"]} for run in rounds
        ],
    }


def _spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def _wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited; see {log}")
        try:
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_until(ready, timeout=90, interval=0.2, what=f"{url}/healthz")


class Floor:
    """Runs the three servers one after the other in `workdir` and measures each with wrk."""

    def __init__(
        self,
        workdir: Path,
        *,
        seconds: float,
        warmup_seconds: float,
        concurrency: int,
        postgres: bool = True,
        profile_dir: Path | None = None,
        say: Callable[[str], None] = lambda _text: None,
    ) -> None:
        self.workdir = workdir
        self.seconds = seconds
        self.warmup_seconds = warmup_seconds
        self.concurrency = concurrency
        self.postgres = postgres
        self.profile_dir = profile_dir
        self.say = say
        self.deliveries = workdir / "deliveries.tsv"
        self.signed_at = 0.0

    # -- the deliveries --------------------------------------------------------------------

    def _sign(self) -> None:
        count = int(DELIVERIES_PER_SECOND * self.seconds)
        make_deliveries(self.deliveries, count, secret=WEBHOOK_SECRET, label="m")
        self.signed_at = time.monotonic()

    def _fresh(self) -> None:
        """The same deliveries for every server, signed again only when they would be too old
        for the signature's 5 minutes (a slow start)."""
        if time.monotonic() - self.signed_at > MAX_DELIVERY_AGE:
            self._sign()

    # -- the servers -----------------------------------------------------------------------

    def _floor_server(self, port: int) -> tuple[subprocess.Popen[bytes], Path]:
        database = self.workdir / "floor.sqlite3"
        with sqlite3.connect(database) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            from bench.floor_app import SCHEMA

            connection.execute(SCHEMA)
        connection.close()
        env = {
            **os.environ,
            "FLOOR_WEBHOOK_SECRET": WEBHOOK_SECRET,
            "FLOOR_DATABASE": str(database),
        }
        log = self.workdir / "floor.log"
        command = [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "gthread",
            "-w",
            str(WEB_WORKERS),
            "--threads",
            str(WEB_THREADS),
            "-b",
            f"127.0.0.1:{port}",
            "--log-level",
            "warning",
            "bench.floor_app:app",
        ]
        return _spawn(command, env, log), log

    def _bridge_server(self, port: int, database_url: str) -> tuple[subprocess.Popen[bytes], Path]:
        inherited = {
            name: value
            for name, value in os.environ.items()
            if not name.startswith(("BRIDGE_", "PROMETHEUS_"))
        }
        env = {
            **inherited,
            # Nothing listens there: only the bridge's own work counts.
            "BRIDGE_DIRECTUS_URL": f"http://127.0.0.1:{free_port()}",
            "BRIDGE_DIRECTUS_TOKEN": "floor-unreachable-directus-token",
            "BRIDGE_RIDENDINE_API_URL": f"http://127.0.0.1:{free_port()}",
            "BRIDGE_RIDENDINE_API_KEY": RIDENDINE_KEY,
            "BRIDGE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
            "BRIDGE_API_TOKENS": API_TOKEN,
            "BRIDGE_DATABASE_URL": database_url,
            "BRIDGE_PUBLIC_URL": f"http://127.0.0.1:{port}",
            "BRIDGE_LOG_LEVEL": "INFO",
        }
        name = "bridge-postgresql" if database_url.startswith("postgresql") else "bridge-sqlite"
        log = self.workdir / f"{name}.log"
        command = [
            sys.executable,
            "-m",
            "bridge.cli",
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            str(WEB_WORKERS),
            "--threads",
            str(WEB_THREADS),
        ]
        return _spawn(command, env, log), log

    # -- one measured run --------------------------------------------------------------------

    def _measure(
        self,
        name: str,
        start: Callable[[int], tuple[subprocess.Popen[bytes], Path]],
        recorded: Callable[[], int],
        seconds: float,
    ) -> dict[str, Any]:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process, log = start(port)
        profilers: list[subprocess.Popen[bytes]] = []
        try:
            _wait_healthy(url, process, log)
            warmup = self.workdir / f"warmup-{name}.tsv"
            make_deliveries(
                warmup,
                max(200, int(500 * self.warmup_seconds)),
                secret=WEBHOOK_SECRET,
                label=f"w{name}",
            )
            run_wrk(url, warmup, seconds=self.warmup_seconds, connections=self.concurrency)
            warmed = recorded()
            self._fresh()
            profilers = self._profile(name, process.pid, seconds)
            self.say(f"bench: floor: {name} for {seconds:g}s")
            pids = [process.pid, *children(process.pid)]
            cpu_before = cpu_seconds(pids)
            result = run_wrk(url, self.deliveries, seconds=seconds, connections=self.concurrency)
            cpu = cpu_seconds(pids) - cpu_before
            # CPU of the server's processes per answer: a figure the machine's noise moves
            # far less than requests per second.
            result["cpu_ms_per_request"] = (
                round(cpu * 1000 / result["requests"], 3) if result["requests"] else None
            )
            time.sleep(0.2)
            stored = recorded() - warmed
        finally:
            for profiler in profilers:
                with suppress(subprocess.TimeoutExpired):
                    profiler.wait(timeout=seconds + 30)
            _stop(process)
        accepted = result["requests"] - result["errors"]["not_200"] - result["errors"]["duplicates"]
        # Every delivery answered 200 "accepted" must be in the store (recorded before 200).
        result["recorded"] = stored
        result["errors"]["accepted_not_recorded"] = max(0, accepted - stored)
        result["error_count"] = sum(result["errors"].values())
        return result

    def _profile(self, name: str, master: int, seconds: float) -> list[subprocess.Popen[bytes]]:
        """py-spy on each web worker during the measured run (`--profile DIR`)."""
        if self.profile_dir is None:
            return []
        spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        self.profile_dir.mkdir(parents=True, exist_ok=True)
        started = []
        for pid in children(master):
            out = self.profile_dir / f"{name}-{pid}.txt"
            command = [
                spy,
                "record",
                "-p",
                str(pid),
                "-d",
                str(max(1, round(seconds))),
                "-r",
                "100",
                "-f",
                "raw",
                "--nonblocking",
                "-o",
                str(out),
            ]
            with open(self.profile_dir / f"{name}-{pid}.log", "ab") as log:
                started.append(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT))
        return started

    # -- the scenario ----------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        if not Path(WRK).exists():
            raise RuntimeError(f"{WRK} is missing: run scripts/ensure-wrk.sh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._sign()

        def floor_count() -> int:
            with sqlite3.connect(self.workdir / "floor.sqlite3", timeout=30) as connection:
                (count,) = connection.execute("SELECT count(*) FROM events").fetchone()
            connection.close()
            return int(count)

        sqlite_url = f"sqlite:///{self.workdir / 'bridge.sqlite3'}"
        servers: list[tuple[str, Callable[[int], Any], Callable[[], int]]] = [
            ("floor", self._floor_server, floor_count),
            (
                "bridge_sqlite",
                lambda port: self._bridge_server(port, sqlite_url),
                lambda: _inbox_count(sqlite_url),
            ),
        ]
        cluster = None
        if self.postgres:
            cluster = PostgresCluster(Path(f"/tmp/refund-bridge-floor-pg-{uuid.uuid4().hex[:8]}"))
            cluster.start()
            pg_url = cluster.url()
            servers.append(
                (
                    "bridge_postgresql",
                    lambda port: self._bridge_server(port, pg_url),
                    lambda: _inbox_count(pg_url),
                )
            )
        # Rounds of an equal share of the time, every other one in the reverse order (floor,
        # SQLite, PostgreSQL, PostgreSQL, SQLite, floor): the machine's speed drifts within
        # minutes, and this way a drift costs the floor and the bridge alike
        # (docs/performance.md).
        parts: dict[str, list[dict[str, Any]]] = {name: [] for name, _start, _count in servers}
        try:
            for index in range(FLOOR_ROUNDS):
                order = servers if index % 2 == 0 else servers[::-1]
                if index:
                    self._sign()  # deliveries that no server has seen
                for name, start, count in order:
                    parts[name].append(
                        self._measure(
                            name.replace("_", "-"), start, count, self.seconds / FLOOR_ROUNDS
                        )
                    )
        finally:
            if cluster is not None:
                cluster.stop()
        runs = {name: combine_runs(results) for name, results in parts.items()}
        floor_rate = runs["floor"]["per_second"]
        ratios = {
            name: round(run["per_second"] / floor_rate, 3) if floor_rate else None
            for name, run in runs.items()
            if name != "floor"
        }
        return {
            "seconds": self.seconds,
            "rounds": FLOOR_ROUNDS,
            "concurrency": self.concurrency,
            "load_generator": f"wrk {WRK_THREADS} threads, {self.concurrency} connections, "
            "bench/wrk_deliveries.lua",
            "runs": runs,
            "ratio_to_floor": ratios,
            "error_count": sum(run["error_count"] for run in runs.values()),
        }


def _inbox_count(url: str) -> int:
    store = Store(url)
    try:
        with store.session() as session:
            return int(session.scalar(select(func.count()).select_from(InboxEvent)) or 0)
    finally:
        store.dispose()
