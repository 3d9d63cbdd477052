"""Figures of the reliability tests (cases tried, faults injected, events lost, ...).

Each test that proves a promise of docs/reliability.md appends one JSON line here, so that the
figures of the last run can be read back and quoted: `$BRIDGE_RELIABILITY_FIGURES`, default
`<temp dir>/refund-bridge-reliability.jsonl`. The assertions are in the tests; this only counts.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def figures_path() -> Path:
    default = Path(tempfile.gettempdir()) / "refund-bridge-reliability.jsonl"
    return Path(os.environ.get("BRIDGE_RELIABILITY_FIGURES") or default)


def record(test: str, **figures: Any) -> None:
    line = {"test": test, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **figures}
    with open(figures_path(), "a", encoding="utf-8") as out:
        out.write(json.dumps(line, default=str) + "\n")
