"""Housekeeping: finished rows past the retention period (`BRIDGE_RETENTION_DAYS`) are deleted.

Deleted: outbox jobs that are `done` or `dead` and finished before the cutoff, webhook
events that were `applied` before it, and callers' `Idempotency-Key` records made before it (a
key is a promise for a retry window, not for ever; Stripe keeps them a day). Never deleted,
however old: a pending job, an inbox event that is `received`, `unmatched` or `failed` (it still
needs work or a person), and the ledger itself (refunds and their history are the financial
record and are kept for good).

Rows go in small batches, one short transaction each, so the web instances' writes (on SQLite:
the single writer) are never held up for long. The worker runs this daily;
`refund-bridge housekeeping` runs it by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import delete, func, select

from bridge.store.models import (
    IdempotencyRecord,
    InboxEvent,
    InboxState,
    OutboxJob,
    OutboxState,
    utcnow,
)

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

DELETE_BATCH = 500


@dataclass
class HousekeepingReport:
    cutoff: datetime
    outbox_jobs: int = 0
    inbox_events: int = 0
    idempotency_keys: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff.isoformat(),
            "outbox_jobs": self.outbox_jobs,
            "inbox_events": self.inbox_events,
            "idempotency_keys": self.idempotency_keys,
            "dry_run": self.dry_run,
        }


def _finished_jobs(cutoff: datetime) -> Any:
    return OutboxJob.state.in_((OutboxState.DONE, OutboxState.DEAD)) & (
        func.coalesce(OutboxJob.done_at, OutboxJob.updated_at) < cutoff
    )


def _applied_events(cutoff: datetime) -> Any:
    return (InboxEvent.state == InboxState.APPLIED) & (
        func.coalesce(InboxEvent.processed_at, InboxEvent.received_at) < cutoff
    )


def run(
    services: Services,
    *,
    retention_days: int | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
    should_stop: Callable[[], bool] | None = None,
) -> HousekeepingReport:
    """Delete (or, with `dry_run`, count) the rows past retention; return what was done."""
    days = retention_days if retention_days is not None else services.settings.retention_days
    cutoff = (now or utcnow()) - timedelta(days=days)
    report = HousekeepingReport(cutoff=cutoff, dry_run=dry_run)
    targets: list[tuple[Any, Any, str]] = [
        (OutboxJob, _finished_jobs(cutoff), "outbox_jobs"),
        (InboxEvent, _applied_events(cutoff), "inbox_events"),
    ]
    for model, condition, name in targets:
        if dry_run:
            with services.store.session() as session:
                count = session.scalar(select(func.count()).select_from(model).where(condition))
            setattr(report, name, int(count or 0))
            continue
        total = 0
        while not (should_stop and should_stop()):
            with services.store.session() as session:
                ids = list(session.scalars(select(model.id).where(condition).limit(DELETE_BATCH)))
                if ids:
                    session.execute(delete(model).where(model.id.in_(ids)))
            total += len(ids)
            if len(ids) < DELETE_BATCH:
                break
        setattr(report, name, total)
    # Keys have a composite primary key and small rows: one statement is short enough.
    old_keys = IdempotencyRecord.created_at < cutoff
    with services.store.session() as session:
        if dry_run:
            count = session.scalar(
                select(func.count()).select_from(IdempotencyRecord).where(old_keys)
            )
            report.idempotency_keys = int(count or 0)
        else:
            result = session.execute(delete(IdempotencyRecord).where(old_keys))
            report.idempotency_keys = int(result.rowcount or 0)  # type: ignore[attr-defined]
    if not dry_run and (report.outbox_jobs or report.inbox_events or report.idempotency_keys):
        log.info(
            "housekeeping deleted %d outbox job(s), %d webhook event(s) and %d idempotency "
            "key(s) older than %s",
            report.outbox_jobs,
            report.inbox_events,
            report.idempotency_keys,
            cutoff.isoformat(),
        )
    return report
