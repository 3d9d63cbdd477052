"""RideNDine's refund-status webhook (contract section 3): verification, the durable inbox, the
matching, and the outbox jobs that apply results to Directus and notify (docs/webhooks.md).

Importing this package registers the outbox handlers of the result path (`process_event`,
`resolve_event`, `apply_order`, `project_refund`, `notify_result`, `alert_admins`): the worker
imports it before draining.
"""

from __future__ import annotations

from flask import Blueprint

bp = Blueprint("webhooks", __name__)

from bridge.webhooks import views  # noqa: E402, F401 - registers the routes on bp
