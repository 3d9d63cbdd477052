"""Create, update and find the project's Directus Flows, by their stable key.

A definition (`definitions/<key>.json`) holds the Flow's attributes and its operations, which
name each other by operation key; `@file:<name>` in an option is replaced by that file of
`definitions/` (the Run Script code, in which a string literal `"@param:<name>"` becomes that
value as a JS string), and `${name}` by a value of `FlowParams` (a string that is only a
placeholder takes the value as it is: a list stays a list).

`sync_flow` compares what Directus has with the definition and changes only what differs:
the Flow's attributes in place; its operations, when any differs, by deactivating the Flow,
replacing all its operations and activating it again (a Flow without operations would answer
a call with the request itself, so it is never active in between). The Flow keeps its id, so
callers that cached it keep working. Running it twice changes nothing the second time.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from directus_client import DirectusClient, ForbiddenError
from flows import CALLING_FLOWS, FLOW_KEYS, REFUND_RESULT

DEFINITIONS_DIR = Path(__file__).resolve().parent / "definitions"
FLOW_FIELDS = ("name", "icon", "color", "description", "status", "trigger", "accountability")
OPERATION_FIELDS = ("name", "type", "position_x", "position_y", "options")
DEFAULT_REASONS = ("chef_rejected", "customer_cancel")
_PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")
_FILE_PREFIX = "@file:"
_CODE_PARAM = re.compile(r'"@param:([a-z_]+)"')
MIN_SECRET_LENGTH = 16
PING_RELOAD_WAIT_SECONDS = 5.0

Item = dict[str, Any]


def _plain(text: str) -> bool:
    return text.isprintable() and " " not in text and "{{" not in text


def marker(key: str) -> str:
    """The text in a Flow's description that names it as ours, by key."""
    return f"[refund-bridge:{key}]"


@dataclass(frozen=True)
class FlowParams:
    """The settings the Flows are built with (the bridge passes its own)."""

    flow_secret: str | None = None
    bridge_url: str = "http://127.0.0.1:8080"
    service_token: str | None = None
    orders_collection: str = "orders"
    refund_reasons: tuple[str, ...] = DEFAULT_REASONS

    def values(self) -> dict[str, Any]:
        parts = urlsplit(self.bridge_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"the bridge URL must be an http(s) URL, got {self.bridge_url!r}")
        # Both go through Directus's {{ }} templating; the token also into a header.
        token = self.service_token or ""
        if token and not _plain(token):
            raise ValueError("the service token must be printable, without spaces or '{{'")
        secret = self.flow_secret or ""
        if secret and (len(secret) < MIN_SECRET_LENGTH or not _plain(secret)):
            raise ValueError(
                f"the flow secret must be at least {MIN_SECRET_LENGTH} printable characters, "
                "without spaces or '{{'"
            )
        return {
            "flow_secret": secret,
            "bridge_url": self.bridge_url.rstrip("/"),
            "service_token": token,
            "orders_collection": self.orders_collection,
            "reason_choices": [
                {"text": reason.replace("_", " "), "value": reason}
                for reason in self.refund_reasons
            ],
        }


@dataclass(frozen=True)
class FlowDefinition:
    key: str
    flow: Item
    first: str
    operations: tuple[Item, ...]

    @property
    def name(self) -> str:
        return str(self.flow["name"])


@dataclass
class FlowSyncResult:
    """What `sync_flow` did (or, dry run, would do) to one Flow."""

    key: str
    name: str
    flow_id: str | None = None
    action: str = "unchanged"  # created | updated | unchanged | skipped (dry run: would ...)
    changes: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    note: str | None = None

    @property
    def in_place(self) -> bool:
        return self.action == "unchanged" and not self.duplicates


class FlowRefused(Exception):
    """The Flow answered, but did not do the job (wrong secret, invalid body...)."""

    def __init__(self, error: str) -> None:
        super().__init__(f"the Flow refused the call: {error}")
        self.error = error


# -- definitions ----------------------------------------------------------------------------


def _render(value: Any, values: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        if value.startswith(_FILE_PREFIX):
            name = value[len(_FILE_PREFIX) :]
            if "/" in name or name.startswith("."):
                raise ValueError(f"bad file reference {value!r}")
            code = (DEFINITIONS_DIR / name).read_text(encoding="utf-8")
            return _CODE_PARAM.sub(lambda m: json.dumps(values[m.group(1)]), code)
        whole = _PLACEHOLDER.fullmatch(value)
        if whole:
            return values[whole.group(1)]
        return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), value)
    if isinstance(value, list):
        return [_render(v, values) for v in value]
    if isinstance(value, dict):
        return {k: _render(v, values) for k, v in value.items()}
    return value


