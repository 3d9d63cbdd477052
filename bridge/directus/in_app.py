"""Directus in-app notifications to the admins (the bell in the Directus app), next to the
e-mails: one notification per admin user, linked to the refund's item page (collection
`refunds`, item = the refund's id). Used for refunds that need review (`notify_in_app` jobs)
and the refund policy's notices (bridge/refunds/approval.py). docs/directus.md, "In-app
notifications".

Queued in the outbox (`notify_in_app`, deduplicated by the caller's key) in the transaction
that makes the refund worth telling, and sent by the worker. A retry never notifies an admin
twice: the admins who already have a notification with the same subject on the same refund
are skipped.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session

from bridge.directus.projection import REFUNDS_COLLECTION
from bridge.jobs import outbox
from bridge.store.models import OutboxJob, Refund
from directus_client import DirectusError

if TYPE_CHECKING:
    from bridge.services import Services

log = logging.getLogger(__name__)

JOB_NOTIFY_IN_APP = "notify_in_app"
SUBJECT_MAX = 255  # directus_notifications.subject is a string(255)


def enqueue_in_app_notification(
    session: Session, refund: Refund, *, dedupe_key: str, subject: str, message: str
) -> int | None:
    """Queue in-app notifications of the admins about `refund`; once per `dedupe_key`."""
    return outbox.enqueue(
        session,
        JOB_NOTIFY_IN_APP,
        f"in-app:{dedupe_key}",
        refund_id=refund.id,
        payload={"subject": subject, "message": message},
    )


def notify_admins_in_app(services: Services, refund: Refund, subject: str, message: str) -> int:
    """POST /notifications for each active admin user who does not have this one yet; return
    how many were created. Directus also e-mails each recipient whose "Email notifications"
    setting is on (its own behaviour)."""
    client = services.directus
    subject = subject[:SUBJECT_MAX]
    admins = [user["id"] for user in client.admin_users()]
    already = client.list_system(
        "notifications",
        filter={
            "_and": [
                {"collection": {"_eq": REFUNDS_COLLECTION}},
                {"item": {"_eq": refund.id}},
                {"subject": {"_eq": subject}},
            ]
        },
        fields=["recipient"],
    )
    told = {str(item.get("recipient")) for item in already}
    created = 0
    for admin in admins:
        if admin in told:
            continue
        client.create_system(
            "notifications",
            {
                "recipient": admin,
                "subject": subject,
                "message": message,
                "collection": REFUNDS_COLLECTION,
                "item": refund.id,
            },
        )
        created += 1
    return created


def notify_in_app(services: Services, job: OutboxJob) -> None:
    """The `notify_in_app` job (bridge/jobs/registry.py)."""
    with services.store.session() as session:
        refund = session.get(Refund, job.refund_id)
        if refund is None:
            raise outbox.GiveUp(f"refund {job.refund_id} is not in the ledger")
        session.expunge(refund)
    try:
        created = notify_admins_in_app(
            services,
            refund,
            str(job.payload.get("subject") or f"Refund {refund.id}"),
            str(job.payload.get("message") or ""),
        )
    except DirectusError as exc:
        raise outbox.RetryLater(
            f"Directus in-app notification: {type(exc).__name__}: {exc.message}"
        ) from None
    log.info(
        "admins notified in Directus",
        extra={"refund_id": refund.id, "job_id": job.id, "notifications": created},
    )
