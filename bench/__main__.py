"""`python -m bench` (what `make bench` runs): the whole benchmark in one go.

    python -m bench                 # N=2000, backlog 10000, growth 1000/4000/16000
    python -m bench --quick         # small N: proves the code works, figures mean little
    python -m bench --n 500 --scenarios ingest,baseline
    python -m bench --scenarios floor --profile /tmp/prof   # the bridge's ingest vs the floor

Prints a table with each target's PASS/FAIL and writes bench/results/<timestamp>.json.
Exit code 0 when the run completed (a missed target is a finding, not a crash); 1 when the
stack could not be run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report
from bench.floor import Floor
from bench.scenarios import CHAIN_BURN_MS, Bench
from bench.stack import WEB_THREADS, WEB_WORKERS, BenchStack, start_stack

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCENARIOS = ("floor", "ingest", "baseline", "requests", "chain", "backlog", "growth")
# Scenarios that need Directus and the bench stack (the floor runs servers of its own).
STACK_SCENARIOS = SCENARIOS[1:]


@dataclass(frozen=True)
class Options:
    n: int = 2000
    concurrency: int = 16
    backlog: int = 10_000
    raw: int = 2000
    growth: tuple[int, ...] = (1000, 4000, 16_000)
    scenarios: tuple[str, ...] = SCENARIOS
    quick: bool = False
    floor_seconds: float = 15.0
    floor_warmup_seconds: float = 3.0
    floor_postgres: bool = True
    profile_dir: Path | None = None
    chain_burn_ms: float | None = None  # None: scenario 3's CPU per refund, else CHAIN_BURN_MS

    @classmethod
    def quick_run(cls) -> Options:
        return cls(
            n=40,
            backlog=60,
            raw=40,
            growth=(20, 80),
            quick=True,
            floor_seconds=1.0,
            floor_warmup_seconds=0.5,
        )


def machine() -> dict[str, Any]:
    load = os.getloadavg()
    return {
        "cpus": os.cpu_count(),
        "shared": "2 cores shared with other work (other sessions' test runs): noisy",
        "load_average_at_start": [round(value, 2) for value in load],
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run(
    stack: BenchStack | None,
    options: Options,
    *,
    say: Any = print,
    partial: Path | None = None,
    workdir: Path | None = None,
) -> dict[str, Any]:
    """Every chosen scenario (on a running stack, except the floor); returns the results with
    their targets. With `partial`, the results so far are written there after each scenario
    (a run cut short keeps what it measured)."""
    bench = Bench(stack, concurrency=options.concurrency) if stack is not None else None
    results: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "options": {
            "n": options.n,
            "concurrency": options.concurrency,
            "backlog": options.backlog,
            "raw": options.raw,
            "growth": list(options.growth),
            "quick": options.quick,
            "floor_seconds": options.floor_seconds,
        },
        "machine": machine(),
        "stack": {
            "web": f"refund-bridge serve --workers {WEB_WORKERS} --threads {WEB_THREADS} "
            "(gunicorn gthread)",
            "worker": "refund-bridge worker (one, SQLite store)",
            "directus": "11.3.5 on SQLite, LOG_LEVEL=info (its request log counts requests)"
            if stack is not None and stack.directus_log
            else "the caller's Directus (requests counted by the bridge's metrics)",
        },
    }
    floor_dir = workdir or (stack.workdir if stack is not None else Path(tempfile.mkdtemp()))
    began = time.monotonic()

    def save(results: dict[str, Any]) -> None:
        if partial is not None:
            partial.parent.mkdir(parents=True, exist_ok=True)
            partial.write_text(json.dumps(results, indent=2) + "\n")

    def save_growth(so_far: dict[str, Any]) -> None:
        save({**results, "growth": so_far})

    def floor() -> dict[str, Any]:
        return Floor(
            floor_dir / "floor",
            seconds=options.floor_seconds,
            warmup_seconds=options.floor_warmup_seconds,
            concurrency=options.concurrency,
            postgres=options.floor_postgres,
            profile_dir=options.profile_dir,
            say=say,
        ).run()

    def chain_burn_ms() -> float:
        if options.chain_burn_ms is not None:
            return options.chain_burn_ms
        measured = (results.get("requests") or {}).get("cpu_ms_per_request", {}).get("bridge_web")
        return float(measured) if measured else CHAIN_BURN_MS

    try:
        steps = (
            ("floor", floor),
            ("ingest", lambda: bench.webhook_ingest(options.n)),
            ("baseline", lambda: bench.baseline(options.n)),
            ("requests", lambda: bench.refund_requests(options.n)),
            ("chain", lambda: bench.refund_chain(options.n, chain_burn_ms())),
            ("backlog", lambda: bench.backlog(options.backlog, options.raw)),
            ("growth", lambda: bench.growth(options.growth, on_step=save_growth)),
        )
        for name, step in steps:
            if name not in options.scenarios:
                continue
            if name in STACK_SCENARIOS and bench is None:
                raise RuntimeError(f"scenario {name} needs the bench stack")
            say(f"bench: {name} ... ({time.monotonic() - began:.0f}s)")
            results[name] = step()
            save(results)
    finally:
        if bench is not None:
            bench.close()
    results["seconds"] = round(time.monotonic() - began, 1)
    checked = report.targets(results)
    results["targets"] = [target.as_dict() for target in checked]
    return results


def write_results(results: dict[str, Any], folder: Path = RESULTS_DIR) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = folder / f"{stamp}{'-quick' if results['options']['quick'] else ''}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


def parse(argv: Sequence[str] | None) -> tuple[Options, argparse.Namespace]:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small N (what the test runs)")
    parser.add_argument("--n", type=int, help="events of scenarios 1 to 3 (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--backlog", type=int, help="webhooks accepted while Directus is down")
    parser.add_argument("--growth", help="comma-separated sizes (default 1000,4000,16000)")
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help=f"any of {','.join(SCENARIOS)}"
    )
    parser.add_argument(
        "--floor-seconds", type=float, help="length of each run of the floor scenario (15)"
    )
    parser.add_argument(
        "--no-floor-postgres", action="store_true", help="floor scenario: skip PostgreSQL"
    )
    parser.add_argument(
        "--profile", type=Path, help="floor scenario: py-spy profiles of the web workers here"
    )
    parser.add_argument(
        "--chain-burn-ms",
        type=float,
        help="chain scenario: CPU burnt per refund (default: the requests scenario's bridge CPU)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where the JSON goes")
    args = parser.parse_args(argv)
    base = Options.quick_run() if args.quick else Options()
    chosen = tuple(name.strip() for name in args.scenarios.split(",") if name.strip())
    unknown = [name for name in chosen if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    options = Options(
        n=args.n or base.n,
        concurrency=args.concurrency,
        backlog=args.backlog or base.backlog,
        raw=min(base.raw, args.backlog or base.backlog),
        growth=tuple(int(v) for v in args.growth.split(",")) if args.growth else base.growth,
        scenarios=chosen,
        quick=args.quick,
        floor_seconds=args.floor_seconds or base.floor_seconds,
        floor_warmup_seconds=base.floor_warmup_seconds,
        floor_postgres=not args.no_floor_postgres,
        profile_dir=args.profile,
        chain_burn_ms=args.chain_burn_ms,
    )
    return options, args


def _interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    options, args = parse(argv)
    # SIGTERM, and SIGINT even when started in the background (where a shell ignores it),
    # stop the run through the clean-up below: every process of the stack is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    workdir = Path(tempfile.mkdtemp(prefix="refund-bridge-bench-"))
    stack: BenchStack | None = None
    if any(name in STACK_SCENARIOS for name in options.scenarios):
        print(f"bench: starting the stack in {workdir} ...", flush=True)
        try:
            stack = start_stack(workdir)
        except (RuntimeError, TimeoutError, OSError) as exc:
            print(f"bench: the stack did not start: {exc}".splitlines()[0], file=sys.stderr)
            return 1
    try:
        partial = args.out / "partial.json"
        results = run(
            stack,
            options,
            say=lambda text: print(text, flush=True),
            partial=partial,
            workdir=workdir,
        )
        partial.unlink(missing_ok=True)
    finally:
        if stack is not None:
            stack.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    path = write_results(results, args.out)
    checked = [
        report.Target(t["name"], t["limit"], t["value"], t["pass"]) for t in results["targets"]
    ]
    print(report.table(results, checked))
    print(f"bench: results in {path} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
