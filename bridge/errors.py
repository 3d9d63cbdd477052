"""One error shape for every error: RFC 9457 problem details (contract section 6).

Views raise a `Problem` subclass; Flask's own HTTP errors and unexpected exceptions are turned
into the same shape here. No body ever carries a trace, a secret or a token.
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, g, json, request
from werkzeug.exceptions import HTTPException

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_BASE = "https://cooco.example.com/problems/"


class Problem(Exception):
    """An error answered to the caller as problem+json."""

    status: int = 400
    code: str = "bad_request"
    title: str = "Bad request"

    def __init__(
        self, detail: str | None = None, *, status: int | None = None, **extra: Any
    ) -> None:
        super().__init__(detail or self.title)
        if status is not None:
            self.status = status
        self.detail = detail or self.title
        self.extra = extra

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": TYPE_BASE + self.code,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
            "code": self.code,
        }
        body.update(self.extra)
        return body


class ValidationProblem(Problem):
    status, code, title = 400, "validation_error", "The request is not valid"

    def __init__(self, errors: dict[str, Any], detail: str | None = None) -> None:
        super().__init__(detail or "One or more fields are invalid.", errors=errors)


class NotAuthenticated(Problem):
    status, code, title = 401, "not_authenticated", "Not authenticated"


class Forbidden(Problem):
    status, code, title = 403, "forbidden", "Forbidden"


class NotFound(Problem):
    status, code, title = 404, "not_found", "Not found"


class OrderNotFound(Problem):
    status, code, title = 404, "order_not_found", "Order not found"


class RefundNotFound(Problem):
    status, code, title = 404, "refund_not_found", "Refund not found"


class MethodNotAllowed(Problem):
    status, code, title = 405, "method_not_allowed", "Method not allowed"


class OrderNotRefundable(Problem):
    status, code, title = 409, "order_not_refundable", "The order cannot be refunded"


class AmountExceedsRefundable(Problem):
    status, code, title = 409, "amount_exceeds_refundable", "Amount exceeds what is refundable"

    def __init__(self, refundable_cents: int, detail: str | None = None) -> None:
        super().__init__(
            detail or f"At most {refundable_cents} cents can still be refunded on this order.",
            refundable_cents=refundable_cents,
        )


class IdempotencyKeyReused(Problem):
    status, code, title = 409, "idempotency_key_reused", "Idempotency key reused"


class IdempotencyKeyInProgress(Problem):
    status, code, title = 409, "idempotency_key_in_progress", "A request with this key is running"


class RefundNotAwaitingApproval(Problem):
    status, code, title = 409, "refund_not_awaiting_approval", "The refund is not awaiting approval"


class PayloadTooLarge(Problem):
    status, code, title = 413, "payload_too_large", "Payload too large"


class UnsupportedMediaType(Problem):
    status, code, title = 415, "unsupported_media_type", "Unsupported media type"


class RideNDineRejected(Problem):
    status, code, title = 422, "ridendine_rejected", "RideNDine rejected the refund"


class InternalError(Problem):
    status, code, title = 500, "internal_error", "Internal error"


class DirectusUnavailable(Problem):
    status, code, title = 503, "directus_unavailable", "Directus is unavailable"


class ServiceUnavailable(Problem):
    status, code, title = 503, "service_unavailable", "Service unavailable"


# Flask/werkzeug errors by status, mapped to our codes.
_HTTP_PROBLEMS: dict[int, type[Problem]] = {
    400: Problem,
    401: NotAuthenticated,
    403: Forbidden,
    404: NotFound,
    405: MethodNotAllowed,
    413: PayloadTooLarge,
    415: UnsupportedMediaType,
    503: ServiceUnavailable,
}


def problem_response(problem: Problem) -> Response:
    body = problem.to_dict()
    request_id = getattr(g, "request_id", None)
    if request_id:
        body.setdefault("request_id", request_id)
    response = Response(json.dumps(body), status=problem.status, mimetype=PROBLEM_CONTENT_TYPE)
    if problem.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="refund-bridge"'
    return response


def _http_exception(exc: HTTPException) -> Response:
    status = exc.code or 500
    problem_cls = _HTTP_PROBLEMS.get(status)
    # werkzeug's descriptions are generic English sentences, safe to show.
    if problem_cls is None:
        problem = Problem(exc.description, status=status)
    else:
        problem = problem_cls(exc.description)
    response = problem_response(problem)
    if status == 405 and isinstance(getattr(exc, "valid_methods", None), list | tuple):
        response.headers["Allow"] = ", ".join(exc.valid_methods)  # type: ignore[attr-defined]
    return response


def _unexpected(exc: Exception) -> Response:
    if isinstance(exc, HTTPException):
        return _http_exception(exc)
    # Logged once, with the request id; the body says nothing about the cause.
    log.exception(
        "unhandled error on %s %s",
        request.method,
        request.path,
        extra={"request_id": getattr(g, "request_id", None)},
    )
    return problem_response(InternalError("An unexpected error occurred; it has been logged."))


def init_app(app: Flask) -> None:
    app.register_error_handler(Problem, problem_response)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(Exception, _unexpected)
