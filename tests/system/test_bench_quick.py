"""The benchmark's quick mode, so that its code cannot rot (the full run is only `make bench`).

Runs every scenario with small N on the session's Directus (the floor scenario with its own
servers, 1 s runs of wrk, and a throwaway PostgreSQL cluster) (with its SMTP sink and the tests'
Flow secret), with the bridge under gunicorn, the worker and the sandbox as real processes. The
figures of so small a run mean little; what is checked is that every scenario ran through with
no error (every answer right, every order updated, every e-mail sent once, nothing left in the
outbox), that requests to Directus were counted, and that the table and the JSON come out.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import report
from bench.__main__ import Options, run, write_results
from bench.stack import attach_stack
from devstack.directus import DirectusServer
from devstack.smtp import SmtpSink
from tests.support.helpers import FLOW_SECRET

pytestmark = pytest.mark.slow


def test_the_quick_benchmark_runs_every_scenario_without_errors(
    cooco_directus: DirectusServer, smtp_sink: SmtpSink, tmp_path: Path
) -> None:
    stack = attach_stack(
        tmp_path / "stack", cooco_directus, lambda: len(smtp_sink.messages), FLOW_SECRET
    )
    try:
        results = run(
            stack, Options(n=16, backlog=24, raw=16, growth=(8, 24), quick=True), say=lambda _: None
        )
    finally:
        stack.stop()
    assert cooco_directus.is_running()

    for name in ("ingest", "baseline", "requests", "chain", "backlog", "growth"):
        assert results[name]["error_count"] == 0, (name, results[name]["errors"])
    # The floor: the floor app, then the bridge on SQLite and on PostgreSQL, each measured
    # by wrk with distinct deliveries, every accepted one recorded.
    floor = results["floor"]
    assert floor["error_count"] == 0, floor["runs"]
    assert set(floor["runs"]) == {"floor", "bridge_sqlite", "bridge_postgresql"}
    for run_ in floor["runs"].values():
        assert run_["requests"] > 0 and run_["recorded"] >= run_["requests"] - 16
        assert run_["errors"]["ran_out_of_deliveries"] == 0
        assert run_["latency_ms"]["p99"] >= run_["latency_ms"]["p50"] > 0
        assert len(run_["rounds"]) == 2  # floor, SQLite, PostgreSQL, then back
    assert set(floor["ratio_to_floor"]) == {"bridge_sqlite", "bridge_postgresql"}
    ingest = results["ingest"]
    assert ingest["answers"]["statuses"] == {"200": 16}
    assert ingest["mails"] == 3 * 16
    # Counted by the bridge's metrics here (the session Directus does not log requests): the
    # three writes of each result, at most one read of its order, and not more.
    assert 1.0 <= ingest["directus_requests"]["per_event"] <= 4.0
    assert results["requests"]["statuses"] == {"202": 16}
    assert results["requests"]["rounds"] == 4  # each side's 16 in 4 alternating rounds
    # Who was busy during each side of the refund requests' ratio (CPU from /proc).
    through, direct = results["requests"], results["requests"]["baseline"]
    assert through["cpu_ms_per_request"]["bridge_web"] > 0
    assert through["cpu_ms_per_request"]["directus"] > 0
    assert direct["cpu_ms_per_request"]["directus"] > 0
    assert direct["cpu_ms_per_request"]["bridge_web"] < through["cpu_ms_per_request"]["bridge_web"]
    assert through["directus_busy"] > 0 and direct["directus_busy"] > 0
    # The chain without the bridge: as it is, then with the CPU the bridge spent per refund in
    # scenario 3 burnt beside it (each run's 16 refunds against 16 direct ones).
    chain = results["chain"]
    burnt = through["cpu_ms_per_request"]["bridge_web"]
    assert [run_["burn_ms_per_refund"] for run_ in chain["runs"].values()] == [0.0, burnt]
    for run_ in chain["runs"].values():
        assert run_["ratio_to_baseline"] > 0 and run_["errors"] == 0
        assert run_["ridendine_calls"] == 16  # RideNDine asked once per chained refund
        assert run_["burnt_ms_per_refund"] >= 0.99 * run_["burn_ms_per_refund"]
        assert run_["directus_busy"] > 0 and run_["direct_directus_busy"] > 0
    assert results["backlog"]["accepted"]["statuses"] == {"200": 24}
    assert results["backlog"]["drain_events_per_second"] > 0
    assert results["backlog"]["raw"]["events_per_second"] > 0
    assert set(results["growth"]["seconds_per_event_ms"]) == {"8", "24"}
    memory = results["growth"]["memory"]
    assert len(memory["web_processes"]) == 3  # gunicorn's master and its 2 workers
    assert memory["worker_process"]["peak_mib"] > 0

    names = [target["name"] for target in results["targets"]]
    assert len(names) == 13 and names[0] == "errors"
    assert "ingest / floor, requests per second, SQLite" in names
    assert results["targets"][0]["pass"] is True
    checked = [
        report.Target(t["name"], t["limit"], t["value"], t["pass"]) for t in results["targets"]
    ]
    table = report.table(results, checked)
    assert "0. ingest against the floor" in table and "1. webhook ingest" in table
    assert "5. growth" in table and "PASS  errors" in table
    assert "Directus busy share, through the bridge" in table
    assert "3b. the refund chain without the bridge" in table
    assert f"chain / direct, {burnt:g} ms of CPU burnt per refund" in table
    path = write_results(results, tmp_path / "results")
    assert json.loads(path.read_text())["ingest"]["n"] == 16
