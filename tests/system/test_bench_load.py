"""The benchmark's load generator helpers (bench/load.py) that the scenarios' figures rest on."""

from __future__ import annotations

import pytest

from bench import load


@pytest.mark.parametrize(
    ("count", "parts", "sizes"),
    [(10, 4, [3, 3, 2, 2]), (16, 4, [4, 4, 4, 4]), (3, 4, [1, 1, 1]), (0, 4, [])],
)
def test_split_cuts_in_order_into_near_equal_non_empty_parts(
    count: int, parts: int, sizes: list[int]
) -> None:
    items = list(range(count))
    cut = load.split(items, parts)
    assert [len(part) for part in cut] == sizes
    assert [item for part in cut for item in part] == items


def test_a_result_adds_another_runs_requests_and_time() -> None:
    first = load.LoadResult(seconds=2.0, latencies=[0.1, 0.2], statuses={202: 2})
    second = load.LoadResult(
        seconds=1.0, latencies=[0.3], statuses={202: 1, 500: 1}, errors=["HTTP 500"]
    )
    first.add(second)
    assert first.seconds == 3.0 and first.count == 3 and first.rate() == 1.0
    assert first.statuses == {202: 3, 500: 1} and first.errors == ["HTTP 500"]
