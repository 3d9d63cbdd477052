"""Liveness and readiness: cheap checks for load balancers and orchestrators."""

from __future__ import annotations

from typing import Any

from flask import Blueprint
from sqlalchemy import text

from bridge.errors import ServiceUnavailable
from bridge.services import get_directus
from bridge.store.db import get_store

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> dict[str, Any]:
    """The process is up."""
    return {"status": "ok"}


@bp.get("/readyz")
def readyz() -> dict[str, Any]:
    """The store and Directus answer."""
    checks: dict[str, str] = {}
    try:
        with get_store().engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        checks["store"] = "ok"
    except Exception:  # noqa: BLE001 - any failure means "not ready"
        checks["store"] = "unavailable"
    checks["directus"] = "ok" if get_directus().ping() else "unavailable"
    if any(value != "ok" for value in checks.values()):
        raise ServiceUnavailable(
            "Not ready: "
            + ", ".join(f"{name} {value}" for name, value in checks.items() if value != "ok"),
            checks=checks,
        )
    return {"status": "ok", "checks": checks}
