"""The benchmark's own Directus loads what the project's Flows need: every operation type a
Flow uses that Directus does not have is one of the linked extension's (without it, the "refund
result" Flow failed at its e-mail step and scenario 1 sent no e-mail)."""

from __future__ import annotations

import json
from pathlib import Path

from bench.stack import bench_directus
from devstack.directus import EXTENSION_LINK, REPO

# Operation types Directus 11 has itself.
BUILT_IN_OPERATIONS = {
    "condition",
    "exec",
    "item-create",
    "item-delete",
    "item-read",
    "item-update",
    "json-web-token",
    "log",
    "mail",
    "notification",
    "request",
    "sleep",
    "transform",
    "trigger",
    "throw-error",
}


def test_the_bench_directus_links_the_extension_with_every_operation_the_flows_use(
    tmp_path: Path,
) -> None:
    directus = bench_directus(tmp_path, smtp_port=2525)

    assert directus.extensions_dir is not None
    link = directus.extensions_dir / EXTENSION_LINK
    assert link.resolve() == (REPO / "directus-extension").resolve()
    package = json.loads((link / "package.json").read_text())
    provided = {
        entry["name"]
        for entry in package["directus:extension"]["entries"]
        if entry["type"] == "operation"
    }
    used = {
        operation["type"]
        for definition in (REPO / "flows" / "definitions").glob("*.json")
        for operation in json.loads(definition.read_text()).get("operations", [])
    }
    assert "refund-bridge-mail" in used
    assert used - BUILT_IN_OPERATIONS <= provided
