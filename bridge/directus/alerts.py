"""Alerts to admins (a refund needs a person): queued in the outbox, sent by e-mail through the
"refund result" Flow by the `alert_admins` job handler (bridge/directus/notify.py)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from bridge.jobs import outbox

JOB_ALERT_ADMINS = "alert_admins"


def enqueue_admin_alert(
    session: Session, *, dedupe_key: str, subject: str, message: str, refund_id: str | None = None
) -> int | None:
    """Queue one alert; the same `dedupe_key` never alerts twice."""
    return outbox.enqueue(
        session,
        JOB_ALERT_ADMINS,
        f"alert:{dedupe_key}",
        refund_id=refund_id,
        payload={"subject": subject, "message": message},
    )
