"""Refund requests: POST /ridendine/refunds and reading refunds back (contract sections 1, 2).

Importing this package registers the `submit_refund` outbox job (bridge/refunds/submission.py),
which the worker needs too.
"""

from bridge.refunds.views import bp

__all__ = ["bp"]
