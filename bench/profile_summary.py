"""Summarise py-spy's raw (collapsed) profiles of a web worker: where its request threads spend
their samples (`python -m bench.profile_summary FILE...`, docs/performance.md).

Only the samples of request threads count (those that run a request: a frame of
`handle_request`); a line per frame of ours (bridge/, directus_client/, flows/) and per
"wait" (SQLite's busy handler, the database's round trips, locks), with the share of samples
whose stack holds it."""

from __future__ import annotations

import re
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^:]+):(?P<line>\d+)\)$")
OURS = ("bridge/", "directus_client/", "flows/", "bench/floor_app")


def summarise(paths: list[Path], top: int = 40) -> str:
    totals: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    samples = 0
    for path in paths:
        for line in path.read_text().splitlines():
            stack, _, count_text = line.rpartition(" ")
            if "handle_request" not in stack:
                continue
            count = int(count_text)
            samples += count
            frames = stack.split(";")
            seen = set()
            for frame in frames:
                match = _FRAME.match(frame)
                if not match:
                    continue
                name = f"{match['func']} ({match['file']})"
                if any(part in match["file"] for part in OURS) and name not in seen:
                    seen.add(name)
                    totals[name] += count
            leaf = _FRAME.match(frames[-1])
            if leaf:
                leaves[f"{leaf['func']} ({leaf['file']}:{leaf['line']})"] += count
    lines = [f"{samples} samples of request threads"]
    lines.append("inclusive, our frames:")
    for name, count in totals.most_common(top):
        lines.append(f"  {100 * count / samples:5.1f} %  {name}")
    lines.append("leaves (where the time is spent):")
    for name, count in leaves.most_common(15):
        lines.append(f"  {100 * count / samples:5.1f} %  {name}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(summarise([Path(arg) for arg in sys.argv[1:]]))
