"""Refund results checked against Stripe (when `BRIDGE_STRIPE_API_KEY` is set), and refunds that
stay PENDING too long: the `verify_refunded` and `check_pending_refund` jobs.

Stripe is asked through a `stripe.StripeClient` built from the settings, never the SDK's module
globals, and never inside a transaction. Which Stripe refund, and what each answer does:
docs/worker.md ("Stale PENDING refunds and Stripe").
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import stripe
from sqlalchemy import func, select

from bridge.directus.review import flag_for_review, flag_job_refund
from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.metrics import instrumented_session
from bridge.store.db import lock_order
from bridge.store.models import InboxEvent, InboxState, OutboxJob, Refund, RefundStatus, utcnow
from bridge.webhooks.apply import apply_event, apply_result

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from bridge.config import Settings
    from bridge.services import Services

log = logging.getLogger(__name__)

JOB_CHECK_PENDING = "check_pending_refund"
JOB_VERIFY_REFUNDED = "verify_refunded"
STRIPE_REFUND_PREFIX = "re_"
STRIPE_TIMEOUT_SECONDS = 10.0
STRIPE_NETWORK_RETRIES = 2
SUCCEEDED = "succeeded"
FINAL_FAILURES = frozenset({"failed", "canceled"})
STILL_PENDING = frozenset({"pending", "requires_action"})
NO_STRIPE_ID = "the REFUNDED result cannot be checked against Stripe: no Stripe refund id (re_...)"


class StripeUnavailable(Exception):
    """Stripe gave no answer we can use now (network, 5xx, 429, key or permission)."""


class StripeRefundMissing(Exception):
    """Stripe has no refund with that id."""


@dataclass(frozen=True)
class StripeRefund:
    id: str
    status: str
    amount_cents: int
    currency: str  # upper case, like the ledger's
    failure_reason: str | None = None
    created: int | None = None


class Check(StrEnum):
    CONFIRMED = "confirmed"  # succeeded for the expected amount
    FAILED = "failed"  # failed or canceled at Stripe
    WAIT = "wait"  # pending or requires_action
    MISMATCH = "mismatch"  # another amount or currency, no such refund, no Stripe id
    NOT_CHECKED = "not_checked"  # no Stripe key configured


@dataclass(frozen=True)
class Verdict:
    check: Check
    reason: str | None = None
    stripe: StripeRefund | None = None


# -- the client ---------------------------------------------------------------------------------


def make_client(settings: Settings) -> stripe.StripeClient | None:
    """A StripeClient from the settings; None when no key is configured."""
    if not settings.stripe_api_key:
        return None
    base: dict[str, str] = {}
    if settings.stripe_api_base:
        base["api"] = settings.stripe_api_base
    return stripe.StripeClient(
        settings.stripe_api_key,
        base_addresses=base,  # type: ignore[arg-type]
        max_network_retries=STRIPE_NETWORK_RETRIES,
        http_client=stripe.RequestsClient(
            timeout=STRIPE_TIMEOUT_SECONDS, session=instrumented_session("stripe")
        ),
    )


def get_client(services: Services) -> stripe.StripeClient | None:
    """The process's StripeClient (built once), or None without a key."""
    if not services.settings.stripe_api_key:
        return None
    client = services.extras.get("stripe")
    if client is None:
        client = make_client(services.settings)
        services.extras["stripe"] = client
    return client


def stripe_refund_id(*candidates: str | None) -> str | None:
    """The first candidate that is a Stripe refund id (`re_...`)."""
    for candidate in candidates:
        if candidate and candidate.startswith(STRIPE_REFUND_PREFIX):
            return candidate
    return None


def _from_stripe(obj: Any) -> StripeRefund:
    data = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return StripeRefund(
        id=str(data.get("id")),
        status=str(data.get("status") or ""),
        amount_cents=int(data.get("amount") or 0),
        currency=str(data.get("currency") or "").upper(),
        failure_reason=data.get("failure_reason"),
        created=data.get("created"),
    )


