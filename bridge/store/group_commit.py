"""Group commit: one writer thread per process, fed by a short in-process queue.

Request threads hand their write to the writer and wait for its outcome; the writer takes
whatever is queued (up to `max_group`) and writes it in one transaction. On SQLite this means
one writer per process instead of one per request thread, so the threads no longer queue on the
database's single write lock behind SQLite's sleeping busy handler; on PostgreSQL one
transaction's round trips serve the whole group. Nothing is answered before its group has
committed (docs/performance.md, docs/webhooks.md).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


class _Pending(Generic[T, R]):
    __slots__ = ("done", "error", "item", "result")

    def __init__(self, item: T) -> None:
        self.item = item
        # Held until the outcome is in: the writer releases it, the caller waits to acquire it
        # (a plain lock: an Event's condition costs more on both sides, per delivery).
        self.done = threading.Lock()
        self.done.acquire()
        self.result: R | None = None
        self.error: BaseException | None = None


class WriterTimeout(Exception):
    """The writer did not finish the item in time (its outcome is unknown to the caller)."""


class GroupWriter(Generic[T, R]):
    """`write(items)` returns one outcome per item: a result, or the exception to raise."""

    def __init__(
        self,
        write: Callable[[list[T]], list[R | BaseException]],
        *,
        max_group: int = 64,
        name: str = "group-writer",
    ) -> None:
        self._write = write
        self._max_group = max_group
        self._name = name
        self._queue: queue.SimpleQueue[_Pending[T, R] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def submit(self, item: T, *, timeout: float) -> R:
        """Write `item` with the next group; its result, or its exception raised here."""
        pending: _Pending[T, R] = _Pending(item)
        self._start()
        self._queue.put(pending)
        if not pending.done.acquire(timeout=timeout):
            raise WriterTimeout(f"{self._name}: no outcome after {timeout:.0f} s")
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def _start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._queue.put(None)
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            stopping = False
            while len(group) < self._max_group:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                group.append(more)
            self._write_group(group)
            if stopping:
                return

    def _write_group(self, group: list[_Pending[T, R]]) -> None:
        try:
            outcomes = self._write([pending.item for pending in group])
            if len(outcomes) != len(group):
                raise RuntimeError(f"{self._name}: {len(outcomes)} outcomes for {len(group)}")
        except BaseException as exc:
            log.exception("%s: a group of %d failed", self._name, len(group))
            outcomes = [exc] * len(group)
        for pending, outcome in zip(group, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                pending.error = outcome
            else:
                pending.result = outcome
            pending.done.release()
