"""POST /ridendine/webhooks/refund-status: verify, validate, record, answer (thin)."""

from __future__ import annotations

import json

from flask import Blueprint, Response, g, request

from bridge import logs, metrics
from bridge.errors import ServiceUnavailable, UnsupportedMediaType
from bridge.services import get_services
from bridge.webhooks import inbox
from bridge.webhooks.schemas import parse_event
from bridge.webhooks.verify import verify_request

bp = Blueprint("webhooks", __name__)

# The two answers' bodies, made once: Flask's JSON response showed in the ingest profile.
_ANSWERS = {
    outcome: json.dumps({"status": outcome}, separators=(",", ":")).encode() + b"\n"
    for outcome in ("accepted", "duplicate")
}


@bp.post("/ridendine/webhooks/refund-status")
def refund_status() -> Response:
    services = get_services()
    # Reading the body enforces MAX_CONTENT_LENGTH (413 problem+json) before anything else.
    raw_body = request.get_data(cache=True)
    webhook_id = verify_request(services.settings, raw_body, dict(request.headers))
    if request.mimetype != "application/json":
        raise UnsupportedMediaType("The body must be JSON (Content-Type: application/json).")
    payload = parse_event(raw_body)
    logs.bind(order_id=payload["external_order_id"], ridendine_refund_id=payload["refund_id"])
    headers = inbox.stored_headers(request.headers)
    if getattr(g, "request_id", None):
        headers["x-request-id"] = g.request_id
    try:
        recorded = inbox.record(
            services,
            webhook_id=webhook_id,
            payload=payload,
            raw_body=raw_body,
            headers=headers,
        )
    except inbox.InboxUnavailable:
        raise ServiceUnavailable(
            "The event could not be recorded; please deliver it again."
        ) from None
    # Recorded: the worker matches and applies it (docs/webhooks.md).
    outcome = "duplicate" if recorded.duplicate else "accepted"
    setattr(g, metrics.WEBHOOK_OUTCOME, outcome)  # counted without reading the answer back
    return Response(_ANSWERS[outcome], status=200, mimetype="application/json")
