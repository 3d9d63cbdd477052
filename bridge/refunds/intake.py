"""Refund requests (contract sections 1 and 2): the business logic behind the views.

A request goes: caller and body checked -> the caller's Idempotency-Key looked up -> the order
read from Directus with the bridge's token -> ONE store transaction (per-order lock, what is
still refundable re-checked against the ledger, the refund with its first history line, the
Idempotency-Key record, the projection job and the submission job, both leased to this request)
-> commit -> the submission tried inline, then the projection (one create of the refund's item
with RideNDine's answer in it, the refund handed over by the acceptance, not read again) -> the
answer, the refund as projected, saved for the key with the projection's completion
(docs/refunds.md, steps 8 and 9).

Committing before RideNDine is asked means a crash at any point loses nothing: the leased jobs
expire and the worker takes them, with the same Idempotency-Key towards RideNDine.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from marshmallow import ValidationError
from sqlalchemy import Table, bindparam, insert, select, update
from sqlalchemy.exc import IntegrityError

from bridge import logs
from bridge.directus import projection
from bridge.errors import (
    AmountExceedsRefundable,
    DirectusUnavailable,
    Forbidden,
    IdempotencyKeyInProgress,
    IdempotencyKeyReused,
    OrderNotFound,
    OrderNotRefundable,
    Problem,
    RefundNotFound,
    RideNDineRejected,
    ValidationProblem,
)
from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.refunds import approval, submission
from bridge.refunds.schemas import Identifier, RefundRequest, refund_request_schema
from bridge.refunds.submission import REQUEST_OWNER_PREFIX, enqueue_submission
from bridge.store.db import lock_order
from bridge.store.models import (
    IdempotencyRecord,
    OutboxJob,
    Refund,
    RefundSource,
    RefundStatus,
    new_refund_id,
    utcnow,
)
from bridge.web.auth import ROLE_CUSTOMER, Caller
from directus_client import DirectusError, DirectusUnavailableError

if TYPE_CHECKING:
    from sqlalchemy import Row

    from bridge.config import Settings
    from bridge.services import Services
    from bridge.store.driver import Transaction

log = logging.getLogger(__name__)

REFUNDABLE_PAYMENT_STATUSES = ("PAID", "PARTIALLY_REFUNDED")
CUSTOMER_REASON = "customer_cancel"
IDEMPOTENCY_HEADER = "Idempotency-Key"
MAX_IDEMPOTENCY_KEY_CHARS = 255
# How long a repeat waits for the first request with its key to finish before 409.
IDEMPOTENCY_WAIT_SECONDS = 5.0
IDEMPOTENCY_POLL_SECONDS = 0.1
# A key whose first request has not answered after this long died with its process: its
# answer is then derived from the refund as the ledger has it.
IDEMPOTENCY_STALE_SECONDS = 120.0


@dataclass(frozen=True)
class Order:
    """What the bridge needs of a COOCO order."""

    id: str
    ridendine_order_id: str | None
    payment_status: str | None
    paid_cents: int | None
    currency: str
    customer_id: str | None
    status: str | None = None


@dataclass
class Answer:
    """The answer to a refund request: a 202 with the refund, or a problem (the 422)."""

    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)
    problem: Problem | None = None
    replayed: bool = False


# -- the request ---------------------------------------------------------------------------


def request_refund(
    services: Services, caller: Caller, payload: Any, idempotency_key: str | None
) -> Answer:
    """Handle POST /ridendine/refunds for an authenticated caller and a decoded JSON body."""
    settings = services.settings
    key = _check_idempotency_key(idempotency_key)
    request = parse_request(payload, settings)
    requested_by, requested_by_user, who = _requester(caller, request)
    if requested_by == ROLE_CUSTOMER and request.reason != CUSTOMER_REASON:
        raise Forbidden(f"A customer may only request a refund with reason {CUSTOMER_REASON}.")

    request_hash = _body_hash(payload)
    if key is not None:
        earlier = _earlier_answer(services, caller.scope, key, request_hash, wait=True)
        if earlier is not None:
            return earlier

    order = read_order(services, request.order_id)
    if caller.is_customer and (caller.user is None or order.customer_id != caller.user.id):
        raise Forbidden("You may only request refunds of your own orders.")
    paid_cents = refundable_order(order)
    amount = _requested_amount(request, paid_cents)

    owner = f"{REQUEST_OWNER_PREFIX}{uuid.uuid4().hex}"
    try:
        refund, projection_job, submit_job = _record(
            services,
            order=order,
            request=request,
            amount=amount,
            paid_cents=paid_cents,
            requested_by=requested_by,
            requested_by_user=requested_by_user,
            who=who,
            scope=caller.scope,
            key=key,
            request_hash=request_hash,
            owner=owner,
        )
    except _KeyTaken:
        assert key is not None
        earlier = _earlier_answer(services, caller.scope, key, request_hash, wait=True)
        if earlier is None:
            raise IdempotencyKeyInProgress(
                "A request with this Idempotency-Key is still running; retry shortly."
            ) from None
        return earlier

    return _submit_and_project(
        services,
        refund,
        scope=caller.scope,
        key=key,
        owner=owner,
        projection_job=projection_job,
        submit_job=submit_job,
    )


def _submit_and_project(
    services: Services,
    refund: Refund,
    *,
    scope: str,
    key: str | None,
    owner: str,
    projection_job: int | None,
    submit_job: int | None,
) -> Answer:
    """The request's own attempts at the jobs it just committed (leased to `owner`), and the
    answer, saved for the key."""
    # RideNDine first, then Directus: the item is created once, with RideNDine's answer in it,
    # instead of created and then updated (the submission leaves its change to the request's
    # projection: bridge/refunds/submission.py).
    held: list[projection.Snapshot] = []

    def hold(session: Transaction, accepted: Refund) -> None:
        # RideNDine's answer as recorded, projected next without reading it back.
        if projection_job is not None:
            held.append(projection.snapshot(session, accepted, owner=owner, exclude=projection_job))

    if submit_job is not None:
        submission.submit_now(
            services, refund, submit_job, owner=owner, projection_job=projection_job, then=hold
        )
    answered: list[Answer] = []

    def project_and_answer(services: Services, job: OutboxJob) -> None:
        # The answer is the refund as projected, saved for the key in the transaction that
        # records the projection done (docs/performance.md).
        def save(session: Transaction, projected: Refund) -> None:
            answer = _answer_from(projected)
            if key is not None:
                _save_answer_in(session, scope, key, answer)
            answered.append(answer)

        known = held[0] if held else None
        projection.project(services, job, create_first=True, then=save, known=known)

    outbox.run_now(
        services,
        projection_job,
        owner=owner,
        kind=projection.JOB_PROJECT_REFUND,
        refund_id=refund.id,
        handler=project_and_answer,
    )
    if answered:
        return answered[0]
    # Directus did not take the item (the worker projects it later): the answer from the ledger.
    answer = answer_for_refund(services, refund.id)
    if key is not None:
        _save_answer(services, scope, key, answer)
    return answer


def parse_request(payload: Any, settings: Settings) -> RefundRequest:
    if not isinstance(payload, dict):
        raise ValidationProblem(
            {"_schema": ["The body must be a JSON object."]}, "The body must be a JSON object."
        )
    try:
        schema = refund_request_schema(settings.refund_reasons)
        request: RefundRequest = schema.load(payload)
    except ValidationError as exc:
        errors = exc.messages if isinstance(exc.messages, dict) else {"_schema": exc.messages}
        raise ValidationProblem(_string_keys(errors)) from None
    return request


def _string_keys(errors: Any) -> Any:
    """marshmallow keys nested errors by list index; JSON objects want string keys."""
    if isinstance(errors, dict):
        return {str(key): _string_keys(value) for key, value in errors.items()}
    return errors


def parse_order_id(value: str | None) -> str:
    """The `order_id` of a query string, checked like the body's."""
    if value is None:
        raise ValidationProblem({"order_id": ["Missing data for required field."]})
    try:
        order_id: str = Identifier().deserialize(value)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, list) else [str(exc.messages)]
        raise ValidationProblem({"order_id": messages}) from None
    return order_id


