"""The worker's Directus jobs (`apply_order`, `project_refund`, `notify_result`) a claimed batch at
a time: one read of the orders, one batch write per collection, one Flow call per result.

Each job ends as its single handler would have ended it; a batch write that fails for another
reason than Directus being down is done again job by job, so one bad item never holds up the
others. docs/performance.md tells why and what it saves.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from bridge import logs
from bridge.directus.notify import (
    JOB_NOTIFY_RESULT,
    refund_result_flow_id,
    result_body,
    trigger_flow,
)
from bridge.directus.order_status import (
    JOB_APPLY_ORDER,
    alert_over_refund,
    apply_order,
    order_changes,
)
from bridge.directus.projection import (
    REFUNDS_COLLECTION,
    project_refund,
    refund_item,
)
from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.store.models import OutboxJob, OutboxState, Refund, RefundStatus
from directus_client import DirectusError, DirectusUnavailableError

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

# Ids per read (a filter `_in` of 100 ids stays a short URL), items per batch write: Directus
# updates a batch item by item in one transaction (revisions and activity for each), so a
# batch of 100 took more than the 10 s read timeout under load, and the retry did it again.
CHUNK = 100
WRITE_CHUNK = 25
Outcomes = dict[int, Exception | None]


def _directus_error(exc: DirectusError) -> outbox.RetryLater:
    if isinstance(exc, DirectusUnavailableError):
        return outbox.DirectusDown(f"{type(exc).__name__}: {exc.message}")
    return outbox.RetryLater(f"Directus: {type(exc).__name__}: {exc.message}")


def _chunks(values: list[Any], size: int = CHUNK) -> list[list[Any]]:
    return [values[start : start + size] for start in range(0, len(values), size)]


def _refunds(
    services: Services, jobs: list[OutboxJob], *, history: bool = False
) -> dict[str, Refund]:
    """The jobs' refunds from the ledger, detached (with their history when asked)."""
    ids = {job.refund_id for job in jobs if job.refund_id}
    if not ids:
        return {}
    with services.store.read_session() as session:
        query = select(Refund).where(Refund.id.in_(ids))
        if history:
            query = query.options(selectinload(Refund.history))
        found = list(session.scalars(query))
        for refund in found:
            session.expunge(refund)
    return {refund.id: refund for refund in found}


def _order_fields(services: Services) -> list[str]:
    names = services.settings.order_fields
    return list(
        dict.fromkeys(
            [
                "id",
                "ridendine_order_id",
                "status",
                "payment_status",
                names.amount_paid,
                names.customer_email,
                names.chef_email,
            ]
        )
    )


def batch_orders(
    services: Services, context: dict[str, Any], order_ids: set[str] | None = None
) -> dict[str, dict[str, Any]]:
    """The orders of the claimed batch (by default those of every `apply_order` and
    `notify_result` job; else `order_ids`), each read at most once for the whole batch: an
    order the batch already knows (read, or returned by its own update) is not asked again;
    an order Directus does not have is absent. Raises RetryLater."""
    if "orders_error" in context:
        raise context["orders_error"]
    orders: dict[str, dict[str, Any]] = context.setdefault("orders", {})
    known: set[str] = context.setdefault("orders_known", set())
    if order_ids is None:
        jobs = [j for j in context["jobs"] if j.kind in (JOB_APPLY_ORDER, JOB_NOTIFY_RESULT)]
        order_ids = {refund.order_id for refund in _refunds(services, jobs).values()}
    missing = sorted(order_ids - known)
    names = services.settings.order_fields
    try:
        for part in _chunks(missing):
            rows = services.directus.query_items(
                names.collection,
                filter={"id": {"_in": part}},
                fields=_order_fields(services),
                limit=len(part),
            )
            orders.update({str(row.get("id")): row for row in rows})
    except DirectusError as exc:
        context["orders_error"] = _directus_error(exc)
        raise context["orders_error"] from None
    known.update(missing)
    return orders


def _paid(refund: Refund) -> int | None:
    """What the order's customer paid, as the ledger knows it (migration 0003)."""
    paid = refund.order_paid_cents
    return paid if paid is not None and paid > 0 else None


