"""How the floor scenario (bench/floor.py) makes one run of a server's rounds."""

from __future__ import annotations

from typing import Any

from bench.floor import combine_runs


def _round(requests: int, seconds: float, p50: float, p99: float, cpu: float) -> dict[str, Any]:
    return {
        "requests": requests,
        "seconds": seconds,
        "per_second": round(requests / seconds, 1),
        "latency_ms": {"p50": p50, "p90": p50 * 2, "p99": p99, "max": p99 * 2},
        "cpu_ms_per_request": cpu,
        "recorded": requests,
        "errors": {"not_200": 0, "duplicates": 1},
    }


def test_rounds_add_up_and_the_worst_p99_stands() -> None:
    run = combine_runs([_round(3000, 7.5, 4.0, 20.0, 0.5), _round(1000, 7.5, 8.0, 60.0, 1.0)])
    assert run["requests"] == 4000 and run["seconds"] == 15.0
    assert run["per_second"] == 266.7  # all requests over all the time, not a mean of rates
    assert run["latency_ms"]["p50"] == 5.0  # weighted by requests
    assert run["latency_ms"]["p99"] == 60.0 and run["latency_ms"]["max"] == 120.0
    assert run["cpu_ms_per_request"] == 0.625
    assert run["recorded"] == 4000
    assert run["errors"] == {"not_200": 0, "duplicates": 2} and run["error_count"] == 2
    assert [part["per_second"] for part in run["rounds"]] == [400.0, 133.3]
