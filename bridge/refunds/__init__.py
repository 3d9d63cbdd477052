"""Refund requests: POST /ridendine/refunds, reading refunds back, the submission to
RideNDine (contract sections 1, 2; docs/refunds.md)."""

from bridge.refunds.views import bp

__all__ = ["bp"]
