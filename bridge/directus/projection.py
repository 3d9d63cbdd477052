"""The ledger projected into Directus's `refunds` collection (one item per refund).

The item's primary key is the refund id, so the projection is an upsert: PATCH, and create when
Directus says the item does not exist (or create first, when no projection of the refund has
been done yet). It is an outbox job (`project_refund`), so a refund recorded while Directus is
down shows up in Directus when it is back.

A projection writes the ledger's state as read when it runs, so it also does the work of every
projection job of the same refund queued before that read: those are recorded done with it
(`outbox.complete_superseded`) instead of writing the same item again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import bindparam, select
from sqlalchemy.orm import Session

from bridge.jobs import outbox
from bridge.ledger.ledger import history_to_list, refund_to_dict
from bridge.ledger.money import format_amount, major_units
from bridge.store.models import OutboxJob, Refund
from directus_client import InvalidForeignKeyError, NotFoundError, RecordNotUniqueError

if TYPE_CHECKING:
    from bridge.services import Services
    from bridge.store.driver import Transaction

REFUNDS_COLLECTION = "refunds"
JOB_PROJECT_REFUND = "project_refund"

# The fields of the `refunds` collection the bridge writes (schema apply creates them).
REFUND_ITEM_FIELDS = (
    "id",
    "order_id",
    "ridendine_order_id",
    "amount_cents",
    "refunded_amount_cents",
    "currency",
    "amount",
    "refunded_amount",
    "amount_value",
    "reason",
    "reason_comments",
    "requested_by",
    "requested_by_user",
    "items",
    "status",
    "ridendine_refund_id",
    "source",
    "needs_review",
    "review_reason",
    "failure_reason",
    "decided_by",
    "decided_at",
    "decision_comment",
    "status_history",
    "created_at",
    "updated_at",
)


def refund_item(refund: Refund) -> dict[str, Any]:
    """The Directus item for a refund: the API's fields (`order_id` is the many-to-one to the
    order there) with the history as `status_history`, and the amounts as people read them:
    `amount`/`refunded_amount` as text (`15.00 EUR`) and `amount_value` in the currency's units
    for Insights' sums (docs/directus.md, "How money is shown"). The cents stay the truth."""
    item = refund_to_dict(refund)
    item["status_history"] = history_to_list(refund)
    item["amount"] = format_amount(refund.amount_cents, refund.currency)
    item["refunded_amount"] = (
        format_amount(refund.refunded_amount_cents, refund.currency)
        if refund.refunded_amount_cents is not None
        else None
    )
    item["amount_value"] = str(major_units(refund.amount_cents, refund.currency))
    return item


def enqueue_projection(
    session: Transaction, refund: Refund, *, lease_to: str | None = None
) -> int | None:
    """Queue an upsert of the refund's Directus item, keyed on the refund's current version.

    The key includes `updated_at`, so each change of the refund is projected once, and a job
    for an older version still writes the ledger's current state (never a stale one).
    """
    session.flush()
    version = refund.updated_at.isoformat() if refund.updated_at else "new"
    return outbox.enqueue(
        session,
        JOB_PROJECT_REFUND,
        f"project:{refund.id}:{version}:{len(refund.history)}",
        refund_id=refund.id,
        lease_to=lease_to,
    )


# What Directus sends back of a written item: the projection needs nothing of it.
_ID_ONLY = ("id",)


def upsert_refund_item(services: Services, refund: Refund, *, create_first: bool = False) -> None:
    """Write the refund's item; `create_first` when it most likely does not exist yet (one
    request, not a PATCH that finds nothing and then the create). Either guess is safe: an item
    that exists already is updated, a missing one is created."""
    item = refund_item(refund)
    client = services.directus
    if create_first:
        try:
            client.create_item(REFUNDS_COLLECTION, item, fields=_ID_ONLY)
            return
        except RecordNotUniqueError:
            pass
    try:
        client.update_item(
            REFUNDS_COLLECTION, refund.id, {k: v for k, v in item.items() if k != "id"}
        )
    except NotFoundError:
        try:
            client.create_item(REFUNDS_COLLECTION, item, fields=_ID_ONLY)
        except RecordNotUniqueError:
            # Created meanwhile by another job for the same refund: write the values again.
            client.update_item(
                REFUNDS_COLLECTION, refund.id, {k: v for k, v in item.items() if k != "id"}
            )


