"""Request bodies, checked at the edge with marshmallow."""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from ridendine_sandbox.config import SCENARIOS

REQUESTED_BY = ("customer", "admin")
EVENT_STATUSES = ("REFUNDED", "FAILED")
_text = validate.Length(min=1, max=255)


class RefundCreateSchema(Schema):
    """The partner's body for POST /refunds/create (contract section 2), exactly."""

    class Meta:
        unknown = RAISE

    ridendine_order_id = fields.String(required=True, validate=_text)
    external_order_id = fields.String(required=True, validate=_text)
    amount_cents = fields.Integer(
        required=True, strict=True, validate=validate.Range(min=1, max=10**12)
    )
    reason = fields.String(required=True, validate=validate.Length(min=1, max=100))
    requested_by = fields.String(required=True, validate=validate.OneOf(REQUESTED_BY))


class BehaviourSchema(Schema):
    """Changes to the behaviour (PATCH /_sandbox/settings, POST /_sandbox/rules)."""

    class Meta:
        unknown = RAISE

    scenario = fields.String(validate=validate.OneOf(SCENARIOS))
    delay_seconds = fields.Float(validate=validate.Range(min=0, max=86_400))
    late_delay_seconds = fields.Float(validate=validate.Range(min=0, max=86_400))
    gap_seconds = fields.Float(validate=validate.Range(min=0, max=3_600))
    duplicates = fields.Integer(strict=True, validate=validate.Range(min=0, max=20))
    flaky_failures = fields.Integer(strict=True, validate=validate.Range(min=0, max=100))
    reject_status = fields.Integer(strict=True, validate=validate.Range(min=400, max=499))
    reject_message = fields.String(validate=validate.Length(min=1, max=500))
    failure_reason = fields.String(validate=_text)
    bridge_webhook_url = fields.Url(allow_none=True, require_tld=False, schemes={"http", "https"})


class RuleSchema(BehaviourSchema):
    external_order_id = fields.String(required=True, validate=_text)


class EventSchema(Schema):
    """A webhook sent by hand (POST /_sandbox/events)."""

    class Meta:
        unknown = RAISE

    status = fields.String(required=True, validate=validate.OneOf(EVENT_STATUSES))
    refund_id = fields.String(validate=_text)
    external_order_id = fields.String(validate=_text)
    amount_cents = fields.Integer(strict=True, validate=validate.Range(min=1, max=10**12))
    reason = fields.String(validate=_text)
    failure_reason = fields.String(validate=_text)
    currency_code = fields.String(validate=validate.Length(equal=3))
    extra = fields.Dict(keys=fields.String())
    webhook_id = fields.String(validate=_text)
    delay_seconds = fields.Float(validate=validate.Range(min=0, max=86_400))
    bridge_webhook_url = fields.Url(require_tld=False, schemes={"http", "https"})


def load(schema: Schema, data: Any) -> dict[str, Any]:
    """`schema.load(data)` for a JSON object; raises ValidationError otherwise."""
    if not isinstance(data, dict):
        raise ValidationError({"_schema": ["The body must be a JSON object."]})
    loaded: dict[str, Any] = schema.load(data)
    return loaded


def flat_message(errors: Any) -> str:
    """One readable line from marshmallow's {field: [messages]}."""
    if isinstance(errors, dict):
        parts = []
        for name, messages in sorted(errors.items()):
            text = " ".join(messages) if isinstance(messages, list) else str(messages)
            parts.append(text if name == "_schema" else f"{name}: {text}")
        return "; ".join(parts)
    return str(errors)
