"""Every outbox job kind, with the functions that do it: the one list (docs/worker.md).

The web process (create_app), the worker and the commands call `register_all()` before they
run jobs; the outbox then finds each kind's handler, its `on_dead` and its batch handler.
"""

from __future__ import annotations

from dataclasses import dataclass

from bridge.directus import batch, in_app, notify, order_status, projection
from bridge.directus.alerts import JOB_ALERT_ADMINS
from bridge.jobs import outbox
from bridge.refunds import approval, submission
from bridge.webhooks import inbox, stripe_check


@dataclass(frozen=True)
class JobKind:
    kind: str
    handler: outbox.Handler
    on_dead: outbox.DeadHandler | None = None
    # Does several claimed jobs of the kind in one Directus request (bridge/directus/batch.py).
    batch: outbox.BatchHandler | None = None
    # Needs Directus: the worker does not send it while Directus is down.
    needs_directus: bool = False


# Batch kinds run in this order within a claimed batch: the order's update before the e-mail
# that shows it.
JOB_KINDS: tuple[JobKind, ...] = (
    JobKind(submission.JOB_SUBMIT_REFUND, submission.submit_refund, submission.submission_dead),
    JobKind(
        inbox.JOB_PROCESS_EVENT, inbox.process_event, inbox.event_dead, batch=inbox.process_events
    ),
    JobKind(inbox.JOB_RESOLVE_EVENT, inbox.resolve_event, inbox.event_dead, needs_directus=True),
    JobKind(
        stripe_check.JOB_VERIFY_REFUNDED,
        stripe_check.verify_refunded_event,
        stripe_check.verify_refunded_dead,
    ),
    JobKind(stripe_check.JOB_CHECK_PENDING, stripe_check.check_pending_refund),
    JobKind(
        order_status.JOB_APPLY_ORDER,
        order_status.apply_order,
        order_status.apply_order_dead,
        batch=batch.apply_orders,
        needs_directus=True,
    ),
    JobKind(
        projection.JOB_PROJECT_REFUND,
        projection.project_refund,
        batch=batch.project_refunds,
        needs_directus=True,
    ),
    JobKind(
        notify.JOB_NOTIFY_RESULT,
        notify.notify_result,
        batch=batch.notify_results,
        needs_directus=True,
    ),
    # The admins' part of a result's notification, when they could not be found at first.
    JobKind(notify.JOB_NOTIFY_ADMINS, notify.notify_result_admins, needs_directus=True),
    JobKind(JOB_ALERT_ADMINS, notify.alert_admins, needs_directus=True),
    # The refund policy's notices (a request waits, a reminder, a denial).
    JobKind(approval.JOB_NOTIFY_APPROVAL, approval.notify_approval, needs_directus=True),
    JobKind(in_app.JOB_NOTIFY_IN_APP, in_app.notify_in_app, needs_directus=True),
)

DIRECTUS_KINDS = frozenset(job.kind for job in JOB_KINDS if job.needs_directus)


def register_all() -> None:
    """Give the outbox every kind's functions (idempotent)."""
    for job in JOB_KINDS:
        outbox.register(job.kind, job.handler, on_dead=job.on_dead, batch=job.batch)