def _one_by_one(services: Services, jobs: list[OutboxJob], handler: outbox.Handler) -> Outcomes:
    """Each job done alone by its single handler (after a batch write failed)."""
    outcomes: Outcomes = {}
    for job in jobs:
        try:
            with logs.bound(refund_id=job.refund_id, job_id=job.id, job_kind=job.kind):
                handler(services, job)
        except Exception as exc:  # noqa: BLE001 - the job's outcome
            outcomes[job.id] = exc
        else:
            outcomes[job.id] = None
    return outcomes


def apply_orders(services: Services, jobs: list[OutboxJob], context: dict[str, Any]) -> Outcomes:
    settings = services.settings
    names = settings.order_fields
    outcomes: Outcomes = {}
    refunds = _refunds(services, jobs)
    live: list[tuple[OutboxJob, Refund]] = []
    for job in jobs:
        refund = refunds.get(job.refund_id or "")
        if refund is None:
            outcomes[job.id] = outbox.GiveUp(f"refund {job.refund_id} is not in the ledger")
        elif refund.status != RefundStatus.REFUNDED:
            outcomes[job.id] = outbox.GiveUp(f"refund {refund.id} is {refund.status}, not REFUNDED")
        else:
            live.append((job, refund))
    if not live:
        return outcomes
    # Only the orders whose paid amount the ledger does not know are read first; the others
    # are written at once, and their update answers with what the e-mail shows.
    unknown_paid = {refund.order_id for _job, refund in live if _paid(refund) is None}
    try:
        orders = batch_orders(services, context, unknown_paid)
    except outbox.RetryLater as exc:
        return {**outcomes, **{job.id: exc for job, _refund in live}}
    with services.store.session() as session:
        refunded = {
            order_id: ledger.refunded_cents(session, order_id)
            for order_id in {refund.order_id for _job, refund in live}
        }
    writes: dict[str, dict[str, str]] = {}
    written: list[tuple[OutboxJob, str]] = []
    read_before = set(orders)  # the others are known to exist only when their update answers
    for job, refund in live:
        order = orders.get(refund.order_id)
        paid = _paid(refund)
        if order is None and paid is None:
            outcomes[job.id] = outbox.GiveUp(f"order {refund.order_id} is not in Directus")
            continue
        if paid is None:
            paid = ledger.as_cents((order or {}).get(names.amount_paid))
        if paid is None or paid <= 0:
            outcomes[job.id] = outbox.GiveUp(
                f"order {refund.order_id} has no usable {names.amount_paid}"
            )
            continue
        total = refunded[refund.order_id]
        if total > paid:
            alert_over_refund(services, job, refund.order_id, refunded=total, paid=paid)
        changes = order_changes(
            {**(order or {}), **writes.get(refund.order_id, {})},
            refunded=total,
            paid=paid,
            cancels=refund.reason in settings.cancelling_reasons,
        )
        if changes:
            writes.setdefault(refund.order_id, {}).update(changes)
        written.append((job, refund.order_id))
    if writes:
        items = [{"id": order_id, **changes} for order_id, changes in writes.items()]
        try:
            updated: set[str] = set()
            fields = _order_fields(services)
            for part in _chunks(items, WRITE_CHUNK):
                rows = services.directus.update_batch(names.collection, part, fields=fields)
                for row in rows:
                    # The order as the update left it: notify_result needs no read of it.
                    order_id = str(row.get("id"))
                    updated.add(order_id)
                    orders[order_id] = {**orders.get(order_id, {}), **row}
                    context.setdefault("orders_known", set()).add(order_id)
        except DirectusUnavailableError as exc:
            down = _directus_error(exc)
            return {**outcomes, **{job.id: down for job, _order_id in written}}
        except DirectusError as exc:
            log.warning("batch update of %d orders failed, one by one now: %s", len(items), exc)
            return {**outcomes, **_one_by_one(services, [job for job, _ in written], apply_order)}
        for order_id, changes in writes.items():
            if order_id in updated:
                orders[order_id].update(changes)  # what notify_result shows
                log.info("order updated", extra={"order_id": order_id, "changes": changes})
    else:
        updated = set()
    for job, order_id in written:
        if order_id in writes and order_id not in updated:
            gone = "disappeared from Directus" if order_id in read_before else "is not in Directus"
            outcomes[job.id] = outbox.GiveUp(f"order {order_id} {gone}")
        else:
            outcomes[job.id] = None
    return outcomes


