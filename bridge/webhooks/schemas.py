"""The refund-status webhook body (contract section 3), validated at the edge.

Required: `refund_id`, `external_order_id` (non-empty strings of at most 255 printable
characters), `amount_cents` (an integer from 1 to MAX_AMOUNT_CENTS: strings, floats and booleans
are refused), `status` (`REFUNDED` or `FAILED`). Every other field (`reason`, `reason_comments`,
`currency_code`, `failure_reason`, `amount_details`, `items`, anything new) is accepted and kept
as received.
"""

from __future__ import annotations

import json
from typing import Any

from marshmallow import INCLUDE, Schema, ValidationError, fields, validate

from bridge.errors import ValidationProblem

STATUSES = ("REFUNDED", "FAILED")
MAX_ID_LENGTH = 255
# Ten billion in major units: far above any food order, far below what a BigInteger holds.
MAX_AMOUNT_CENTS = 10**12


def _printable(value: str) -> None:
    if not value.strip() or not value.isprintable():
        raise ValidationError("Must be non-empty printable text.")


def _identifier() -> fields.String:
    return fields.String(
        required=True,
        validate=[validate.Length(min=1, max=MAX_ID_LENGTH), _printable],
    )


class RefundStatusEventSchema(Schema):
    class Meta:
        unknown = INCLUDE

    refund_id = _identifier()
    external_order_id = _identifier()
    amount_cents = fields.Integer(
        required=True, strict=True, validate=validate.Range(min=1, max=MAX_AMOUNT_CENTS)
    )
    status = fields.String(required=True, validate=validate.OneOf(STATUSES))


# One instance for every request: loading keeps no state on the schema (built once: a
# schema's construction cost more than its load).
_SCHEMA = RefundStatusEventSchema()


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _valid_identifier(value: Any) -> bool:
    return (
        type(value) is str
        and 1 <= len(value) <= MAX_ID_LENGTH
        and value.isprintable()
        and not value.isspace()
    )


def plainly_valid(data: dict[str, Any]) -> bool:
    """The schema's rules, checked by hand for the body nearly every delivery is: when True,
    loading would return the same values (unknown fields are kept as they are), so the schema
    is skipped (a good part of a webhook's CPU, docs/performance.md). Anything else, False:
    the schema decides and words the errors. Public for its property test
    (tests/webhooks/test_schemas.py), which ties it to the schema."""
    amount = data.get("amount_cents")
    return (
        _valid_identifier(data.get("refund_id"))
        and _valid_identifier(data.get("external_order_id"))
        and type(amount) is int
        and 1 <= amount <= MAX_AMOUNT_CENTS
        and data.get("status") in STATUSES
        and type(data.get("status")) is str
    )


def parse_event(raw_body: bytes) -> dict[str, Any]:
    """The body as a validated dict (unknown fields kept), or ValidationProblem (400)."""
    try:
        data = json.loads(raw_body.decode("utf-8"), parse_constant=_no_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValidationProblem(
            {"_body": ["The body is not valid JSON."]}, "The body is not valid JSON."
        ) from None
    if not isinstance(data, dict):
        raise ValidationProblem({"_body": ["The body must be a JSON object."]})
    try:
        # The payload is stored as JSON: lone surrogates ("\ud800") cannot be.
        json.dumps(data, ensure_ascii=False).encode("utf-8")
    except (UnicodeEncodeError, RecursionError):
        raise ValidationProblem(
            {"_body": ["The body cannot be stored: invalid Unicode or too deeply nested."]}
        ) from None
    if plainly_valid(data):
        return data
    try:
        loaded: dict[str, Any] = _SCHEMA.load(data)
    except ValidationError as exc:
        messages = exc.messages if isinstance(exc.messages, dict) else {"_body": exc.messages}
        raise ValidationProblem(messages) from None
    return loaded
