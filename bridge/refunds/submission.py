"""Sending a refund to RideNDine (contract section 2): the `submit_refund` outbox job.

The job is written in the same transaction as the refund, leased to the request that tries it
inline right after commit; when that attempt gets no definite answer (timeout, connection error,
408, 409, 429, 5xx) the outbox retries it with backoff for about a day, always with the refund's
id as `Idempotency-Key`, so RideNDine refunds at most once however often the bridge asks.

- 2xx: the refund stays PENDING (the result comes by webhook); RideNDine's `refund_id` is kept.
- a definite rejection (another 4xx): the refund is FAILED with RideNDine's message.
- retries exhausted: FAILED, flagged for review, admins alerted (money may have moved).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from sqlalchemy import Table, bindparam, exists, select, update

from bridge.directus.alerts import enqueue_admin_alert
from bridge.directus.notify import enqueue_notify_result
from bridge.directus.projection import enqueue_projection
from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.refunds.ridendine import (
    RefundAccepted,
    RideNDineRejectedError,
    RideNDineUnavailableError,
)
from bridge.store.models import OutboxJob, Refund, RefundStatus, RefundStatusChange, utcnow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bridge.services import Services
    from bridge.store.driver import Transaction

log = logging.getLogger(__name__)

JOB_SUBMIT_REFUND = "submit_refund"
NO_DEFINITE_ANSWER = "RideNDine never gave a definite answer"


def enqueue_submission(session: Transaction, refund: Refund, *, lease_to: str | None) -> int | None:
    """Queue the one submission of `refund` (the dedupe key makes a second one impossible)."""
    return outbox.enqueue(
        session, JOB_SUBMIT_REFUND, f"submit:{refund.id}", refund_id=refund.id, lease_to=lease_to
    )


@dataclass(frozen=True)
class _Submission:
    refund_id: str
    ridendine_order_id: str
    order_id: str
    amount_cents: int
    reason: str
    requested_by: str

    @classmethod
    def of(cls, refund: Refund) -> _Submission:
        if not refund.ridendine_order_id:
            raise outbox.GiveUp(f"refund {refund.id} has no ridendine_order_id")
        return cls(
            refund_id=refund.id,
            ridendine_order_id=refund.ridendine_order_id,
            order_id=refund.order_id,
            amount_cents=refund.amount_cents,
            reason=refund.reason,
            requested_by=refund.requested_by,
        )


def _pending_submission(services: Services, refund_id: str | None) -> _Submission | None:
    """What to send, or None when the refund no longer needs sending."""
    with services.store.read_session() as session:
        refund = session.get(Refund, refund_id) if refund_id else None
        if refund is None:
            raise outbox.GiveUp(f"refund {refund_id} is not in the ledger")
        if refund.status != RefundStatus.PENDING or refund.ridendine_refund_id:
            return None  # decided already (a webhook, an operator, or an earlier attempt)
        return _Submission.of(refund)


# The lease owner of jobs a refund request runs inline (bridge/refunds/intake.py).
REQUEST_OWNER_PREFIX = "request:"


def _request_owner(job: OutboxJob) -> str | None:
    owner = job.locked_by or ""
    return owner if owner.startswith(REQUEST_OWNER_PREFIX) else None


def submit_refund(services: Services, job: OutboxJob) -> None:
    submission = _pending_submission(services, job.refund_id)
    if submission is not None:
        _submit(services, job, submission)


def submit_now(
    services: Services,
    refund: Refund,
    job_id: int,
    *,
    owner: str,
    projection_job: int | None,
    then: Callable[[Transaction, Refund], None] | None = None,
) -> str | None:
    """The request's own attempt at the submission it just committed (`job_id`, leased to
    `owner`), right after the commit: the refund is sent as the request recorded it, not read
    back (it was PENDING a moment ago; a change in between could as well come right after a
    read, and RideNDine dedupes on the refund's id either way). `projection_job`: the request's
    projection of the refund, still to run; RideNDine's answer is projected by it rather than
    by a job of its own; `then(session, refund)` runs last in the transaction that records
    RideNDine's acceptance. Returns the job's state afterwards (retries run `submit_refund`)."""

    in_request = _InRequest(refund=refund, projection_job=projection_job, then=then)

    def attempt(services: Services, job: OutboxJob) -> None:
        submission = _Submission.of(refund)  # inside: its GiveUp is the job's outcome
        _submit(services, job, submission, in_request)

    return outbox.run_now(
        services,
        job_id,
        owner=owner,
        kind=JOB_SUBMIT_REFUND,
        refund_id=refund.id,
        handler=attempt,
    )


@dataclass(frozen=True)
class _InRequest:
    """What a refund request's own attempt (`submit_now`) brings: the refund as the request
    recorded it (out of any session), its projection job still to run, and `then`."""

    refund: Refund
    projection_job: int | None
    then: Callable[[Transaction, Refund], None] | None


def _submit(
    services: Services,
    job: OutboxJob,
    submission: _Submission,
    in_request: _InRequest | None = None,
) -> None:
    # No transaction is open while RideNDine is asked: the store stays free for others.
    try:
        accepted = services.ridendine.create_refund(
            idempotency_key=submission.refund_id,
            ridendine_order_id=submission.ridendine_order_id,
            external_order_id=submission.order_id,
            amount_cents=submission.amount_cents,
            reason=submission.reason,
            requested_by=submission.requested_by,
        )
    except RideNDineRejectedError as exc:
        _record_rejection(services, submission.refund_id, exc)
        return
    except RideNDineUnavailableError as exc:
        log.warning(
            "RideNDine gave no definite answer; the submission will be retried: %s",
            exc,
            extra={"refund_id": submission.refund_id, "attempt": job.attempts + 1},
        )
        raise outbox.RetryLater(f"RideNDine: {exc}", delay=exc.retry_after) from None
    _record_acceptance(services, job, submission.refund_id, accepted, in_request)


def _record_acceptance(
    services: Services,
    job: OutboxJob,
    refund_id: str,
    accepted: RefundAccepted,
    in_request: _InRequest | None = None,
) -> None:
    recorded = False
    if in_request is not None:
        # Core statements by the driver on the refund as the request recorded it (a refund
        # request's CPU: docs/performance.md); nothing is written when it changed meanwhile.
        with services.store.transaction() as transaction:
            recorded = _accept_known(transaction, in_request.refund, accepted)
            if recorded:
                _after_acceptance(transaction, job, in_request.refund, in_request)
    if not recorded:
        with services.store.session() as session:
            # Locked (PostgreSQL; SQLite's transaction holds the write lock): what is read here
            # is what is written back, and what `then` sees is the state this commit leaves.
            refund = session.get(Refund, refund_id, with_for_update=True)
            if refund is None:
                return
            _accept(session, refund, accepted)
            _after_acceptance(session, job, refund, in_request)
    log.info(
        "refund accepted by RideNDine",
        extra={"refund_id": refund_id, "ridendine_refund_id": accepted.refund_id},
    )


def _after_acceptance(
    session: Transaction, job: OutboxJob, refund: Refund, in_request: _InRequest | None
) -> None:
    """The rest of the acceptance's transaction: its projection, the job done, `then`."""
    projection_job = in_request.projection_job if in_request else None
    owner = _request_owner(job)
    # Run inside a request, the request projects the refund next: its projection job, still
    # leased to it, projects this change too when it is still the request's (so that the
    # worker does not write the same item meanwhile; if the request dies, the lease runs out);
    # otherwise a projection job of its own, leased to the request likewise.
    if (
        owner is None
        or projection_job is None
        or not outbox.keep_lease(session, projection_job, owner=owner)
    ):
        enqueue_projection(session, refund, lease_to=owner)
    outbox.complete_in(session, job)  # done with the change it made: one transaction
    if in_request is not None and in_request.then is not None:
        in_request.then(session, refund)


def _accept(session: Session, refund: Refund, accepted: RefundAccepted) -> None:
    """RideNDine's acceptance on the refund as read, locked, in the session."""
    partner_id = accepted.refund_id
    detail = _accepted_detail(accepted)
    if partner_id and refund.ridendine_refund_id is None:
        other = session.scalar(
            _OTHER_WITH_PARTNER_ID, {"partner_id": partner_id, "refund_id": refund.id}
        )
        if other is None:
            refund.ridendine_refund_id = partner_id
            detail = _accepted_detail(accepted, partner_id)
        else:
            ledger.mark_for_review(
                refund,
                f"RideNDine answered with refund_id {partner_id}, already on refund {other}",
                source=ledger.SOURCE_RIDENDINE_API,
            )
    _note(session, refund, detail)


def _accept_known(session: Transaction, refund: Refund, accepted: RefundAccepted) -> bool:
    """RideNDine's acceptance written with Core statements on the refund as the request
    recorded it, when the store still holds exactly that (compared on `updated_at`, which
    every change sets; the UPDATE locks the row): no read of the refund and its history, no
    unit of work (a refund request's CPU: docs/performance.md). `refund`, out of any session,
    is brought up to date. False, having written nothing, when the refund changed meanwhile or
    RideNDine's refund_id is on another refund: the caller reads it and decides (`_accept`)."""
    partner_id = accepted.refund_id or None
    if refund.ridendine_refund_id is not None or refund.updated_at is None:
        return False
    now = utcnow()
    values = {
        "refund_id": refund.id,
        "known_status": refund.status,
        "was": refund.updated_at,
        "partner_id": partner_id,
        "now": now,
    }
    if not session.execute(_ACCEPT_UNCHANGED, values).rowcount:
        return False
    refund.ridendine_refund_id = partner_id
    refund.updated_at = now
    ledger.insert_line(
        session,
        refund,
        RefundStatusChange(
            from_status=refund.status,
            to_status=refund.status,
            source=ledger.SOURCE_RIDENDINE_API,
            detail=_accepted_detail(accepted, partner_id),
            at=now,
        ),
    )
    return True


def _accepted_detail(accepted: RefundAccepted, recorded_partner_id: str | None = None) -> str:
    """The acceptance's history line, naming RideNDine's refund_id when it was recorded."""
    detail = f"accepted by RideNDine (HTTP {accepted.status})"
    return f"{detail}, refund_id {recorded_partner_id}" if recorded_partner_id else detail


# Built once (a refund request's CPU: docs/performance.md).
_OTHER_WITH_PARTNER_ID = select(Refund.id).where(
    Refund.ridendine_refund_id == bindparam("partner_id"), Refund.id != bindparam("refund_id")
)
_REFUNDS = cast(Table, Refund.__table__)
_OTHERS = _REFUNDS.alias("others")
_ACCEPT_UNCHANGED = (
    update(_REFUNDS)
    .where(
        _REFUNDS.c.id == bindparam("refund_id"),
        _REFUNDS.c.status == bindparam("known_status"),
        _REFUNDS.c.updated_at == bindparam("was", type_=_REFUNDS.c.updated_at.type),
        _REFUNDS.c.ridendine_refund_id.is_(None),
        # RideNDine's refund_id on no other refund, checked by the UPDATE itself (one statement
        # less than a look-up first); NULL equals nothing, so no refund_id passes.
        ~exists().where(
            _OTHERS.c.ridendine_refund_id == bindparam("partner_id"),
            _OTHERS.c.id != bindparam("refund_id"),
        ),
    )
    .values(
        ridendine_refund_id=bindparam("partner_id"),
        updated_at=bindparam("now", type_=_REFUNDS.c.updated_at.type),
    )
)


def _record_rejection(services: Services, refund_id: str, exc: RideNDineRejectedError) -> None:
    message = exc.message
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        if refund is None:
            return
        if ledger.transition(
            refund,
            RefundStatus.FAILED,
            source=ledger.SOURCE_RIDENDINE_API,
            detail=f"rejected by RideNDine (HTTP {exc.status}): {message}",
        ):
            refund.failure_reason = message
            # Contract section 4: a refund that reached FAILED is told like any result.
            enqueue_notify_result(session, refund, RefundStatus.FAILED)
        else:
            ledger.mark_for_review(
                refund,
                f"RideNDine rejected a refund that is already {refund.status}: {message}",
                source=ledger.SOURCE_RIDENDINE_API,
            )
        enqueue_projection(session, refund)
    log.info(
        "refund rejected by RideNDine",
        extra={"refund_id": refund_id, "status": exc.status, "ridendine_message": message},
    )


def _note(session: Session, refund: Refund, detail: str) -> None:
    """A history line that changes no status (RideNDine's acknowledgement)."""
    # Added from the line's side: an unloaded history is not read just to add a line to it.
    session.add(
        RefundStatusChange(
            refund=refund,
            from_status=refund.status,
            to_status=refund.status,
            source=ledger.SOURCE_RIDENDINE_API,
            detail=detail,
        )
    )
    refund.updated_at = utcnow()


def submission_dead(services: Services, job: OutboxJob) -> None:
    """Retries ran out without a definite answer: FAILED, for a person to check."""
    with services.store.session() as session:
        refund = session.get(Refund, job.refund_id) if job.refund_id else None
        if refund is None or refund.status != RefundStatus.PENDING:
            return  # nothing to fail, or a result arrived meanwhile
        ledger.transition(
            refund,
            RefundStatus.FAILED,
            source=ledger.SOURCE_WORKER,
            detail=f"{NO_DEFINITE_ANSWER} after {job.attempts} attempt(s): {job.last_error}",
        )
        refund.failure_reason = NO_DEFINITE_ANSWER
        ledger.mark_for_review(refund, NO_DEFINITE_ANSWER, source=ledger.SOURCE_WORKER)
        enqueue_projection(session, refund)
        enqueue_notify_result(session, refund, RefundStatus.FAILED)
        enqueue_admin_alert(
            session,
            dedupe_key=f"submit-dead:{refund.id}",
            subject=f"Refund {refund.id} needs review: RideNDine never answered",
            message=(
                f"The refund {refund.id} of order {refund.order_id} ({refund.amount_cents} "
                f"cents) was sent to RideNDine {job.attempts} time(s) without a definite "
                f"answer. It is marked FAILED, but RideNDine may have refunded it: check with "
                f"RideNDine before refunding again. Last error: {job.last_error}"
            ),
            refund_id=refund.id,
        )
