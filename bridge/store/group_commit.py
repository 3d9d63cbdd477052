"""Group commit, leader and followers: writes that arrive together share one transaction.

A caller that finds nobody writing becomes the leader: it writes its own item at once, on its
own thread, with whatever queued behind it meanwhile (up to `max_group`). Callers arriving while
a group is being written queue and wait; when the leader is done it hands each its outcome and
hands the lead to the first one still queued, which writes the next group. There is no writer
thread: an uncontended write costs no thread switch, and under load one transaction (one write
lock, one COMMIT) serves a group. Nothing is answered before its group has committed
(docs/performance.md, docs/webhooks.md).
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

# What became of a queued item (`_Pending.state`, changed only under the writer's mutex).
_QUEUED = "queued"  # waiting behind a group
_GROUPED = "grouped"  # taken into a group being written
_LEADING = "leading"  # handed the lead: it writes the next group
_DONE = "done"  # its outcome is in


class _Pending(Generic[T, R]):
    __slots__ = ("done", "error", "item", "result", "state")

    def __init__(self, item: T) -> None:
        self.item = item
        # Held until the item is done or handed the lead: the leader releases it, the caller
        # waits to acquire it (a plain lock: an Event's condition costs more on both sides).
        self.done = threading.Lock()
        self.done.acquire()
        self.state = _QUEUED
        self.result: R | None = None
        self.error: BaseException | None = None


class WriterTimeout(Exception):
    """The item waited too long to be taken into a group; it was withdrawn, never written."""


class GroupWriter(Generic[T, R]):
    """`write(items)` returns one outcome per item: a result, or the exception to raise."""

    def __init__(
        self,
        write: Callable[[list[T]], list[R | BaseException]],
        *,
        max_group: int = 64,
        name: str = "group-writer",
        after: Callable[[], None] | None = None,
    ) -> None:
        self._write = write
        # Run by a leader once its group has its outcomes and the lead is handed on: work
        # that only the leader's own caller waits for (the store's WAL checkpoint).
        self._after = after
        self._max_group = max_group
        self._name = name
        self._mutex = threading.Lock()
        self._queued: deque[_Pending[T, R]] = deque()
        self._leading = False

    def submit(self, item: T, *, timeout: float) -> R:
        """Write `item` with the next group; its result, or its exception raised here.

        WriterTimeout when no group took it within `timeout` (the write lock held elsewhere
        all that time): it is then withdrawn, so the caller knows it was not written."""
        pending: _Pending[T, R] = _Pending(item)
        with self._mutex:
            if self._leading:
                self._queued.append(pending)
            else:
                self._leading = True
                pending.state = _LEADING
        if pending.state != _LEADING and not pending.done.acquire(timeout=timeout):
            with self._mutex:
                if pending.state == _QUEUED:
                    self._queued.remove(pending)
                    raise WriterTimeout(f"{self._name}: not written after {timeout:.0f} s")
            # Taken into a group (its write is bounded by the store's own timeout) or handed
            # the lead just now (already released): wait for which.
            pending.done.acquire()
        if pending.state == _LEADING:
            self._lead(pending)
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def queued(self) -> int:
        """Callers waiting behind the group being written (for tests and metrics)."""
        with self._mutex:
            return len(self._queued)

    def _lead(self, own: _Pending[T, R]) -> None:
        """Write `own` and what queued behind it, then hand the lead on (or give it up)."""
        group = [own]
        with self._mutex:
            while self._queued and len(group) < self._max_group:
                follower = self._queued.popleft()
                follower.state = _GROUPED
                group.append(follower)
        try:
            self._write_group(group)
        finally:
            with self._mutex:
                successor = self._queued.popleft() if self._queued else None
                if successor is None:
                    self._leading = False
                else:
                    successor.state = _LEADING
            if successor is not None:
                successor.done.release()
        if self._after is not None:
            try:
                self._after()
            except Exception:  # its own caller's write is done: never failed by this
                log.exception("%s: the work after a group failed", self._name)

    def _write_group(self, group: list[_Pending[T, R]]) -> None:
        try:
            outcomes = self._write([pending.item for pending in group])
            if len(outcomes) != len(group):
                raise RuntimeError(f"{self._name}: {len(outcomes)} outcomes for {len(group)}")
        except BaseException as exc:  # every follower gets an outcome, whatever happened
            log.exception("%s: a group of %d failed", self._name, len(group))
            outcomes = [exc] * len(group)
        with self._mutex:
            for pending, outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, BaseException):
                    pending.error = outcome
                else:
                    pending.result = outcome
                pending.state = _DONE
        for pending in group[1:]:
            pending.done.release()