def _check_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY_CHARS or not value.strip():
        raise ValidationProblem(
            {IDEMPOTENCY_HEADER: [f"Must be 1 to {MAX_IDEMPOTENCY_KEY_CHARS} characters."]}
        )
    return value


def _requester(caller: Caller, request: RefundRequest) -> tuple[str, str | None, str]:
    """`requested_by`, `requested_by_user` and a line for the history.

    For a (represented) Directus user both are derived from the account; a body that says
    otherwise is refused (403) rather than silently corrected.
    """
    user = caller.user
    if user is None:
        if request.requested_by is None:
            raise ValidationProblem(
                {"requested_by": ["Missing data for required field (service callers)."]}
            )
        by_user = request.requested_by_user
        return request.requested_by, by_user, f"{request.requested_by} {by_user or ''}".strip()
    role = caller.role or ROLE_CUSTOMER
    if request.requested_by is not None and request.requested_by != role:
        raise Forbidden(f"requested_by is derived from your account: you are a {role}.")
    if request.requested_by_user is not None and request.requested_by_user != user.id:
        raise Forbidden("requested_by_user is derived from your account.")
    who = " ".join(part for part in (role, user.email, f"({user.id})") if part)
    return role, user.id, who


def _body_hash(payload: Any) -> str:
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


