"""The benchmark seeds Directus in requests that Directus accepts: each under its default
MAX_PAYLOAD_SIZE (1 MB), whatever N is (`make bench` runs N=2000)."""

from __future__ import annotations

import json

from bench.scenarios import SEED_CHUNK, Bench, Event
from bridge.directus.projection import refund_item
from bridge.store.models import utcnow

DIRECTUS_MAX_PAYLOAD_BYTES = 1_000_000  # Directus's default MAX_PAYLOAD_SIZE, "1mb"


def test_a_seeding_request_of_refund_items_fits_directus_payload_limit() -> None:
    now = utcnow()
    # The longest ids the benchmark makes: a run id and the longest scenario label.
    items = [
        refund_item(
            Bench.seeded_refund(
                Event(
                    f"bench-20261204T145500-growth-16000-{index:06d}",
                    f"rf_{index:024d}",
                    f"re_bench_{index:020d}",
                ),
                now,
            )
        )
        for index in range(SEED_CHUNK)
    ]
    size = len(json.dumps(items, default=str).encode())
    # With room to spare: a quarter of the limit for longer ids, histories and currencies.
    assert size < 0.75 * DIRECTUS_MAX_PAYLOAD_BYTES, size
