"""Group commit, leader and followers (bridge/store/group_commit.py), with real threads.

Every wait is bounded: a writer that hangs fails the test instead of hanging it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest

from bridge.store.group_commit import GroupWriter, WriterTimeout

WAIT = 10.0


class Recorder:
    """A `write` that records each group and the thread that wrote it; `hold` keeps the next
    group's write waiting until `release`."""

    def __init__(self, outcome: Callable[[str], object] = lambda item: f"wrote {item}") -> None:
        self.groups: list[list[str]] = []
        self.threads: list[str] = []
        self.outcome = outcome
        self.writing = threading.Event()
        self._hold = threading.Event()
        self._hold.set()

    def hold(self) -> None:
        self._hold.clear()

    def release(self) -> None:
        self._hold.set()

    def __call__(self, items: list[str]) -> list[object]:
        self.groups.append(list(items))
        self.threads.append(threading.current_thread().name)
        self.writing.set()
        assert self._hold.wait(WAIT)
        return [self.outcome(item) for item in items]


def submit_in_thread(
    writer: GroupWriter[str, object], item: str, results: dict[str, object], timeout: float = WAIT
) -> threading.Thread:
    def run() -> None:
        try:
            results[item] = writer.submit(item, timeout=timeout)
        except Exception as exc:  # the outcome is what the test checks
            results[item] = exc

    thread = threading.Thread(target=run, name=f"caller-{item}")
    thread.start()
    return thread


def wait_queued(writer: GroupWriter[str, object], count: int) -> None:
    """Until `count` callers wait behind the group being written (bounded)."""
    deadline = time.monotonic() + WAIT
    while writer.queued() < count:
        assert time.monotonic() < deadline, f"{writer.queued()} queued, expected {count}"
        time.sleep(0.005)


def first_then_queued(
    writer: GroupWriter[str, object], write: Recorder, others: list[str]
) -> dict[str, object]:
    """ "first" is written while `others` queue behind it; then its write goes on and every
    caller's outcome is returned."""
    results: dict[str, object] = {}
    write.hold()
    first = submit_in_thread(writer, "first", results)
    assert write.writing.wait(WAIT)
    queued = [submit_in_thread(writer, item, results) for item in others]
    wait_queued(writer, len(others))
    write.release()
    for thread in [first, *queued]:
        thread.join(WAIT)
    return results


def test_a_lone_item_is_written_at_once_by_its_own_caller() -> None:
    write = Recorder()
    writer: GroupWriter[str, object] = GroupWriter(write)
    assert writer.submit("a", timeout=WAIT) == "wrote a"
    assert write.groups == [["a"]]
    assert write.threads == [threading.current_thread().name]  # no writer thread


def test_items_arriving_during_a_write_share_the_next_group_written_by_one_of_them() -> None:
    write = Recorder()
    writer: GroupWriter[str, object] = GroupWriter(write)
    results = first_then_queued(writer, write, [f"f{i}" for i in range(5)])
    assert len(write.groups) == 2
    assert write.groups[0] == ["first"]
    assert sorted(write.groups[1]) == [f"f{i}" for i in range(5)]
    # The lead passed to the first follower queued, which wrote the group on its own thread.
    assert write.threads == ["caller-first", f"caller-{write.groups[1][0]}"]
    assert results == {item: f"wrote {item}" for item in ["first", *(f"f{i}" for i in range(5))]}
    assert writer.queued() == 0


def test_a_group_holds_at_most_max_group_items() -> None:
    write = Recorder()
    writer: GroupWriter[str, object] = GroupWriter(write, max_group=2)
    results = first_then_queued(writer, write, [f"f{i}" for i in range(5)])
    # The first alone; then each new leader takes itself and one follower.
    assert [len(group) for group in write.groups] == [1, 2, 2, 1]
    assert len(results) == 6


def test_a_failed_write_fails_its_whole_group_and_the_next_group_is_written() -> None:
    calls = 0

    def write(items: list[str]) -> list[object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("the store is broken")
        return [f"wrote {item}" for item in items]

    writer: GroupWriter[str, object] = GroupWriter(write)
    with pytest.raises(RuntimeError, match="the store is broken"):
        writer.submit("a", timeout=WAIT)
    assert writer.submit("b", timeout=WAIT) == "wrote b"


def test_an_outcome_that_is_an_exception_is_raised_to_its_caller_only() -> None:
    write = Recorder(
        outcome=lambda item: ValueError(f"no {item}") if item.startswith("bad") else item
    )
    writer: GroupWriter[str, object] = GroupWriter(write)
    results = first_then_queued(writer, write, ["bad-1", "good"])
    assert results["first"] == "first" and results["good"] == "good"
    assert isinstance(results["bad-1"], ValueError)


def test_an_item_not_taken_in_time_is_withdrawn_and_never_written() -> None:
    write = Recorder()
    writer: GroupWriter[str, object] = GroupWriter(write)
    results: dict[str, object] = {}
    write.hold()
    first = submit_in_thread(writer, "first", results)
    assert write.writing.wait(WAIT)
    late = submit_in_thread(writer, "late", results, timeout=0.2)
    late.join(WAIT)
    assert isinstance(results["late"], WriterTimeout)
    assert writer.queued() == 0
    write.release()
    first.join(WAIT)
    assert writer.submit("after", timeout=WAIT) == "wrote after"
    assert write.groups == [["first"], ["after"]]  # "late" was never written


def test_many_callers_at_once_each_get_their_own_outcome_exactly_once() -> None:
    write = Recorder()
    writer: GroupWriter[str, object] = GroupWriter(write, max_group=8)
    results: dict[str, object] = {}
    threads = [submit_in_thread(writer, f"i{i}", results) for i in range(64)]
    for thread in threads:
        thread.join(WAIT)
    assert results == {f"i{i}": f"wrote i{i}" for i in range(64)}
    written = [item for group in write.groups for item in group]
    assert sorted(written) == sorted(results)  # each written once
    assert writer.queued() == 0


def test_the_work_after_a_group_waits_only_for_its_leader() -> None:
    # "second" leads the group ["second", "third"]: "third" has its outcome while "second"
    # still runs `after` (the store's WAL checkpoint), so only the leader's own caller waits
    # for it; and a failure there fails nobody.
    results: dict[str, object] = {}
    after_threads: list[str] = []
    follower_answered_first: list[bool] = []

    def after() -> None:
        after_threads.append(threading.current_thread().name)
        if threading.current_thread().name == "caller-second":
            deadline = time.monotonic() + 2.0
            while "third" not in results and time.monotonic() < deadline:
                time.sleep(0.005)
            follower_answered_first.append("third" in results)
            raise RuntimeError("the checkpoint failed")

    write = Recorder()
    writer: GroupWriter[str, object] = GroupWriter(write, after=after)
    write.hold()
    first = submit_in_thread(writer, "first", results)
    assert write.writing.wait(WAIT)
    queued = [submit_in_thread(writer, item, results) for item in ("second", "third")]
    wait_queued(writer, 2)
    write.release()
    for thread in [first, *queued]:
        thread.join(WAIT)
    assert write.groups == [["first"], ["second", "third"]]
    assert results == {"first": "wrote first", "second": "wrote second", "third": "wrote third"}
    assert sorted(after_threads) == ["caller-first", "caller-second"]
    assert follower_answered_first == [True]
