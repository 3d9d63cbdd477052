"""The Directus Flows refund-bridge provisions, defined as data in `flows/definitions/`.

Each Flow has a stable key, kept in its description as a marker (`[refund-bridge:<key>]`), so
that `flows sync` finds and updates it instead of creating another. `flows.sync` creates,
updates and finds them; it takes every setting as an argument (nothing of `bridge` is
imported here: the bridge imports flows).
"""

from __future__ import annotations

REFUND_RESULT = "refund-result"
REQUEST_REFUND = "request-refund"
APPROVE_OR_DENY = "approve-or-deny"
FLOW_KEYS: tuple[str, ...] = (REFUND_RESULT, REQUEST_REFUND, APPROVE_OR_DENY)
# The Flows that call the bridge (with a service token, acting for the user who pressed them).
CALLING_FLOWS: tuple[str, ...] = (REQUEST_REFUND, APPROVE_OR_DENY)

__all__ = ["APPROVE_OR_DENY", "CALLING_FLOWS", "FLOW_KEYS", "REFUND_RESULT", "REQUEST_REFUND"]
