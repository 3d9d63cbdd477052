"""Counting the requests that reach Directus, two independent ways.

- `DirectusLog`: Directus's own request log (pino-http, one JSON line per answered request at
  LOG_LEVEL=info). The truth, as Directus saw it; each request is attributed by its User-Agent
  (the bridge's client, the benchmark's seeding, the baseline, the poller), and by the log's
  position, so a phase counts only its own lines.
- `BridgeMetrics`: the bridge's `refund_bridge_outbound_requests_total{target="directus"}` from
  the web processes' /metrics and the worker's metrics port: what the bridge says it sent
  (urllib3's own retries are inside one count). Used alone when Directus's log is not ours to
  read (the quick test on the session Directus).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import requests
from prometheus_client.parser import text_string_to_metric_families

_LINE = re.compile(
    r'"method":"(?P<method>[A-Z]+)","url":"(?P<url>[^"]*)".*?"user-agent":"(?P<agent>[^"]*)"'
)
_ITEM = re.compile(r"^/items/([^/]+)/[^/]+$")
_TRIGGER = re.compile(r"^/flows/trigger/[^/]+$")


def route(method: str, url: str) -> str:
    """`PATCH /items/orders/abc?fields=id` -> `PATCH /items/orders/:id`."""
    path = url.split("?", 1)[0]
    item = _ITEM.match(path)
    if item:
        path = f"/items/{item.group(1)}/:id"
    elif _TRIGGER.match(path):
        path = "/flows/trigger/:id"
    return f"{method} {path}"


class DirectusLog:
    def __init__(self, path: Path) -> None:
        self.path = path

    def mark(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def since(self, offset: int, agent: str) -> Counter[str]:
        """Requests answered by Directus after `offset` from clients with this User-Agent,
        by route."""
        counts: Counter[str] = Counter()
        with open(self.path, "rb") as log:
            log.seek(offset)
            for raw in log:
                if b'"request completed"' not in raw:
                    continue
                match = _LINE.search(raw.decode("utf-8", "replace"))
                if match and match.group("agent") == agent:
                    counts[route(match.group("method"), match.group("url"))] += 1
        return counts


class BridgeMetrics:
    def __init__(self, web_url: str, worker_url: str) -> None:
        self.urls = (f"{web_url}/metrics", f"{worker_url}/metrics")

    def directus_requests(self) -> int:
        """Calls to Directus the bridge's processes made so far (web and worker)."""
        total = 0.0
        for url in self.urls:
            text = requests.get(url, timeout=10).text
            for family in text_string_to_metric_families(text):
                if family.name != "refund_bridge_outbound_requests":
                    continue
                for sample in family.samples:
                    if sample.name.endswith("_total") and sample.labels.get("target") == "directus":
                        total += sample.value
        return int(total)
