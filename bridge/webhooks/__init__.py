"""RideNDine's refund-status webhook (contract section 3): verification, the durable inbox, the
matching, the Stripe check (docs/webhooks.md). Its outbox jobs are listed in
bridge/jobs/registry.py."""

from bridge.webhooks.views import bp

__all__ = ["bp"]
