"""Control and inspection endpoints under /_sandbox/ for tests and demos (no auth: the sandbox
is a local stand-in, never deployed)."""

from __future__ import annotations

import dataclasses
from typing import Any

from flask import Blueprint, Response, request
from marshmallow import ValidationError

from ridendine_sandbox.api import get_sandbox, json_response
from ridendine_sandbox.sandbox import error_body, new_refund_id
from ridendine_sandbox.schemas import (
    BehaviourSchema,
    EventSchema,
    RuleSchema,
    flat_message,
    load,
)

bp = Blueprint("ridendine_control", __name__, url_prefix="/_sandbox")
FILTERS = {
    "requests": ("idempotency_key", "external_order_id", "ridendine_order_id", "status"),
    "deliveries": ("refund_id", "external_order_id", "webhook_id", "state", "kind", "status"),
    "refunds": ("refund_id", "external_order_id", "idempotency_key"),
}


def _filters(kind: str) -> dict[str, str]:
    return {name: request.args[name] for name in FILTERS[kind] if name in request.args}


def _body(schema: Any) -> dict[str, Any]:
    loaded: dict[str, Any] = load(schema, request.get_json(silent=True))
    return loaded


def _invalid(exc: ValidationError) -> Response:
    return json_response(
        400, error_body("invalid_request", flat_message(exc.messages), fields=exc.messages)
    )


@bp.get("/health")
def health() -> Response:
    return json_response(200, {"status": "ok"})


@bp.get("/settings")
def settings() -> Response:
    sandbox = get_sandbox()
    config = sandbox.config
    return json_response(
        200,
        {
            "behaviour": dataclasses.asdict(sandbox.behaviour),
            "signing": bool(config.webhook_secret),
            "bearer": bool(config.webhook_bearer_token),
            "currency_code": config.currency_code,
            "max_attempts": config.max_attempts,
            "retry_base_seconds": config.retry_base_seconds,
            "retry_max_seconds": config.retry_max_seconds,
            "delivery_timeout_seconds": config.delivery_timeout_seconds,
            "early_wait_seconds": config.early_wait_seconds,
        },
    )


@bp.patch("/settings")
def update_settings() -> Response:
    try:
        changes = _body(BehaviourSchema())
    except ValidationError as exc:
        return _invalid(exc)
    behaviour = get_sandbox().update_behaviour(changes)
    return json_response(200, {"behaviour": dataclasses.asdict(behaviour)})


@bp.get("/rules")
def list_rules() -> Response:
    return json_response(200, {"rules": get_sandbox().rules()})


@bp.post("/rules")
def set_rule() -> Response:
    """A behaviour for one order's refunds (by external_order_id), over the global one."""
    try:
        rule = _body(RuleSchema())
    except ValidationError as exc:
        return _invalid(exc)
    order_id = rule.pop("external_order_id")
    get_sandbox().set_rule(order_id, rule)
    return json_response(201, {"external_order_id": order_id, "rule": rule})


@bp.get("/requests")
def list_requests() -> Response:
    found = get_sandbox().requests(**_filters("requests"))
    return json_response(200, {"count": len(found), "requests": found})


@bp.get("/deliveries")
def list_deliveries() -> Response:
    found = get_sandbox().deliveries(**_filters("deliveries"))
    return json_response(200, {"count": len(found), "deliveries": found})


@bp.get("/refunds")
def list_refunds() -> Response:
    found = get_sandbox().refunds(**_filters("refunds"))
    return json_response(200, {"count": len(found), "refunds": found})


@bp.post("/events")
def send_event() -> Response:
    """Send a result webhook by hand: for a refund the sandbox knows (fields default to it), or
    for one it never saw (a refund started outside COOCO)."""
    sandbox = get_sandbox()
    try:
        given = _body(EventSchema())
    except ValidationError as exc:
        return _invalid(exc)
    refund = sandbox.refund(given["refund_id"]) if "refund_id" in given else None
    external_order_id = given.get("external_order_id") or (
        refund.external_order_id if refund else None
    )
    amount_cents = given.get("amount_cents") or (refund.amount_cents if refund else None)
    missing = {
        name: ["Required when the refund is not known to the sandbox."]
        for name, value in (
            ("external_order_id", external_order_id),
            ("amount_cents", amount_cents),
        )
        if value is None
    }
    if missing or external_order_id is None:
        return _invalid(ValidationError(missing))
    event: dict[str, Any] = {
        "refund_id": given.get("refund_id") or new_refund_id(),
        "external_order_id": external_order_id,
        "amount_cents": amount_cents,
        "status": given["status"],
        "reason": given.get("reason") or (refund.reason if refund else "chef_rejected"),
        "currency_code": given.get("currency_code", sandbox.config.currency_code),
    }
    if given["status"] == "FAILED":
        event["failure_reason"] = given.get("failure_reason") or sandbox.behaviour.failure_reason
    event.update(given.get("extra", {}))
    message = sandbox.send_event(
        event,
        url=given.get("bridge_webhook_url")
        or sandbox.behaviour_for(external_order_id).bridge_webhook_url,
        delay=given.get("delay_seconds", 0.0),
        webhook_id=given.get("webhook_id"),
    )
    return json_response(202, message.as_dict())


@bp.post("/reset")
def reset() -> Response:
    get_sandbox().reset()
    return json_response(200, {"status": "reset"})
