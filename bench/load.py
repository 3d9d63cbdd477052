"""A closed-loop load generator: `concurrency` threads, each sending the next request as soon as
its previous one was answered, until the list is done. Every request is timed from just before
it is sent to the end of its answer."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass
class LoadResult:
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.latencies)

    def rate(self) -> float:
        return self.count / self.seconds if self.seconds else 0.0

    def percentiles_ms(self) -> dict[str, float]:
        return {name: round(percentile(self.latencies, q) * 1000, 2) for name, q in PERCENTILES}

    def add(self, other: LoadResult) -> None:
        """Count another run's requests and time in this one (runs made one after another)."""
        self.seconds += other.seconds
        self.latencies.extend(other.latencies)
        self.errors.extend(other.errors)
        for status, count in other.statuses.items():
            self.statuses[status] = self.statuses.get(status, 0) + count


PERCENTILES = (("p50", 50.0), ("p95", 95.0), ("p99", 99.0))


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile by linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def split(items: Sequence[T], parts: int) -> list[Sequence[T]]:
    """`items` cut into at most `parts` consecutive, non-empty parts of sizes that differ by
    at most one."""
    size, extra = divmod(len(items), parts)
    cut, start = [], 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        if end > start:
            cut.append(items[start:end])
        start = end
    return cut


def run(
    items: Sequence[T],
    send: Callable[[Any, T], int],
    *,
    concurrency: int,
    make_client: Callable[[], Any],
    ok: Callable[[int], bool] = lambda status: 200 <= status < 300,
) -> LoadResult:
    """Send every item with `send(client, item) -> HTTP status` from `concurrency` threads
    (each with its own client from `make_client`); exceptions are errors, never raised."""
    result = LoadResult()
    lock = threading.Lock()
    next_index = itertools.count()

    def worker() -> None:
        client = make_client()
        latencies: list[float] = []
        statuses: dict[int, int] = {}
        errors: list[str] = []
        try:
            while True:
                index = next(next_index)
                if index >= len(items):
                    break
                started = time.perf_counter()
                try:
                    status = send(client, items[index])
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    continue
                latencies.append(time.perf_counter() - started)
                statuses[status] = statuses.get(status, 0) + 1
                if not ok(status):
                    errors.append(f"HTTP {status}")
        finally:
            close = getattr(client, "close", None)
            if close is not None:
                close()
            with lock:
                result.latencies.extend(latencies)
                result.errors.extend(errors)
                for status, count in statuses.items():
                    result.statuses[status] = result.statuses.get(status, 0) + count

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        # Joined in short waits: a Ctrl-C reaches the main thread (and the stack is stopped).
        while thread.is_alive():
            thread.join(0.5)
    result.seconds = time.perf_counter() - started
    return result