def project_refunds(services: Services, jobs: list[OutboxJob], context: dict[str, Any]) -> Outcomes:
    outcomes: Outcomes = {}
    refunds = _refunds(services, jobs, history=True)
    for job in jobs:
        if job.refund_id not in refunds:
            outcomes[job.id] = outbox.GiveUp(f"refund {job.refund_id} is not in the ledger")
    items = {refund.id: refund_item(refund) for refund in refunds.values()}
    if not items:
        return outcomes
    live = [job for job in jobs if job.id not in outcomes]
    client = services.directus
    try:
        updated: set[str] = set()
        for part in _chunks(list(items.values()), WRITE_CHUNK):
            rows = client.update_batch(REFUNDS_COLLECTION, part)
            updated |= {str(row.get("id")) for row in rows}
        missing = [item for refund_id, item in items.items() if refund_id not in updated]
        for part in _chunks(missing, WRITE_CHUNK):
            client.create_items(REFUNDS_COLLECTION, part)
    except DirectusUnavailableError as exc:
        down = _directus_error(exc)
        return {**outcomes, **{job.id: down for job in live}}
    except DirectusError as exc:
        log.warning("batch projection of %d refunds failed, one by one now: %s", len(items), exc)
        return {**outcomes, **_one_by_one(services, live, project_refund)}
    return {**outcomes, **{job.id: None for job in live}}


def notify_results(services: Services, jobs: list[OutboxJob], context: dict[str, Any]) -> Outcomes:
    outcomes: Outcomes = {}
    refunds = _refunds(services, jobs)
    calls: list[tuple[OutboxJob, Refund]] = []
    for job in jobs:
        refund = refunds.get(job.refund_id or "")
        status = str(job.payload.get("status") or "")
        if refund is None:
            outcomes[job.id] = outbox.GiveUp(f"refund {job.refund_id} is not in the ledger")
        elif refund.status != status:
            # Superseded by a later result: only the current one is worth an e-mail.
            log.info(
                "notification skipped: the refund is now %s",
                refund.status,
                extra={"refund_id": refund.id, "job_id": job.id},
            )
            outcomes[job.id] = None
        else:
            calls.append((job, refund))
    if not calls:
        return outcomes
    try:
        orders = batch_orders(services, context)
        refund_result_flow_id(services)  # once, before the calls that share it
        bodies = [
            (job, result_body(services, refund, orders.get(refund.order_id)))
            for job, refund in calls
        ]
    except outbox.RetryLater as exc:
        return {**outcomes, **{job.id: exc for job, _refund in calls}}
    except DirectusError as exc:  # Directus refused a read the bodies need
        error = _directus_error(exc)
        return {**outcomes, **{job.id: error for job, _refund in calls}}

    # The Flow is the one request per result that cannot be batched. A few calls at a time
    # keep Directus busy (its Flow mostly waits on SMTP); each job is recorded done as soon as
    # its call answered, so a worker killed mid-batch repeats at most the calls under way
    # (BRIDGE_WORKER_FLOW_CALLS; 1 is one at a time).
    finished: dict[int, str] = context.setdefault("finished", {})

    def call(job: OutboxJob, body: dict[str, Any]) -> Exception | None:
        try:
            with logs.bound(refund_id=job.refund_id, job_id=job.id, job_kind=job.kind):
                trigger_flow(services, body)
                log.info(
                    "refund result notified",
                    extra={"refund_id": job.refund_id, "status": body["refund"]["status"]},
                )
        except outbox.RetryLater as exc:
            if str(exc).startswith("the Flow could not be triggered: DirectusUnavailableError"):
                return outbox.DirectusDown(str(exc))
            return exc
        except Exception as exc:  # noqa: BLE001 - the job's outcome
            return exc
        recorded = outbox.finish_done(services, [job], context["owner"])
        finished[job.id] = OutboxState.DONE if recorded else "lost_lease"
        return None

    calls_at_once = max(1, services.settings.worker_flow_calls)
    if calls_at_once == 1 or len(bodies) == 1:
        results = [call(job, body) for job, body in bodies]
    else:
        with ThreadPoolExecutor(max_workers=min(calls_at_once, len(bodies))) as pool:
            results = list(pool.map(lambda pair: call(*pair), bodies))
    for (job, _body), result in zip(bodies, results, strict=True):
        outcomes[job.id] = result
    return outcomes