def load_definition(key: str, params: FlowParams | None = None) -> FlowDefinition:
    """The Flow `key` as Directus should have it, built with `params`."""
    if key not in FLOW_KEYS:
        raise KeyError(f"unknown flow {key!r}")
    raw = json.loads((DEFINITIONS_DIR / f"{key}.json").read_text(encoding="utf-8"))
    data = _render(raw, (params or FlowParams()).values())
    flow = dict(data["flow"])
    flow["description"] = f"{flow.get('description', '').strip()} {marker(key)}".strip()
    operations = tuple(dict(op) for op in data["operations"])
    _check_graph(key, data["first"], operations)
    return FlowDefinition(key=key, flow=flow, first=data["first"], operations=operations)


def _check_graph(key: str, first: str, operations: Sequence[Item]) -> None:
    keys = [op["key"] for op in operations]
    if len(set(keys)) != len(keys) or first not in keys:
        raise ValueError(f"flow {key}: operation keys must be unique and include {first!r}")
    for op in operations:
        for successor in (op.get("resolve"), op.get("reject")):
            if successor is not None and successor not in keys:
                raise ValueError(f"flow {key}: {op['key']} points to unknown {successor!r}")
    _creation_order(operations)  # raises on a cycle


def _creation_order(operations: Sequence[Item]) -> list[Item]:
    """Operations ordered so that each comes after the ones it points to (Directus needs the
    targets of `resolve` and `reject` to exist)."""
    by_key = {op["key"]: op for op in operations}
    ordered: list[Item] = []
    state: dict[str, str] = {}

    def visit(key: str) -> None:
        if state.get(key) == "done":
            return
        if state.get(key) == "visiting":
            raise ValueError(f"the operations form a cycle at {key!r}")
        state[key] = "visiting"
        op = by_key[key]
        for successor in (op.get("resolve"), op.get("reject")):
            if successor is not None:
                visit(successor)
        state[key] = "done"
        ordered.append(op)

    for op in operations:
        visit(op["key"])
    return ordered


def definitions(
    params: FlowParams | None = None, keys: Iterable[str] | None = None
) -> list[FlowDefinition]:
    return [load_definition(key, params) for key in (keys or FLOW_KEYS)]


# -- reading Directus ------------------------------------------------------------------------


def find_flows(client: DirectusClient, key: str) -> list[Item]:
    """Every Flow carrying the key's marker, oldest first (normally one)."""
    rows = client.list_flows(
        filter={"description": {"_contains": marker(key)}},
        fields=["id", *FLOW_FIELDS, "options", "operation", "date_created"],
        sort=["date_created"],
    )
    return [row for row in rows if marker(key) in str(row.get("description") or "")]


def find_flow_id(client: DirectusClient, key: str) -> str | None:
    """The id of the active Flow with this key, or None (one cheap query; callers cache it)."""
    rows = client.list_flows(
        filter={
            "_and": [
                {"description": {"_contains": marker(key)}},
                {"status": {"_eq": "active"}},
            ]
        },
        fields=["id", "description"],
        sort=["date_created"],
    )
    for row in rows:
        if marker(key) in str(row.get("description") or ""):
            return str(row["id"])
    return None


def _normalised_operations(operations: Sequence[Item]) -> dict[str, Item]:
    """Operations by key, with `resolve`/`reject` as keys (Directus stores ids)."""
    key_of = {op.get("id"): op.get("key") for op in operations}
    result: dict[str, Item] = {}
    for op in operations:
        shape = {name: op.get(name) for name in OPERATION_FIELDS}
        for link in ("resolve", "reject"):
            target = op.get(link)
            shape[link] = key_of.get(target, target) if target is not None else None
        result[str(op.get("key"))] = shape
    return result


def _operation_differences(current: Sequence[Item], definition: FlowDefinition) -> list[str]:
    have = _normalised_operations(current)
    want = {
        op["key"]: {name: op.get(name) for name in (*OPERATION_FIELDS, "resolve", "reject")}
        for op in definition.operations
    }
    lines = [f"add operation {key}" for key in want if key not in have]
    lines += [f"remove operation {key}" for key in have if key not in want]
    for key in want:
        if key in have and have[key] != want[key]:
            fields = sorted(name for name in want[key] if have[key].get(name) != want[key][name])
            lines.append(f"update operation {key}: {', '.join(fields)}")
    return lines


# -- syncing ---------------------------------------------------------------------------------