# -- the order in Directus -------------------------------------------------------------------


def read_order(services: Services, order_id: str) -> Order:
    """The order, read with the bridge's token (a filter query: the id never becomes a path)."""
    names = services.settings.order_fields
    try:
        item = services.directus.find_item(
            names.collection,
            order_id,
            fields=[
                "id",
                "ridendine_order_id",
                "status",
                "payment_status",
                names.amount_paid,
                names.currency,
                names.customer,
            ],
        )
    except DirectusUnavailableError:
        raise DirectusUnavailable("Directus did not answer; try again shortly.") from None
    except DirectusError as exc:
        log.error("reading order from Directus failed: %s", exc)
        raise DirectusUnavailable("The order could not be read from Directus.") from None
    if item is None:
        raise OrderNotFound(f"There is no order {order_id!r}.")
    customer = item.get(names.customer)
    if isinstance(customer, dict):
        customer = customer.get("id")
    currency = item.get(names.currency)
    return Order(
        id=str(item.get("id", order_id)),
        ridendine_order_id=_text(item.get("ridendine_order_id")),
        payment_status=_text(item.get("payment_status")),
        paid_cents=ledger.as_cents(item.get(names.amount_paid)),
        currency=(
            currency.upper()
            if isinstance(currency, str) and len(currency) == 3
            else services.settings.default_currency
        ),
        customer_id=str(customer) if customer else None,
        status=_text(item.get("status")),
    )


