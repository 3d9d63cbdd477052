"""GET /ridendine/refunds/stats?month=YYYY-MM: the monthly refund report for admins.

Registered before the refunds blueprint; Flask matches this static rule ahead of
`/ridendine/refunds/<id>` anyway, so a refund can never be shadowed (refund ids start `rf_`).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Blueprint, request
from sqlalchemy.exc import SQLAlchemyError

from bridge.errors import Forbidden, ServiceUnavailable, ValidationProblem
from bridge.ops.report import BadMonth, build_report, current_month
from bridge.services import get_services
from bridge.web.auth import ACTING_USER_HEADER, authenticate

bp = Blueprint("stats", __name__)
log = logging.getLogger(__name__)

ALLOWED_PARAMS = frozenset({"month"})


def require_admin() -> None:
    """Admins only: a service token acting for no one, or a Directus user with admin access
    (directly or through the service token's `X-Directus-User-Id`)."""
    caller = authenticate(
        get_services(),
        request.headers.get("Authorization"),
        request.headers.get(ACTING_USER_HEADER),
    )
    if caller.kind == "service" and caller.user is None:
        return
    if caller.user is not None and caller.user.is_admin:
        return
    raise Forbidden("Only admins can read refund statistics.")


@bp.get("/ridendine/refunds/stats")
def refund_stats() -> dict[str, Any]:
    require_admin()
    unknown = sorted(set(request.args) - ALLOWED_PARAMS)
    if unknown:
        raise ValidationProblem({name: ["Unknown parameter."] for name in unknown})
    month = request.args.get("month") or current_month()
    try:
        report = build_report(get_services(), month)
    except BadMonth:
        raise ValidationProblem({"month": ["Use YYYY-MM, e.g. 2025-03."]}) from None
    except SQLAlchemyError:
        log.warning("refund stats: the store did not answer", exc_info=True)
        raise ServiceUnavailable("The refund ledger is unavailable; try again shortly.") from None
    return {"stats": report.as_dict()}