def _describe(exc: stripe.StripeError) -> str:
    # Stripe's messages name the request, never the key; keep them short.
    status = f"HTTP {exc.http_status} " if exc.http_status else ""
    return f"{status}{type(exc).__name__}: {(exc.user_message or str(exc))[:200]}"


def fetch_refund(client: stripe.StripeClient, refund_id: str) -> StripeRefund:
    """The refund as Stripe has it now."""
    try:
        obj = client.v1.refunds.retrieve(refund_id)
    except stripe.InvalidRequestError as exc:
        if exc.http_status == 404:
            raise StripeRefundMissing(f"Stripe has no refund {refund_id}") from None
        raise StripeUnavailable(_describe(exc)) from None
    except stripe.StripeError as exc:
        raise StripeUnavailable(_describe(exc)) from None
    return _from_stripe(obj)


def list_refunds(
    client: stripe.StripeClient, *, created_since: datetime | None
) -> dict[str, StripeRefund]:
    """Every refund Stripe has (created since a time), by id: 100 per request, paginated."""
    params: dict[str, Any] = {"limit": 100}
    if created_since is not None:
        params["created"] = {"gte": int(created_since.timestamp())}
    found: dict[str, StripeRefund] = {}
    try:
        for obj in client.v1.refunds.list(params).auto_paging_iter():  # type: ignore[arg-type]
            refund = _from_stripe(obj)
            found[refund.id] = refund
    except stripe.StripeError as exc:
        raise StripeUnavailable(_describe(exc)) from None
    return found


def judge(found: StripeRefund, *, amount_cents: int, currency: str) -> Verdict:
    """What Stripe's refund says about a result of `amount_cents` in `currency`."""
    if found.status in FINAL_FAILURES:
        why = f": {found.failure_reason}" if found.failure_reason else ""
        return Verdict(Check.FAILED, f"Stripe refund {found.id} is {found.status}{why}", found)
    if found.status in STILL_PENDING:
        return Verdict(Check.WAIT, f"Stripe refund {found.id} is {found.status}", found)
    if found.status != SUCCEEDED:
        return Verdict(Check.WAIT, f"Stripe refund {found.id} has status {found.status!r}", found)
    if found.currency and found.currency != currency.upper():
        return Verdict(
            Check.MISMATCH,
            f"Stripe refund {found.id} is in {found.currency}, the refund in {currency.upper()}",
            found,
        )
    if found.amount_cents != amount_cents:
        return Verdict(
            Check.MISMATCH,
            f"Stripe refund {found.id} succeeded for {found.amount_cents} cents, "
            f"not {amount_cents}",
            found,
        )
    return Verdict(Check.CONFIRMED, f"Stripe refund {found.id} succeeded", found)


def check(
    services: Services, stripe_id: str | None, *, amount_cents: int, currency: str
) -> Verdict:
    """Ask Stripe about `stripe_id` for a result of `amount_cents`; raises StripeUnavailable."""
    client = get_client(services)
    if client is None:
        return Verdict(Check.NOT_CHECKED)
    if stripe_id is None:
        return Verdict(Check.MISMATCH, NO_STRIPE_ID)
    try:
        found = fetch_refund(client, stripe_id)
    except StripeRefundMissing as exc:
        return Verdict(Check.MISMATCH, str(exc))
    return judge(found, amount_cents=amount_cents, currency=currency)


# -- REFUNDED webhooks: checked before they are applied ----------------------------------------


def verify_refunded(
    services: Services,
    *,
    known_refund_id: str | None,
    reported_refund_id: str | None,
    amount_cents: int,
    currency: str,
) -> Verdict:
    """Whether a REFUNDED result may be applied; call it outside any store transaction.

    `known_refund_id` is the refund's RideNDine id in the ledger (from the submission's answer),
    `reported_refund_id` the one in the webhook; the known one wins. Apply the result when the
    verdict is CONFIRMED or NOT_CHECKED (no key). MISMATCH or FAILED: do not apply; flag the
    refund with `flag_unconfirmed`. WAIT: do not apply now (the stale check settles it).
    Raises StripeUnavailable when Stripe cannot answer: retry later.
    """
    stripe_id = stripe_refund_id(known_refund_id, reported_refund_id)
    return check(services, stripe_id, amount_cents=amount_cents, currency=currency)


