"""The OpenAPI 3.1 description of the bridge's HTTP API, built with apispec from marshmallow.

Request bodies are described by the very schemas that validate them (RefundRequestSchema in
bridge/refunds/schemas.py, RefundStatusEventSchema in bridge/webhooks/schemas.py). Answers have
no schema in the code path (views return dicts built by the ledger), so the answer schemas below
describe them, and tests hold the two together: schemathesis checks every answer of the live app
against this description (tests/web/test_fuzz_api.py), and tests/test_openapi.py checks that the
refund schema names exactly the keys `ledger.refund_to_dict` gives and that every URL rule of the
app is described.

Served at GET /ridendine/openapi.json (built once per app from its settings: the reason catalogue
is configuration). `refund-bridge openapi` writes the description for the default settings to
docs/openapi.json, which is committed; a test fails when the two drift.
"""

from __future__ import annotations

import json
import types
import typing
from importlib import metadata
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Flask, Response, current_app
from marshmallow import INCLUDE, Schema, fields, validate

from bridge.config import DEFAULT_REASONS
from bridge.errors import PROBLEM_CONTENT_TYPE
from bridge.ops.report import RefundReport
from bridge.refunds.intake import MAX_IDEMPOTENCY_KEY_CHARS
from bridge.refunds.schemas import (
    MAX_ID_CHARS,
    DecisionSchema,
    Identifier,
    RefundItemSchema,
    RefundRequestSchema,
)
from bridge.store.models import RefundSource, RefundStatus
from bridge.webhooks.schemas import RefundStatusEventSchema

OPENAPI_VERSION = "3.1.0"
SPEC_PATH = "/ridendine/openapi.json"
JSON = "application/json"
_SPEC_KEY = "bridge.openapi"

bp = Blueprint("openapi", __name__)


# -- answer schemas (what the views return; held to the real answers by the fuzz tests) -------


class RefundHistoryEntrySchema(Schema):
    from_status = fields.String(required=True, allow_none=True)
    to_status = fields.String(required=True)
    source = fields.String(required=True)
    detail = fields.String(required=True, allow_none=True)
    at = fields.DateTime(required=True)


def _status() -> fields.String:
    return fields.String(required=True, validate=validate.OneOf([s.value for s in RefundStatus]))