def _text(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def refundable_order(order: Order) -> int:
    """What was paid, when the order can be refunded at all; else 409."""
    if not order.ridendine_order_id:
        raise OrderNotRefundable("The order has no ridendine_order_id: RideNDine does not know it.")
    if order.payment_status not in REFUNDABLE_PAYMENT_STATUSES:
        raise OrderNotRefundable(
            f"The order's payment_status is {order.payment_status or 'empty'}; only "
            f"{' or '.join(REFUNDABLE_PAYMENT_STATUSES)} orders can be refunded.",
            payment_status=order.payment_status,
        )
    if order.paid_cents is None or order.paid_cents <= 0:
        raise OrderNotRefundable("The order has no amount paid.")
    return order.paid_cents


def _requested_amount(request: RefundRequest, paid_cents: int) -> int | None:
    """The amount asked for; None means all that is still refundable."""
    if request.percent is not None:
        amount = paid_cents * request.percent // 100
        if amount < 1:
            raise ValidationProblem(
                {"percent": [f"{request.percent}% of {paid_cents} cents is less than a cent."]}
            )
        return amount
    return request.amount_cents


# -- the money transaction -------------------------------------------------------------------


class _KeyTaken(Exception):
    """Another request holds this Idempotency-Key already."""


def _record(
    services: Services,
    *,
    order: Order,
    request: RefundRequest,
    amount: int | None,
    paid_cents: int,
    requested_by: str,
    requested_by_user: str | None,
    who: str,
    scope: str,
    key: str | None,
    request_hash: str,
    owner: str,
) -> tuple[Refund, int | None, int | None]:
    """Record the refund and its jobs in one transaction under the order's lock; return the
    refund as recorded (with its history) and the ids of its projection and submission jobs."""
    try:
        # Core statements by the driver, as a session would run them (a refund request's CPU:
        # docs/performance.md).
        with services.store.transaction() as session:
            lock_order(session, order.id)
            refund_id, now = new_refund_id(), utcnow()
            if key is not None:
                # A key recorded since `_earlier_answer` looked fails here, on its primary key,
                # before anything else is decided (below: the first answer is replayed).
                session.execute(
                    _INSERT_KEY,
                    {
                        "caller": scope,
                        "key": key,
                        "request_hash": request_hash,
                        "refund_id": refund_id,
                        "created_at": now,
                    },
                )
            refundable = ledger.refundable_cents(session, order.id, paid_cents)
            if amount is None:
                amount = refundable
            if amount < 1 or amount > refundable:
                raise AmountExceedsRefundable(refundable)
            # The policy is checked here, under the lock, with the order's other refunds.
            waits = approval.reason_to_wait(
                session, services.settings, order.id, order.status, requested_by, amount
            )
            refund = Refund(
                id=refund_id,
                created_at=now,
                order_id=order.id,
                ridendine_order_id=order.ridendine_order_id,
                amount_cents=amount,
                order_paid_cents=paid_cents,
                currency=order.currency,
                reason=request.reason,
                reason_comments=request.reason_comments,
                requested_by=requested_by,
                requested_by_user=requested_by_user,
                items=request.items,
                status=RefundStatus.REQUESTED if waits else RefundStatus.PENDING,
                source=RefundSource.COOCO,
            )
            detail = f"requested by {who}"
            if waits:
                detail += f"; waits for an admin's approval: {waits}"
            ledger.record_created(refund, detail=detail)
            ledger.insert_new(session, refund)
            projection_job = projection.enqueue_projection(session, refund, lease_to=owner)
            if waits:
                submit_job = None  # nothing goes to RideNDine until an admin approves
                approval.enqueue_requested_notices(session, refund)
            else:
                submit_job = enqueue_submission(session, refund, lease_to=owner)
    except IntegrityError:
        if key is None:
            raise
        # The same key recorded by a concurrent request (PostgreSQL: the primary key waited
        # for its transaction).
        raise _KeyTaken from None
    log.info(
        "refund recorded",
        extra={"refund_id": refund.id, "order_id": order.id, "amount_cents": amount},
    )
    logs.bind(refund_id=refund.id, order_id=order.id)  # on the request's later log lines
    return refund, projection_job, submit_job


def answer_for_refund(services: Services, refund_id: str) -> Answer:
    """202 with the refund, or 422 when RideNDine rejected it."""
    with services.store.read_session() as session:
        refund = session.get(Refund, refund_id)
        if refund is None:  # pragma: no cover - the refund was committed before
            raise RefundNotFound()
        refund.history  # noqa: B018 - load before the session closes
        session.expunge(refund)
    return _answer_from(refund)


def _answer_from(refund: Refund) -> Answer:
    body = ledger.refund_to_dict(refund)
    if _rejected_by_ridendine(refund):
        problem = RideNDineRejected(
            f"RideNDine rejected the refund: {refund.failure_reason or 'no reason given'}",
            refund=body,
        )
        return Answer(status=problem.status, body=problem.to_dict(), problem=problem)
    return Answer(
        status=202, body={"refund": body}, headers={"Location": f"/ridendine/refunds/{refund.id}"}
    )


def _rejected_by_ridendine(refund: Refund) -> bool:
    """FAILED by RideNDine's definite no (not by retries running out, which stays a 202)."""
    return refund.status == RefundStatus.FAILED and any(
        change.to_status == RefundStatus.FAILED and change.source == ledger.SOURCE_RIDENDINE_API
        for change in refund.history
    )


# -- Idempotency-Key -------------------------------------------------------------------------


def _earlier_answer(
    services: Services, scope: str, key: str, request_hash: str, *, wait: bool
) -> Answer | None:
    """The answer already given for this key, waiting briefly while it is in flight; None
    when the key is new. Another body with the key is 409."""
    with services.store.transaction(read_only=True) as transaction:
        if transaction.scalar(_KEY_EXISTS, _key(scope, key)) is None:
            return None  # the usual case, told by the driver (docs/performance.md)
    deadline = time.monotonic() + (IDEMPOTENCY_WAIT_SECONDS if wait else 0.0)
    while True:
        with services.store.read_session() as session:
            record = session.execute(_KEY_RECORD, _key(scope, key)).first()
        if record is None:
            return None
        if not _same_hash(record.request_hash, request_hash):
            raise IdempotencyKeyReused(
                "This Idempotency-Key was used with another body; use a new key."
            )
        if record.response_status is not None:
            return _replay(record)
        if record.refund_id and utcnow() - record.created_at > timedelta(
            seconds=IDEMPOTENCY_STALE_SECONDS
        ):
            answer = answer_for_refund(services, record.refund_id)
            _save_answer(services, scope, key, answer)
            answer.replayed = True
            return answer
        if time.monotonic() >= deadline:
            raise IdempotencyKeyInProgress(
                "A request with this Idempotency-Key is still running; retry shortly."
            )
        time.sleep(IDEMPOTENCY_POLL_SECONDS)


def _same_hash(stored: str, given: str) -> bool:
    return hmac.compare_digest(stored, given)


def _save_answer(services: Services, scope: str, key: str, answer: Answer) -> None:
    with services.store.session() as session:
        _save_answer_in(session, scope, key, answer)


def _save_answer_in(session: Transaction, scope: str, key: str, answer: Answer) -> None:
    values = {
        **_key(scope, key),
        "b_status": answer.status,
        "b_body": answer.body,
        "b_headers": answer.headers,
    }
    session.execute(_SAVE_ANSWER, values)


def _key(scope: str, key: str) -> dict[str, str]:
    return {"b_caller": scope, "b_key": key}


# Built once (a refund request's CPU: docs/performance.md). Core: the record is only read.
_KEYS = cast(Table, IdempotencyRecord.__table__)
_INSERT_KEY = insert(_KEYS)
_KEY_IS = (_KEYS.c.caller == bindparam("b_caller")) & (_KEYS.c.key == bindparam("b_key"))
_KEY_RECORD = select(_KEYS).where(_KEY_IS)
_KEY_EXISTS = select(_KEYS.c.caller).where(_KEY_IS)
_SAVE_ANSWER = (
    update(_KEYS)
    .where(_KEY_IS)
    .values(
        response_status=bindparam("b_status"),
        response_body=bindparam("b_body", type_=_KEYS.c.response_body.type),
        response_headers=bindparam("b_headers", type_=_KEYS.c.response_headers.type),
    )
)


def _replay(record: Row[Any]) -> Answer:
    body = dict(record.response_body or {})
    status = record.response_status or 202
    problem: Problem | None = None
    if status == RideNDineRejected.status:
        problem = RideNDineRejected(str(body.get("detail") or ""), refund=body.get("refund"))
    return Answer(
        status=status,
        body=body,
        headers=dict(record.response_headers or {}),
        problem=problem,
        replayed=True,
    )


# -- reading refunds -------------------------------------------------------------------------


def get_refund(services: Services, caller: Caller, refund_id: str) -> dict[str, Any]:
    """One refund with its history; a customer sees only refunds of their own orders (404
    otherwise, so that other refunds' existence is not revealed)."""
    with services.store.session() as session:
        refund = session.get(Refund, refund_id) if len(refund_id) <= 40 else None
        if refund is None:
            raise RefundNotFound(f"There is no refund {refund_id!r}.")
        body = ledger.refund_to_dict(refund, with_history=True)
    if caller.is_customer and not _owns_order(services, caller, body["order_id"]):
        raise RefundNotFound(f"There is no refund {refund_id!r}.")
    return {"refund": body}


def list_refunds(services: Services, caller: Caller, order_id: str) -> dict[str, Any]:
    """An order's refunds, newest first. A customer may list only their own orders' refunds
    (another's order is 404, like a missing one)."""
    if caller.is_customer and not _owns_order(services, caller, order_id):
        raise OrderNotFound(f"There is no order {order_id!r}.")
    with services.store.session() as session:
        refunds = session.scalars(
            select(Refund)
            .where(Refund.order_id == order_id)
            .order_by(Refund.created_at.desc(), Refund.id.desc())
        ).all()
        items = [ledger.refund_to_dict(refund) for refund in refunds]
    return {"order_id": order_id, "refunds": items}


def _owns_order(services: Services, caller: Caller, order_id: str) -> bool:
    try:
        order = read_order(services, order_id)
    except OrderNotFound:
        return False
    return caller.user is not None and order.customer_id == caller.user.id
