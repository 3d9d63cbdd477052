"""How the floor scenario (bench/floor.py) makes one run of a server's rounds."""

from __future__ import annotations

from typing import Any

import pytest

from bench.floor import combine_runs, merged_percentile


def _round(requests: int, seconds: float, slowest_ms: float, cpu: float) -> dict[str, Any]:
    """A round whose latencies spread evenly from 0 to `slowest_ms`."""
    table = [[q, q * slowest_ms / 100] for q in range(1, 101)]
    return {
        "requests": requests,
        "seconds": seconds,
        "per_second": round(requests / seconds, 1),
        "latency_ms": {
            "p50": slowest_ms / 2,
            "p90": slowest_ms * 0.9,
            "p99": slowest_ms * 0.99,
            "max": slowest_ms,
        },
        "latency_cdf_ms": table,
        "cpu_ms_per_request": cpu,
        "recorded": requests,
        "errors": {"not_200": 0, "duplicates": 1},
    }


def test_rounds_add_up_as_one_run() -> None:
    run = combine_runs([_round(3000, 7.5, 10.0, 0.5), _round(1000, 7.5, 100.0, 1.0)])
    assert run["requests"] == 4000 and run["seconds"] == 15.0
    assert run["per_second"] == 266.7  # all requests over all the time, not a mean of rates
    assert run["cpu_ms_per_request"] == 0.625
    assert run["recorded"] == 4000
    assert run["errors"] == {"not_200": 0, "duplicates": 2} and run["error_count"] == 2
    assert [part["per_second"] for part in run["rounds"]] == [400.0, 133.3]
    assert run["latency_ms"]["max"] == 100.0


def test_percentiles_are_those_of_all_the_rounds_requests_together() -> None:
    fast, slow = _round(3000, 7.5, 10.0, 0.5), _round(1000, 7.5, 100.0, 1.0)
    # 99 % of all: the fast round's 3000, and 960 of the slow round's 1000 (up to 96 ms).
    assert merged_percentile([fast, slow], 99) == pytest.approx(96.0, abs=0.01)
    # Half of all (2000): below 10 ms the fast round answers 300 a ms, the slow one 10.
    expected_p50 = 2000 / (300 + 10)  # fast: 300 per ms, slow: 10 per ms below 10 ms
    assert merged_percentile([fast, slow], 50) == pytest.approx(expected_p50, abs=0.01)
    # One round alone, or two alike: its own percentiles.
    assert merged_percentile([slow], 90) == pytest.approx(90.0, abs=0.01)
    assert merged_percentile([fast, fast], 99) == pytest.approx(9.9, abs=0.01)