class RefundSchema(Schema):
    """A refund as the API shows it (contract section 1; `ledger.refund_to_dict`)."""

    id = fields.String(required=True)
    order_id = fields.String(required=True)
    ridendine_order_id = fields.String(required=True, allow_none=True)
    amount_cents = fields.Integer(required=True, validate=validate.Range(min=1))
    refunded_amount_cents = fields.Integer(required=True, allow_none=True)
    currency = fields.String(required=True, validate=validate.Length(equal=3))
    reason = fields.String(required=True)
    reason_comments = fields.String(required=True, allow_none=True)
    requested_by = fields.String(required=True)
    requested_by_user = fields.String(required=True, allow_none=True)
    items = fields.List(fields.Dict(), required=True, allow_none=True)
    status = _status()
    ridendine_refund_id = fields.String(required=True, allow_none=True)
    source = fields.String(required=True, validate=validate.OneOf([s.value for s in RefundSource]))
    needs_review = fields.Boolean(required=True)
    review_reason = fields.String(required=True, allow_none=True)
    failure_reason = fields.String(required=True, allow_none=True)
    # An admin's approve or deny of a REQUESTED refund (contract section 1a).
    decided_by = fields.String(required=True, allow_none=True)
    decided_at = fields.DateTime(required=True, allow_none=True)
    decision_comment = fields.String(required=True, allow_none=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class RefundWithHistorySchema(RefundSchema):
    history = fields.List(fields.Nested(RefundHistoryEntrySchema), required=True)


class RefundAnswerSchema(Schema):
    refund = fields.Nested(RefundSchema, required=True)


class RefundWithHistoryAnswerSchema(Schema):
    refund = fields.Nested(RefundWithHistorySchema, required=True)


class RefundListSchema(Schema):
    order_id = fields.String(required=True)
    refunds = fields.List(fields.Nested(RefundSchema), required=True)


class WebhookAnswerSchema(Schema):
    status = fields.String(required=True, validate=validate.OneOf(["accepted", "duplicate"]))


class HealthSchema(Schema):
    status = fields.String(required=True, validate=validate.Equal("ok"))


class ReadySchema(HealthSchema):
    checks = fields.Dict(keys=fields.String(), values=fields.String(), required=True)


class ProblemSchema(Schema):
    """RFC 9457 problem details (contract section 6); further members are the problem's own."""

    class Meta:
        unknown = INCLUDE

    type = fields.String(required=True)
    title = fields.String(required=True)
    status = fields.Integer(required=True, validate=validate.Range(min=400, max=599))
    detail = fields.String(required=True)
    code = fields.String(required=True)
    request_id = fields.String()
    errors = fields.Dict(keys=fields.String())
    refundable_cents = fields.Integer(validate=validate.Range(min=0))
    refund = fields.Nested(RefundSchema)


def _field_for(annotation: Any) -> fields.Field[Any]:
    """A marshmallow field for a RefundReport attribute's type, so the stats schema follows
    the dataclass instead of repeating it."""
    args = typing.get_args(annotation)
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        kinds = [arg for arg in args if arg is not type(None)]
        number = set(kinds) <= {int, float} and len(kinds) > 1
        field = fields.Float() if number else _field_for(kinds[0])
        field.allow_none = type(None) in args
        return field
    origin = typing.get_origin(annotation)
    if origin is dict:
        return fields.Dict(keys=fields.String(), values=_field_for(args[1]))
    if origin is list:
        return fields.List(_field_for(args[0]))
    simple: dict[Any, type[fields.Field[Any]]] = {
        int: fields.Integer,
        float: fields.Float,
        str: fields.String,
        bool: fields.Boolean,
    }
    return simple.get(annotation, fields.Raw)()


def stats_schema() -> type[Schema]:
    hints = typing.get_type_hints(RefundReport)
    report_fields = {name: _field_for(kind) for name, kind in hints.items()}
    for field in report_fields.values():
        field.required = True  # as_dict() gives every attribute
    report = Schema.from_dict(report_fields, name="RefundStatsSchema")
    return Schema.from_dict(
        {"stats": fields.Nested(report, required=True)}, name="RefundStatsAnswerSchema"
    )


# -- the description ---------------------------------------------------------------------------


def _identifier_property(self: Any, field: fields.Field[Any], **kwargs: Any) -> dict[str, Any]:
    """Identifier accepts a string or an integer (taken as its string)."""
    if isinstance(field, Identifier):
        return {"type": ["string", "integer"], "minLength": 1, "maxLength": MAX_ID_CHARS}
    return {}


def _problem(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {PROBLEM_CONTENT_TYPE: {"schema": "Problem"}},
    }


def _json(schema: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"description": description, "content": {JSON: {"schema": schema}}, **extra}


REQUEST_ID_HEADER = {
    "X-Request-Id": {
        "description": "The caller's X-Request-Id when it is a safe token, else a new id.",
        "schema": {"type": "string"},
        "required": True,
    }
}
BAD_REQUEST = _problem("The request is not valid (`validation_error`, `errors` per field).")
NOT_AUTHENTICATED = _problem("No valid credentials (`not_authenticated`).")
FORBIDDEN = _problem("The caller may not do this (`forbidden`).")
UNAVAILABLE = _problem(
    "Directus or the store did not answer, or the bridge's own Directus token lacks a "
    "permission to check the caller (its configuration, not the caller's token); try again "
    "(`*_unavailable`)."
)
TOO_LARGE = _problem("The body is over 64 KiB (`payload_too_large`).")
NOT_JSON = _problem("The body is not `application/json` (`unsupported_media_type`).")
ACTING_USER = {
    "name": "X-Directus-User-Id",
    "in": "header",
    "required": False,
    "description": "With a service token: the Directus user the caller acts for.",
    "schema": {"type": "string", "format": "uuid"},
}


def _paths(spec: APISpec) -> None:
    bearer: list[dict[str, list[str]]] = [{"bearerAuth": []}]
    spec.path(
        path="/healthz",
        operations={
            "get": {
                "operationId": "healthz",
                "summary": "The process is up.",
                "responses": {"200": _json("Health", "Up.")},
            }
        },
    )
    spec.path(
        path="/readyz",
        operations={
            "get": {
                "operationId": "readyz",
                "summary": "The store and Directus answer.",
                "responses": {
                    "200": _json("Ready", "Ready."),
                    "503": _problem("Not ready; `checks` names what is not."),
                },
            }
        },
    )
    spec.path(
        path="/metrics",
        operations={
            "get": {
                "operationId": "metrics",
                "summary": "Prometheus metrics (a bearer token when BRIDGE_METRICS_TOKEN is set).",
                "responses": {
                    "200": {
                        "description": "Prometheus text format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    "401": NOT_AUTHENTICATED,
                },
            }
        },
    )
    spec.path(
        path=SPEC_PATH,
        operations={
            "get": {
                "operationId": "openapi",
                "summary": "This description.",
                "responses": {
                    "200": {
                        "description": "OpenAPI 3.1.",
                        "content": {JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    )
    spec.path(
        path="/ridendine/refunds",
        operations={
            "post": {
                "operationId": "requestRefund",
                "summary": "Request a refund of an order (contract section 1).",
                "security": bearer,
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "description": "The same key and body answer the first answer again.",
                        "schema": {
                            "type": "string",
                            "minLength": 1,
                            "maxLength": MAX_IDEMPOTENCY_KEY_CHARS,
                        },
                    },
                    ACTING_USER,
                ],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": "RefundRequest"}},
                },
                "responses": {
                    "202": _json(
                        "RefundAnswer",
                        "Recorded and sent (or being sent) to RideNDine.",
                        headers={
                            "Location": {
                                "description": "The refund's URL.",
                                "schema": {"type": "string"},
                                "required": True,
                            },
                            **REQUEST_ID_HEADER,
                        },
                    ),
                    "400": BAD_REQUEST,
                    "401": NOT_AUTHENTICATED,
                    "403": FORBIDDEN,
                    "404": _problem("No such order (`order_not_found`)."),
                    "409": _problem(
                        "`order_not_refundable`, `amount_exceeds_refundable` (with "
                        "`refundable_cents`), `idempotency_key_reused` or "
                        "`idempotency_key_in_progress`."
                    ),
                    "413": TOO_LARGE,
                    "415": NOT_JSON,
                    "422": _problem("RideNDine rejected the refund (`ridendine_rejected`)."),
                    "503": UNAVAILABLE,
                },
            },
            "get": {
                "operationId": "listRefunds",
                "summary": "An order's refunds, newest first.",
                "security": bearer,
                "parameters": [
                    {
                        "name": "order_id",
                        "in": "query",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
                    },
                    ACTING_USER,
                ],
                "responses": {
                    "200": _json("RefundList", "The order's refunds."),
                    "400": BAD_REQUEST,
                    "401": NOT_AUTHENTICATED,
                    "403": FORBIDDEN,
                    "404": _problem("No such order, or not the customer's (`order_not_found`)."),
                    "503": UNAVAILABLE,
                },
            },
        },
    )
    spec.path(
        path="/ridendine/refunds/stats",
        operations={
            "get": {
                "operationId": "refundStats",
                "summary": "The monthly refund report, for admins.",
                "security": bearer,
                "parameters": [
                    {
                        "name": "month",
                        "in": "query",
                        "required": False,
                        "description": "`YYYY-MM` (UTC); default: the current month.",
                        "schema": {"type": "string"},
                    },
                    ACTING_USER,
                ],
                "responses": {
                    "200": _json("RefundStatsAnswer", "The report of the month."),
                    "400": BAD_REQUEST,
                    "401": NOT_AUTHENTICATED,
                    "403": FORBIDDEN,
                    "503": UNAVAILABLE,
                },
            }
        },
    )
    spec.path(
        path="/ridendine/refunds/{refund_id}",
        operations={
            "get": {
                "operationId": "getRefund",
                "summary": "One refund with its history of status changes.",
                "security": bearer,
                "parameters": [
                    {
                        "name": "refund_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "minLength": 1},
                    },
                    ACTING_USER,
                ],
                "responses": {
                    "200": _json("RefundWithHistoryAnswer", "The refund."),
                    "401": NOT_AUTHENTICATED,
                    "403": FORBIDDEN,
                    "404": _problem("No such refund, or not the customer's (`refund_not_found`)."),
                    "503": UNAVAILABLE,
                },
            }
        },
    )
    for verb, summary, done in (
        (
            "approve",
            "An admin approves a REQUESTED refund: PENDING, sent to RideNDine (section 1a).",
            _json("RefundAnswer", "Approved and sent (or being sent) to RideNDine."),
        ),
        (
            "deny",
            "An admin denies a REQUESTED refund: DENIED, the customer is e-mailed (section 1a).",
            _json("RefundWithHistoryAnswer", "Denied; the amount no longer counts."),
        ),
    ):
        spec.path(
            path=f"/ridendine/refunds/{{refund_id}}/{verb}",
            operations={
                "post": {
                    "operationId": f"{verb}Refund",
                    "summary": summary,
                    "security": bearer,
                    "parameters": [
                        {
                            "name": "refund_id",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1},
                        },
                        {**ACTING_USER, "description": "With a service token: the admin."},
                    ],
                    "requestBody": {
                        "required": False,
                        "content": {JSON: {"schema": "Decision"}},
                    },
                    "responses": {
                        "200": done,
                        "400": BAD_REQUEST,
                        "401": NOT_AUTHENTICATED,
                        "403": _problem("The caller is not an admin (`forbidden`)."),
                        "404": _problem("No such refund (`refund_not_found`)."),
                        "409": _problem(
                            "The refund is not REQUESTED (`refund_not_awaiting_approval`, with "
                            "`refund`)"
                            + (
                                "; the order is no longer refundable (`order_not_refundable`, "
                                "`amount_exceeds_refundable`)."
                                if verb == "approve"
                                else "."
                            )
                        ),
                        "415": NOT_JSON,
                        **(
                            {
                                "422": _problem(
                                    "RideNDine rejected the refund (`ridendine_rejected`)."
                                ),
                                "503": UNAVAILABLE,
                            }
                            if verb == "approve"
                            else {}
                        ),
                    },
                }
            },
        )
    spec.path(
        path="/ridendine/webhooks/refund-status",
        operations={
            "post": {
                "operationId": "refundStatusWebhook",
                "summary": "RideNDine's signed refund result (contract section 3).",
                "security": [{"standardWebhooks": []}],
                "parameters": [
                    {
                        "name": name,
                        "in": "header",
                        "required": True,
                        "description": description,
                        "schema": {"type": "string", **schema},
                    }
                    for name, description, schema in (
                        (
                            "webhook-id",
                            "The message id (printable ASCII); a redelivery repeats it.",
                            {"pattern": "^[!-~]{1,255}$"},
                        ),
                        (
                            "webhook-timestamp",
                            "Unix seconds; accepted within 5 minutes either way.",
                            {"pattern": "^[0-9]{1,12}$"},
                        ),
                    )
                ],
                "requestBody": {
                    "required": True,
                    "content": {JSON: {"schema": "RefundStatusEvent"}},
                },
                "responses": {
                    "200": _json(
                        "WebhookAnswer",
                        "Durably recorded (`accepted`), or a duplicate that changed nothing.",
                        headers=REQUEST_ID_HEADER,
                    ),
                    "400": BAD_REQUEST,
                    "401": _problem("Missing or bad signature, or a stale timestamp."),
                    "413": TOO_LARGE,
                    "415": NOT_JSON,
                    "503": _problem("The event could not be recorded; deliver it again."),
                },
            }
        },
    )


def build_spec(reasons: tuple[str, ...] = DEFAULT_REASONS) -> dict[str, Any]:
    """The OpenAPI description, as a JSON-ready dict, for the given reason catalogue."""
    plugin = MarshmallowPlugin()
    spec = APISpec(
        title="refund-bridge",
        version=metadata.version("refund-bridge"),
        openapi_version=OPENAPI_VERSION,
        plugins=[plugin],
        info={
            "description": (
                "Refunds between COOCO's Directus back office and RideNDine. Every error is "
                "RFC 9457 problem details with a stable `code`."
            )
        },
    )
    assert plugin.converter is not None
    plugin.converter.add_attribute_function(_identifier_property)
    spec.components.security_scheme("bearerAuth", {"type": "http", "scheme": "bearer"})
    spec.components.security_scheme(
        "standardWebhooks",
        {
            "type": "apiKey",
            "in": "header",
            "name": "webhook-signature",
            "description": (
                "Standard Webhooks: space-separated `v1,<base64 HMAC-SHA256>` over "
                "`{webhook-id}.{webhook-timestamp}.{raw body}` with a `whsec_` secret."
            ),
        },
    )
    spec.components.schema("RefundItem", schema=RefundItemSchema)
    spec.components.schema("RefundRequest", schema=RefundRequestSchema(reasons=reasons))
    spec.components.schema("RefundStatusEvent", schema=RefundStatusEventSchema)
    spec.components.schema("Decision", schema=DecisionSchema)
    for name, schema in (
        ("RefundHistoryEntry", RefundHistoryEntrySchema),
        ("Refund", RefundSchema),
        ("RefundWithHistory", RefundWithHistorySchema),
        ("RefundAnswer", RefundAnswerSchema),
        ("RefundWithHistoryAnswer", RefundWithHistoryAnswerSchema),
        ("RefundList", RefundListSchema),
        ("WebhookAnswer", WebhookAnswerSchema),
        ("Health", HealthSchema),
        ("Ready", ReadySchema),
        ("Problem", ProblemSchema),
        ("RefundStatsAnswer", stats_schema()),
    ):
        spec.components.schema(name, schema=schema)
    _paths(spec)
    document = spec.to_dict()
    request = document["components"]["schemas"]["RefundRequest"]["properties"]
    # The reason is checked by a validator method against the configured catalogue, which
    # apispec cannot see: the catalogue is stated here.
    request["reason"]["enum"] = list(reasons)
    return document


def render(document: dict[str, Any]) -> str:
    """The description as committed in docs/openapi.json (stable key order, final newline)."""
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def app_spec(app: Flask) -> dict[str, Any]:
    document = app.extensions.get(_SPEC_KEY)
    if document is None:
        document = app.extensions[_SPEC_KEY] = build_spec(
            app.config["BRIDGE_SETTINGS"].refund_reasons
        )
    return dict(document)


@bp.get(SPEC_PATH)
def openapi_json() -> Response:
    body = render(app_spec(current_app._get_current_object()))  # type: ignore[attr-defined]
    return Response(body, mimetype=JSON)
