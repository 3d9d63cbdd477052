"""The refund request body (contract section 1), validated at the edge with marshmallow.

Integers are strict (no floats, strings or booleans), unknown fields are refused, and every
error is reported per field. The reason catalogue is configuration, so the schema is built with
the configured reasons.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from marshmallow import (
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates,
    validates_schema,
)

REQUESTED_BY = ("customer", "admin")
MAX_ID_CHARS = 255
MAX_COMMENT_CHARS = 500
MAX_ITEMS = 100
MAX_QUANTITY = 10_000
# 10 billion in major units: far above any order, far below what a BIGINT or a JSON number holds.
MAX_AMOUNT_CENTS = 10**12


class Identifier(fields.Field[str]):
    """A Directus primary key or a partner's id: a string (an integer is taken as its string),
    1 to 255 characters, without control characters."""

    default_error_messages = {
        "invalid": "Must be a string or an integer.",
        "length": f"Must be 1 to {MAX_ID_CHARS} characters.",
        "characters": "Must not contain control characters.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if isinstance(value, bool) or not isinstance(value, str | int):
            raise self.make_error("invalid")
        text = str(value)
        if not 1 <= len(text) <= MAX_ID_CHARS or not text.strip():
            raise self.make_error("length")
        if any(not ch.isprintable() for ch in text):
            raise self.make_error("characters")
        return text


def _cents(*, minimum: int, required: bool = False) -> fields.Integer:
    return fields.Integer(
        strict=True,
        required=required,
        validate=validate.Range(min=minimum, max=MAX_AMOUNT_CENTS),
    )


class RefundItemSchema(Schema):
    """One line item; `amount_cents` is the line's total (not a unit price)."""

    class Meta:
        unknown = RAISE

    external_id = Identifier(required=True)
    name = fields.String(required=True, validate=validate.Length(min=1, max=MAX_ID_CHARS))
    quantity = fields.Integer(
        strict=True, required=True, validate=validate.Range(min=1, max=MAX_QUANTITY)
    )
    amount_cents = _cents(minimum=0, required=True)


@dataclass(frozen=True)
class RefundRequest:
    """A valid refund request body. `amount_cents` is None when the body asks for all that is
    still refundable, or for a `percent` (resolved against the order)."""

    order_id: str
    reason: str
    amount_cents: int | None = None
    percent: int | None = None
    items: list[dict[str, Any]] | None = None
    requested_by: str | None = None
    requested_by_user: str | None = None
    reason_comments: str | None = None


class RefundRequestSchema(Schema):
    class Meta:
        unknown = RAISE

    order_id = Identifier(required=True)
    amount_cents = _cents(minimum=1)
    reason = fields.String(required=True)
    requested_by = fields.String(validate=validate.OneOf(REQUESTED_BY))
    requested_by_user = fields.String(
        allow_none=True, validate=validate.Length(min=1, max=MAX_ID_CHARS)
    )
    reason_comments = fields.String(
        allow_none=True, validate=validate.Length(max=MAX_COMMENT_CHARS)
    )
    items = fields.List(
        fields.Nested(RefundItemSchema), validate=validate.Length(min=1, max=MAX_ITEMS)
    )
    percent = fields.Integer(strict=True, validate=validate.Range(min=1, max=100))

    def __init__(self, reasons: Iterable[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.reasons = tuple(reasons)

    @validates("reason")
    def _known_reason(self, value: str, data_key: str) -> None:
        if value not in self.reasons:
            raise ValidationError(f"Must be one of: {', '.join(self.reasons)}.")

    @validates_schema
    def _amount_rules(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "percent" in data and ("amount_cents" in data or "items" in data):
            raise ValidationError("Not allowed together with amount_cents or items.", "percent")
        items = data.get("items")
        if items:
            total = sum(item["amount_cents"] for item in items)
            if total < 1:
                raise ValidationError("The items must add up to at least 1 cent.", "items")
            amount = data.get("amount_cents")
            if amount is not None and amount != total:
                raise ValidationError(
                    f"Must equal the sum of the items' amount_cents ({total}).", "amount_cents"
                )

    @post_load
    def _to_request(self, data: dict[str, Any], **kwargs: Any) -> RefundRequest:
        items = data.get("items")
        amount = data.get("amount_cents")
        if amount is None and items:
            amount = sum(item["amount_cents"] for item in items)
        return RefundRequest(
            order_id=data["order_id"],
            reason=data["reason"],
            amount_cents=amount,
            percent=data.get("percent"),
            items=items,
            requested_by=data.get("requested_by"),
            requested_by_user=data.get("requested_by_user"),
            reason_comments=data.get("reason_comments"),
        )


@lru_cache(maxsize=8)
def refund_request_schema(reasons: tuple[str, ...]) -> RefundRequestSchema:
    """The schema for these reasons, made once: making a schema copies its fields, which was
    a good part of a request's validation (docs/performance.md). A schema keeps no state
    between loads (marshmallow 4 has no context), so threads share it."""
    return RefundRequestSchema(reasons=reasons)


class DecisionSchema(Schema):
    """The body of POST /ridendine/refunds/<id>/approve and /deny (contract section 1a): an
    optional comment, kept with the decision (a deny's is e-mailed to the customer)."""

    class Meta:
        unknown = RAISE

    comment = fields.String(allow_none=True, validate=validate.Length(max=MAX_COMMENT_CHARS))
