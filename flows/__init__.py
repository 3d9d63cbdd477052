"""The Directus Flows refund-bridge provisions, defined as data in `flows/definitions/`.

Each Flow has a stable key, kept in its description as a marker (`[refund-bridge:<key>]`), so
that `flows sync` finds and updates it instead of creating another. `flows.sync` creates,
updates and finds them; it takes every setting as an argument (nothing of `bridge` is
imported here: the bridge imports flows).
"""

from __future__ import annotations

REFUND_RESULT = "refund-result"
REQUEST_REFUND = "request-refund"
FLOW_KEYS: tuple[str, ...] = (REFUND_RESULT, REQUEST_REFUND)

__all__ = ["FLOW_KEYS", "REFUND_RESULT", "REQUEST_REFUND"]