def sync_flow(
    client: DirectusClient, definition: FlowDefinition, *, dry_run: bool = False
) -> FlowSyncResult:
    """Make Directus's Flow match the definition (create it when missing)."""
    result = FlowSyncResult(key=definition.key, name=definition.name)
    found = find_flows(client, definition.key)
    attributes = {name: definition.flow.get(name) for name in (*FLOW_FIELDS, "options")}
    if not found:
        result.action = "would create" if dry_run else "created"
        result.changes.append(f"create flow with {len(definition.operations)} operations")
        if not dry_run:
            created = client.create_flow({**attributes, "status": "inactive"})
            result.flow_id = str(created["id"])
            first_id = _create_operations(client, result.flow_id, definition)
            client.update_flow(
                result.flow_id, {"operation": first_id, "status": attributes["status"]}
            )
        return result

    current, *others = found
    flow_id = str(current["id"])
    result.flow_id = flow_id
    result.duplicates = [str(other["id"]) for other in others]
    operations = client.list_operations(flow_id)
    changed_attributes = {
        name: value for name, value in attributes.items() if current.get(name) != value
    }
    op_lines = _operation_differences(operations, definition)
    first = next((op for op in operations if op.get("id") == current.get("operation")), None)
    if not op_lines and (first is None or first.get("key") != definition.first):
        op_lines.append(f"start at operation {definition.first}")
    result.changes = [f"set {name}" for name in sorted(changed_attributes)] + op_lines
    if not result.changes:
        return result
    result.action = "would update" if dry_run else "updated"
    if dry_run:
        return result
    if op_lines:
        # Never active without its operations: deactivate, replace them, then set everything.
        client.update_flow(flow_id, {"status": "inactive", "operation": None})
        client.delete_operations([op["id"] for op in operations])
        first_id = _create_operations(client, flow_id, definition)
        client.update_flow(flow_id, {**attributes, "operation": first_id})
    else:
        client.update_flow(flow_id, changed_attributes)
    return result


def _create_operations(client: DirectusClient, flow_id: str, definition: FlowDefinition) -> str:
    ids: dict[str, str] = {}
    for op in _creation_order(definition.operations):
        values = {name: op.get(name) for name in OPERATION_FIELDS}
        values.update(
            key=op["key"],
            flow=flow_id,
            resolve=ids[op["resolve"]] if op.get("resolve") else None,
            reject=ids[op["reject"]] if op.get("reject") else None,
        )
        ids[op["key"]] = str(client.create_operation(values)["id"])
    return ids[definition.first]


def sync_flows(
    client: DirectusClient,
    params: FlowParams | None = None,
    *,
    keys: Iterable[str] | None = None,
    dry_run: bool = False,
) -> list[FlowSyncResult]:
    """Sync every Flow (or those of `keys`). "refund result" needs the flow secret, "request
    refund" and "approve or deny" a service token to call the bridge with: without it, each is
    skipped."""
    params = params or FlowParams()
    results: list[FlowSyncResult] = []
    for key in keys or FLOW_KEYS:
        if key == REFUND_RESULT and not params.flow_secret:
            results.append(
                FlowSyncResult(
                    key=key,
                    name="refund result",
                    action="skipped",
                    note="no flow secret (BRIDGE_FLOW_SECRET) to check callers with",
                )
            )
            continue
        if key in CALLING_FLOWS and not params.service_token:
            results.append(
                FlowSyncResult(
                    key=key,
                    name=key.replace("-", " "),
                    action="skipped",
                    note="no service token to call the bridge with",
                )
            )
            continue
        results.append(sync_flow(client, load_definition(key, params), dry_run=dry_run))
    return results


# -- calling the "refund result" Flow --------------------------------------------------------


def trigger(client: DirectusClient, flow_id: str, body: Mapping[str, Any]) -> Item:
    """Trigger a Flow of ours and return its answer; `FlowRefused` when it says it did not
    do the job (its answer is `{"ok": false, "error": ...}`). Directus errors propagate."""
    answer = client.trigger_flow(flow_id, body)
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        error = answer.get("error") if isinstance(answer, dict) else None
        raise FlowRefused(str(error or "no answer"))
    return answer


def ping_refund_result(client: DirectusClient, secret: str, flow_id: str | None = None) -> str:
    """Call the "refund result" Flow with kind `ping` (no e-mail): returns its id when it
    accepts `secret`; `LookupError` when it is not in Directus, `FlowRefused` when it
    refuses the secret."""
    flow_id = flow_id or find_flow_id(client, REFUND_RESULT)
    if flow_id is None:
        raise LookupError("the refund-result Flow is not in Directus (or not active)")
    # Directus reloads its Flows in the background after a change: right after a sync, the
    # trigger URL answers 403 for a moment ("Couldn't find webhook ... flow").
    deadline = time.monotonic() + PING_RELOAD_WAIT_SECONDS
    while True:
        try:
            trigger(client, flow_id, {"secret": secret, "kind": "ping"})
            return flow_id
        except ForbiddenError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.2)