# Built once (a refund request's CPU: docs/performance.md).
_PROJECTED_BEFORE = (
    select(OutboxJob.id)
    .where(
        OutboxJob.kind == JOB_PROJECT_REFUND,
        OutboxJob.refund_id == bindparam("refund_id"),
        OutboxJob.state == outbox.OutboxState.DONE,
    )
    .limit(1)
)


@dataclass(frozen=True)
class Snapshot:
    """A refund as a transaction that changed it leaves it, and the projection jobs that this
    state covers: what a projection run right after the commit needs (`project(snapshot=)`)."""

    refund: Refund
    covered: list[int]


def snapshot(session: Transaction, refund: Refund, *, owner: str | None, exclude: int) -> Snapshot:
    """Take the refund out of the caller's transaction with its history, for a projection by
    `owner` (job `exclude`) right after the commit, instead of that run reading it again. Call
    it last, with the refund's row locked (SQLite's write lock, or FOR UPDATE)."""
    covered = outbox.pending_job_ids(
        session, JOB_PROJECT_REFUND, refund.id, owner=owner, exclude=exclude
    )
    if isinstance(session, Session) and refund in session:
        # Else written with Core statements: complete in memory (bridge/ledger/ledger.py).
        session.flush()
        refund.history  # noqa: B018 - load before the refund leaves the session
        session.expunge(refund)
    return Snapshot(refund=refund, covered=covered)


def project_refund(services: Services, job: OutboxJob) -> None:
    project(services, job)


def project(
    services: Services,
    job: OutboxJob,
    *,
    create_first: bool | None = None,
    then: Callable[[Transaction, Refund], None] | None = None,
    known: Snapshot | None = None,
) -> Refund:
    """Do a projection job; return the refund as projected. `create_first`: whether to create
    the item before trying an update (None: when no projection of the refund was done yet);
    `then(session, refund)` runs in the transaction that records the job done (a refund
    request saves its answer there: bridge/refunds/intake.py); `known`: the refund as the
    transaction just before left it (`snapshot`), not read again (then `create_first` is a
    guess of the caller's, None meaning update first)."""
    if known is not None:
        covered, refund = known.covered, known.refund
    else:
        covered, refund, create_first = _read(services, job, create_first)
    try:
        upsert_refund_item(services, refund, create_first=bool(create_first))
    except InvalidForeignKeyError:
        # The order is not in Directus (deleted, or never there): retrying cannot help. The
        # dead job flags the refund and alerts admins (the worker's fallback for dead jobs).
        raise outbox.GiveUp(
            f"order {refund.order_id} of refund {refund.id} does not exist in Directus"
        ) from None
    with services.store.transaction() as session:
        # The jobs this run covered and the job itself, done in one transaction (Core
        # statements by the driver: a refund request's CPU, docs/performance.md).
        outbox.complete_superseded_in(session, covered, owner=job.locked_by)
        outbox.complete_in(session, job)
        if then is not None:
            then(session, refund)
    return refund


def _read(
    services: Services, job: OutboxJob, create_first: bool | None
) -> tuple[list[int], Refund, bool]:
    with services.store.read_session() as session:
        # The queued projections are read before the refund: each was committed with a change
        # that the refund read next includes, so this run covers them.
        covered = outbox.pending_job_ids(
            session, JOB_PROJECT_REFUND, job.refund_id, owner=job.locked_by, exclude=job.id
        )
        if create_first is None:
            create_first = session.scalar(_PROJECTED_BEFORE, {"refund_id": job.refund_id}) is None
        refund = session.get(Refund, job.refund_id)
        if refund is None:
            raise outbox.GiveUp(f"refund {job.refund_id} is not in the ledger")
        refund.history  # noqa: B018 - load before the session closes
        session.expunge(refund)
    return covered, refund, create_first