def flag_unconfirmed(session: Session, refund: Refund, verdict: Verdict, *, source: str) -> bool:
    """Flag a refund whose REFUNDED result Stripe does not confirm (admins alerted, once)."""
    reason = f"a REFUNDED result was not applied: {verdict.reason or verdict.check}"
    return flag_for_review(session, refund, reason, source=source)


def hold_refunded(services: Services, session: Session, event: InboxEvent, refund: Refund) -> bool:
    """The inbox's seam (bridge/webhooks/inbox.py), called before it applies a REFUNDED event:
    True when Stripe must confirm it first. A `verify_refunded` job is then queued in the
    caller's transaction, the event stays `received`, and the job applies it (or not)."""
    if not services.settings.stripe_api_key or event.status != RefundStatus.REFUNDED:
        return False
    outbox.enqueue(
        session,
        JOB_VERIFY_REFUNDED,
        # Per processing attempt, so that an operator's replay checks with Stripe again.
        f"verify_refunded:{event.id}:{event.attempts}",
        refund_id=refund.id,
        payload={"event_id": event.id},
    )
    event.state = InboxState.RECEIVED  # also after an operator's replay of a failed one
    event.last_error = "waiting for Stripe to confirm the refund"
    return True


def verify_refunded_event(services: Services, job: OutboxJob) -> None:
    """Ask Stripe about a held REFUNDED event, then apply it or flag the refund."""
    event_id = job.payload.get("event_id")
    with services.store.session() as session:
        event = session.get(InboxEvent, event_id) if isinstance(event_id, int) else None
        refund = session.get(Refund, job.refund_id) if job.refund_id else None
        if event is None or refund is None:
            raise outbox.GiveUp(f"inbox event {event_id!r} or refund {job.refund_id} is gone")
        if event.state != InboxState.RECEIVED:
            return  # applied or failed meanwhile (a replay, an operator)
        known, reported = refund.ridendine_refund_id, event.ridendine_refund_id
        amount, currency = event.amount_cents, refund.currency
    try:
        verdict = verify_refunded(
            services,
            known_refund_id=known,
            reported_refund_id=reported,
            amount_cents=amount,
            currency=currency,
        )
    except StripeUnavailable as exc:
        raise outbox.RetryLater(f"Stripe: {exc}") from None
    if verdict.check == Check.WAIT:
        raise outbox.RetryLater(f"not applied yet: {verdict.reason}")
    with services.store.session() as session:
        event = session.get(InboxEvent, event_id)
        if event is None or event.state != InboxState.RECEIVED:
            return
        lock_order(session, event.external_order_id)
        refund = _locked(session, job.refund_id)
        if refund is None:
            return
        if verdict.check in (Check.CONFIRMED, Check.NOT_CHECKED):
            apply_event(session, event, refund)
        else:
            flag_unconfirmed(session, refund, verdict, source=ledger.SOURCE_WEBHOOK)
            event.state = InboxState.FAILED
            event.last_error = f"not applied: {verdict.reason}"[:2000]
            event.processed_at = utcnow()
    log.info(
        "REFUNDED webhook checked with Stripe: %s",
        verdict.check,
        extra={"refund_id": job.refund_id, "inbox_event_id": event_id},
    )


def verify_refunded_dead(services: Services, job: OutboxJob) -> None:
    # Stripe never settled it (pending for a day, or unreachable): a person looks.
    reason = f"a REFUNDED result could not be confirmed with Stripe ({job.last_error})"
    flag_job_refund(services, job, reason)


# -- PENDING refunds whose result does not come ------------------------------------------------


