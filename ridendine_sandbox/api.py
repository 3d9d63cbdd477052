"""The partner's API as the bridge sees it: POST /refunds/create (contract section 2)."""

from __future__ import annotations

import hmac
import json
from typing import Any

from flask import Blueprint, Response, current_app, request
from marshmallow import ValidationError

from ridendine_sandbox.sandbox import Answer, Sandbox, error_body
from ridendine_sandbox.schemas import RefundCreateSchema, flat_message, load

bp = Blueprint("ridendine_api", __name__)
MAX_KEY_LENGTH = 255
BODY_EXCERPT_CHARS = 4000


def get_sandbox() -> Sandbox:
    sandbox: Sandbox = current_app.extensions["ridendine_sandbox"]
    return sandbox


def json_response(status: int, body: dict[str, Any], **headers: str) -> Response:
    response = Response(json.dumps(body), status=status, mimetype="application/json")
    response.headers.update(headers)
    return response


def _authorized(header: str, api_key: str) -> bool:
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return False
    return hmac.compare_digest(token.strip().encode(), api_key.encode())


def _parsed_body(raw: bytes) -> Any:
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None


@bp.post("/refunds/create")
def create_refund() -> Response:
    sandbox = get_sandbox()
    raw = request.get_data(cache=True)
    body = _parsed_body(raw)
    key = request.headers.get("Idempotency-Key", "").strip()
    authorized = _authorized(request.headers.get("Authorization", ""), sandbox.config.api_key)
    answer = _answer(sandbox, authorized, key, body)
    sandbox.record_request(
        {
            "method": request.method,
            "path": request.path,
            "idempotency_key": key or None,
            "authorized": authorized,
            "content_type": request.content_type,
            "body": body
            if body is not None
            else raw.decode("utf-8", "replace")[:BODY_EXCERPT_CHARS],
            "status": answer.status,
            "response": answer.body,
            "replayed": answer.replayed,
            "scenario": answer.scenario,
        }
    )
    if answer.wait_for is not None:
        # `early`: the result webhook is sent before the caller gets this answer.
        answer.wait_for.first_attempt_done.wait(sandbox.config.early_wait_seconds)
    headers = {"Idempotent-Replayed": "true"} if answer.replayed else {}
    if answer.status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="ridendine"'
    if answer.status == 503:
        headers["Retry-After"] = "1"
    return json_response(answer.status, answer.body, **headers)


def _answer(sandbox: Sandbox, authorized: bool, key: str, body: Any) -> Answer:
    if not authorized:
        return Answer(401, error_body("unauthorized", "Missing or invalid API key."))
    if not key:
        return Answer(
            400, error_body("idempotency_key_required", "The Idempotency-Key header is required.")
        )
    if len(key) > MAX_KEY_LENGTH:
        return Answer(
            400,
            error_body(
                "invalid_request", f"Idempotency-Key must be at most {MAX_KEY_LENGTH} characters."
            ),
        )
    if not request.is_json:
        return Answer(400, error_body("invalid_request", "Content-Type must be application/json."))
    if body is None:
        return Answer(400, error_body("invalid_request", "The body is not valid JSON."))
    try:
        valid = load(RefundCreateSchema(), body)
    except ValidationError as exc:
        return Answer(
            400,
            error_body("invalid_request", flat_message(exc.messages), fields=exc.messages),
        )
    return sandbox.create_refund(key, valid)
