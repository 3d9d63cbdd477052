"""HTTP endpoints of refund requests (contract section 1): thin, the logic is in intake.py."""

from __future__ import annotations

import json
from typing import Any

from flask import Blueprint, Response, after_this_request, request

from bridge.errors import UnsupportedMediaType, ValidationProblem
from bridge.refunds import decisions, intake
from bridge.services import get_services
from bridge.web.auth import ACTING_USER_HEADER, Caller, authenticate

bp = Blueprint("refunds", __name__, url_prefix="/ridendine/refunds")

JSON_MIMETYPE = "application/json"


def _caller() -> Caller:
    return authenticate(
        get_services(),
        request.headers.get("Authorization"),
        request.headers.get(ACTING_USER_HEADER),
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _json_body() -> Any:
    """The decoded JSON body; 415 unless it is application/json, 400 when it is not JSON."""
    if request.mimetype != JSON_MIMETYPE:
        raise UnsupportedMediaType("Send the body as application/json.")
    try:
        return json.loads(request.get_data(cache=True), parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise ValidationProblem(
            {"_schema": ["The body is not valid JSON."]}, "The body is not valid JSON."
        ) from None


@bp.post("")
def create_refund() -> tuple[dict[str, Any], int, dict[str, str]]:
    caller = _caller()
    payload = _json_body()
    answer = intake.request_refund(
        get_services(), caller, payload, request.headers.get(intake.IDEMPOTENCY_HEADER)
    )
    if answer.replayed:

        @after_this_request
        def _mark_replay(response: Response) -> Response:
            response.headers["Idempotent-Replayed"] = "true"
            return response

    if answer.problem is not None:
        raise answer.problem
    return answer.body, answer.status, answer.headers


@bp.get("/<refund_id>")
def get_refund(refund_id: str) -> dict[str, Any]:
    return intake.get_refund(get_services(), _caller(), refund_id)


@bp.get("")
def list_refunds() -> dict[str, Any]:
    caller = _caller()
    order_id = intake.parse_order_id(request.args.get("order_id"))
    return intake.list_refunds(get_services(), caller, order_id)


def _optional_json_body() -> Any:
    """The decoded JSON body, or None when there is none (approve and deny need no body)."""
    if not request.get_data(cache=True):
        return None
    return _json_body()


@bp.post("/<refund_id>/approve")
def approve_refund(refund_id: str) -> tuple[dict[str, Any], int, dict[str, str]]:
    caller = _caller()
    decisions.require_admin(caller)  # 403 before the body is looked at
    answer = decisions.approve(get_services(), caller, refund_id, _optional_json_body())
    if answer.problem is not None:
        raise answer.problem
    return answer.body, answer.status, answer.headers


@bp.post("/<refund_id>/deny")
def deny_refund(refund_id: str) -> dict[str, Any]:
    caller = _caller()
    decisions.require_admin(caller)
    return decisions.deny(get_services(), caller, refund_id, _optional_json_body())