def enqueue_stale_checks(services: Services, *, now: datetime | None = None) -> int:
    """Queue a check of each refund PENDING longer than the stale limit; return how many.

    The dedupe key counts stale periods, so each refund is checked at most once per period by
    however many workers scan.
    """
    settings = services.settings
    now = now or utcnow()
    stale = timedelta(seconds=settings.pending_stale_seconds)
    can_ask_stripe = bool(settings.stripe_api_key)
    queued = 0
    # A refund that waited for an admin was sent when approved: its clock starts then.
    sent_at = func.coalesce(Refund.decided_at, Refund.created_at)
    with services.store.session() as session:
        rows = session.execute(
            select(Refund.id, sent_at, Refund.ridendine_refund_id, Refund.review_reason)
            .where(Refund.status == RefundStatus.PENDING, sent_at <= now - stale)
            .order_by(sent_at)
        ).all()
        review = _pending_review_reason(settings)
        for refund_id, created_at, ridendine_refund_id, review_reason in rows:
            stripe_id = stripe_refund_id(ridendine_refund_id) if can_ask_stripe else None
            if stripe_id is None and review in (review_reason or ""):
                continue  # flagged already; nothing more a check could do
            period = int((now - created_at) / stale)
            if outbox.enqueue(
                session,
                JOB_CHECK_PENDING,
                f"pending_check:{refund_id}:{period}",
                refund_id=refund_id,
            ):
                queued += 1
    return queued


def _pending_review_reason(settings: Settings) -> str:
    hours = max(settings.pending_review_seconds, settings.pending_stale_seconds) / 3600
    return f"no result after {hours:g} h PENDING, and Stripe cannot be asked"


def check_pending_refund(services: Services, job: OutboxJob) -> None:
    settings = services.settings
    with services.store.session() as session:
        refund = session.get(Refund, job.refund_id)
        if refund is None or refund.status != RefundStatus.PENDING:
            return  # a result came meanwhile
        stripe_id = stripe_refund_id(refund.ridendine_refund_id)
        amount, currency = refund.amount_cents, refund.currency
        created_at = refund.decided_at or refund.created_at  # sent when approved, if it waited
    client = get_client(services)
    if client is not None and stripe_id is not None:
        try:
            verdict = check(services, stripe_id, amount_cents=amount, currency=currency)
        except StripeUnavailable as exc:
            raise outbox.RetryLater(f"Stripe: {exc}") from None
        _apply_verdict(services, job.refund_id or "", verdict)
        return
    review_after = max(settings.pending_review_seconds, settings.pending_stale_seconds)
    if utcnow() - created_at < timedelta(seconds=review_after):
        return
    with services.store.session() as session:
        refund = _locked(session, job.refund_id)
        if refund is not None and refund.status == RefundStatus.PENDING:
            flag_for_review(
                session, refund, _pending_review_reason(settings), source=ledger.SOURCE_WORKER
            )


def _locked(session: Session, refund_id: str | None) -> Refund | None:
    # A row lock on PostgreSQL, so a webhook applied meanwhile is seen (SQLite: one writer).
    return session.get(Refund, refund_id, with_for_update=True) if refund_id else None


def _apply_verdict(services: Services, refund_id: str, verdict: Verdict) -> None:
    found = verdict.stripe
    with services.store.session() as session:
        refund = _locked(session, refund_id)
        if refund is None or refund.status != RefundStatus.PENDING:
            return
        if verdict.check == Check.CONFIRMED and found is not None:
            apply_result(
                session,
                refund,
                RefundStatus.REFUNDED,
                amount_cents=found.amount_cents,
                source=ledger.SOURCE_RECONCILIATION,
                detail=f"{verdict.reason}; no webhook came",
            )
        elif verdict.check == Check.FAILED:
            apply_result(
                session,
                refund,
                RefundStatus.FAILED,
                amount_cents=None,
                source=ledger.SOURCE_RECONCILIATION,
                failure_reason=verdict.reason,
                detail=f"{verdict.reason}; no webhook came",
            )
        elif verdict.check == Check.MISMATCH:
            flag_for_review(
                session,
                refund,
                f"Stripe disagrees: {verdict.reason}",
                source=ledger.SOURCE_RECONCILIATION,
            )
        else:
            return
    log.info(
        "stale PENDING refund checked with Stripe: %s",
        verdict.check,
        extra={"refund_id": refund_id, "stripe_refund_id": found.id if found else None},
    )
