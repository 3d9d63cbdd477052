"""`refund-bridge reconcile`: the ledger, Directus and Stripe side by side; what finance runs at
month end.

The ledger is the source of truth. Compared with it:
- Directus's `refunds` items (the projection): an item missing, an item whose fields differ
  (status, amounts, currency, reason, review flag, RideNDine id, order), an item on one of the
  orders checked that the ledger does not know;
- the two order fields the bridge owns (`payment_status`, `status`), as
  bridge/directus/order_status.py would set them from the order's REFUNDED refunds; an order
  Directus does not have;
- Stripe (when `BRIDGE_STRIPE_API_KEY` is set), for refunds whose RideNDine id is a Stripe id:
  status and amount.

Every mismatch has one shape: kind, order id, refund id, what the ledger, Directus and Stripe
say, and the suggested fix. `fix` re-projects the ledger into Directus: refund items (created or
rewritten) and the order fields the bridge owns. Stripe disagreeing, and items or orders the
ledger does not know, need a person and are only reported.

Scope: every refund of the ledger, or (`since`) those created or changed since a date, and
their orders. Reads are batched: refund items by order and orders by id, 100 ids per request
(`limit=-1`), Stripe's refunds listed 100 per page (created since the oldest refund checked),
so a month of refunds takes a handful of requests, not one per refund.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import selectinload

from bridge import metrics
from bridge.directus.order_status import order_changes
from bridge.directus.projection import REFUNDS_COLLECTION, refund_item
from bridge.ledger import ledger
from bridge.store.models import Refund, RefundStatus, utcnow
from bridge.webhooks import stripe_check

if TYPE_CHECKING:
    from bridge.services import Services

CHUNK = 100
STRIPE_LIST_SLACK = timedelta(days=1)

# Kinds of mismatch, and whether `--fix` repairs them.
REFUND_ITEM_MISSING = "refund_item_missing"
REFUND_ITEM_DIFFERS = "refund_item_differs"
REFUND_ITEM_UNKNOWN = "refund_item_unknown"
ORDER_MISSING = "order_missing"
ORDER_FIELDS_DIFFER = "order_fields_differ"
STRIPE_STATUS_DIFFERS = "stripe_status_differs"
STRIPE_AMOUNT_DIFFERS = "stripe_amount_differs"
STRIPE_REFUND_MISSING = "stripe_refund_missing"
FIXABLE = frozenset({REFUND_ITEM_MISSING, REFUND_ITEM_DIFFERS, ORDER_FIELDS_DIFFER})

# The refund item's fields compared with the ledger (history and timestamps are not: Directus
# formats them its own way, and they follow the fields compared here).
COMPARED_FIELDS: tuple[str, ...] = (
    "order_id",
    "status",
    "amount_cents",
    "refunded_amount_cents",
    "currency",
    "reason",
    "requested_by",
    "source",
    "ridendine_refund_id",
    "needs_review",
    "decided_by",
    # The amounts as people read them (docs/directus.md, "How money is shown"): an item
    # projected before they existed is rewritten by --fix.
    "amount",
    "refunded_amount",
)
_INTEGER_FIELDS = frozenset({"amount_cents", "refunded_amount_cents"})

COLUMNS: tuple[str, ...] = (
    "kind",
    "order_id",
    "refund_id",
    "ledger",
    "directus",
    "stripe",
    "fix",
    "fixed",
)


@dataclass
class Mismatch:
    kind: str
    order_id: str | None
    refund_id: str | None
    ledger: str
    directus: str
    stripe: str
    fix: str
    fixed: bool = False

    @property
    def fixable(self) -> bool:
        return self.kind in FIXABLE


@dataclass
class Report:
    mismatches: list[Mismatch] = field(default_factory=list)
    refunds_checked: int = 0
    orders_checked: int = 0
    stripe_checked: int = 0
    since: datetime | None = None
    fix_applied: bool = False
    # What --fix writes: refund items to create or rewrite, order fields to set.
    items_to_write: dict[str, dict[str, Any]] = field(default_factory=dict)
    items_missing: set[str] = field(default_factory=set)
    orders_to_write: dict[str, dict[str, str]] = field(default_factory=dict)

    @property
    def remaining(self) -> list[Mismatch]:
        return [m for m in self.mismatches if not m.fixed]

    def summary(self) -> dict[str, Any]:
        return {
            "since": self.since.isoformat() if self.since else None,
            "refunds_checked": self.refunds_checked,
            "orders_checked": self.orders_checked,
            "stripe_checked": self.stripe_checked,
            "mismatches": len(self.mismatches),
            "fixed": sum(1 for m in self.mismatches if m.fixed),
            "remaining": len(self.remaining),
        }


# -- reading --------------------------------------------------------------------------------------


def _chunks(values: Sequence[str], size: int = CHUNK) -> Iterable[list[str]]:
    for start in range(0, len(values), size):
        yield list(values[start : start + size])


def _int_or_none(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _normal(name: str, value: Any) -> Any:
    """A field's value as compared: integers as int, empty text as None, the order's key."""
    if name in _INTEGER_FIELDS:
        return _int_or_none(value)
    if name == "needs_review":
        return bool(value)
    if name == "order_id" and isinstance(value, dict):
        value = value.get("id")
    if value == "":
        return None
    return str(value) if value is not None else None


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


def load_ledger(services: Services, since: datetime | None) -> tuple[list[Refund], list[Refund]]:
    """(refunds in scope, every refund of their orders) from the ledger."""
    with services.store.session() as session:
        query = select(Refund).options(selectinload(Refund.history)).order_by(Refund.created_at)
        if since is not None:
            query = query.where(Refund.updated_at >= since)
        in_scope = list(session.scalars(query))
        order_ids = sorted({r.order_id for r in in_scope})
        of_orders: list[Refund] = []
        for chunk in _chunks(order_ids, 500):
            of_orders.extend(session.scalars(select(Refund).where(Refund.order_id.in_(chunk))))
        session.expunge_all()
    return in_scope, of_orders


def load_refund_items(
    services: Services, refund_ids: Sequence[str], order_ids: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Directus's refund items of the orders checked, and those of the ledger's refunds."""
    client = services.directus
    fields = ["id", *COMPARED_FIELDS]
    items: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(order_ids):
        for item in client.query_items(
            REFUNDS_COLLECTION, filter={"order_id": {"_in": chunk}}, fields=fields, limit=-1
        ):
            items[str(item["id"])] = item
    # An item moved to another order by hand is still found, by its id.
    elsewhere = [refund_id for refund_id in refund_ids if refund_id not in items]
    for chunk in _chunks(elsewhere):
        for item in client.query_items(
            REFUNDS_COLLECTION, filter={"id": {"_in": chunk}}, fields=fields, limit=-1
        ):
            items[str(item["id"])] = item
    return items


def load_orders(services: Services, order_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    names = services.settings.order_fields
    fields = ["id", "status", "payment_status", names.amount_paid]
    orders: dict[str, dict[str, Any]] = {}
    for chunk in _chunks(order_ids):
        for order in services.directus.query_items(
            names.collection, filter={"id": {"_in": chunk}}, fields=fields, limit=-1
        ):
            orders[str(order["id"])] = order
    return orders


def load_stripe_refunds(
    services: Services, refunds: Sequence[Refund]
) -> dict[str, stripe_check.StripeRefund | None]:
    """Stripe's refunds for the ledger's Stripe ids (None: Stripe has no such refund)."""
    client = stripe_check.get_client(services)
    wanted = {
        sid: r for r in refunds if (sid := stripe_check.stripe_refund_id(r.ridendine_refund_id))
    }
    if client is None or not wanted:
        return {}
    earliest = min(r.created_at for r in wanted.values()) - STRIPE_LIST_SLACK
    listed = stripe_check.list_refunds(client, created_since=earliest)
    found: dict[str, stripe_check.StripeRefund | None] = {
        sid: listed[sid] for sid in wanted if sid in listed
    }
    for sid in wanted:
        if sid not in found:  # older than the listing, or not there at all
            try:
                found[sid] = stripe_check.fetch_refund(client, sid)
            except stripe_check.StripeRefundMissing:
                found[sid] = None
    return found


# -- comparing ------------------------------------------------------------------------------------


def compare(services: Services, *, since: datetime | None = None) -> Report:
    """Every mismatch between the ledger, Directus and (when configured) Stripe."""
    report = Report(since=since)
    in_scope, of_orders = load_ledger(services, since)
    report.refunds_checked = len(in_scope)
    order_ids = sorted({r.order_id for r in in_scope})
    items = load_refund_items(services, [r.id for r in in_scope], order_ids)
    orders = load_orders(services, order_ids)
    report.orders_checked = len(order_ids)
    stripe_refunds = load_stripe_refunds(services, in_scope)
    report.stripe_checked = len(stripe_refunds)

    ledger_ids = {r.id for r in in_scope} | {r.id for r in of_orders}
    for refund in in_scope:
        _compare_item(report, refund, items.get(refund.id))
    for item_id, item in sorted(items.items()):
        if item_id not in ledger_ids:
            report.mismatches.append(
                Mismatch(
                    kind=REFUND_ITEM_UNKNOWN,
                    order_id=_normal("order_id", item.get("order_id")),
                    refund_id=item_id,
                    ledger="no such refund",
                    directus=f"{item.get('status')} {_show(item.get('amount_cents'))} cents",
                    stripe="-",
                    fix="check by hand: the item was not written by the bridge",
                )
            )
    by_order: dict[str, list[Refund]] = defaultdict(list)
    for refund in of_orders:
        by_order[refund.order_id].append(refund)
    for order_id in order_ids:
        _compare_order(services, report, order_id, orders.get(order_id), by_order[order_id])
    for refund in in_scope:
        sid = stripe_check.stripe_refund_id(refund.ridendine_refund_id)
        if sid is not None and sid in stripe_refunds:
            _compare_stripe(services, report, refund, sid, stripe_refunds[sid])
    metrics.reconciliation_mismatches(m.kind for m in report.mismatches)
    return report


def _compare_item(report: Report, refund: Refund, item: dict[str, Any] | None) -> None:
    expected = refund_item(refund)
    if item is None:
        report.items_to_write[refund.id] = expected
        report.items_missing.add(refund.id)
        report.mismatches.append(
            Mismatch(
                kind=REFUND_ITEM_MISSING,
                order_id=refund.order_id,
                refund_id=refund.id,
                ledger=f"{refund.status} {refund.amount_cents} cents",
                directus="no item",
                stripe="-",
                fix="re-project the refund into Directus (create the item)",
            )
        )
        return
    differing = [
        name
        for name in COMPARED_FIELDS
        if _normal(name, expected.get(name)) != _normal(name, item.get(name))
    ]
    if not differing:
        return
    report.items_to_write[refund.id] = expected
    report.mismatches.append(
        Mismatch(
            kind=REFUND_ITEM_DIFFERS,
            order_id=refund.order_id,
            refund_id=refund.id,
            ledger=", ".join(f"{n}={_show(_normal(n, expected.get(n)))}" for n in differing),
            directus=", ".join(f"{n}={_show(_normal(n, item.get(n)))}" for n in differing),
            stripe="-",
            fix="re-project the refund into Directus (rewrite the item)",
        )
    )


def _compare_order(
    services: Services,
    report: Report,
    order_id: str,
    order: dict[str, Any] | None,
    refunds: list[Refund],
) -> None:
    settings = services.settings
    if order is None:
        report.mismatches.append(
            Mismatch(
                kind=ORDER_MISSING,
                order_id=order_id,
                refund_id=None,
                ledger=f"{len(refunds)} refund(s)",
                directus="no such order",
                stripe="-",
                fix="check by hand: the order was deleted or renamed in Directus",
            )
        )
        return
    refunded = [r for r in refunds if r.status == RefundStatus.REFUNDED]
    if not refunded:
        return  # the bridge has not written this order: nothing it owns to compare
    total = sum(
        r.refunded_amount_cents if r.refunded_amount_cents is not None else r.amount_cents
        for r in refunded
    )
    paid = ledger.as_cents(order.get(settings.order_fields.amount_paid))
    if paid is None or paid <= 0:
        return  # apply_order gives up on such an order and flags the refund itself
    cancels = any(r.reason in settings.cancelling_reasons for r in refunded)
    changes = order_changes(order, refunded=total, paid=paid, cancels=cancels)
    if not changes:
        return
    report.orders_to_write[order_id] = changes
    report.mismatches.append(
        Mismatch(
            kind=ORDER_FIELDS_DIFFER,
            order_id=order_id,
            refund_id=None,
            ledger=", ".join(f"{k}={v}" for k, v in changes.items())
            + f" ({total} of {paid} cents refunded)",
            directus=", ".join(f"{k}={_show(order.get(k))}" for k in changes),
            stripe="-",
            fix="set " + ", ".join(f"{k}={v}" for k, v in changes.items()) + " in Directus",
        )
    )


def _compare_stripe(
    services: Services,
    report: Report,
    refund: Refund,
    sid: str,
    found: stripe_check.StripeRefund | None,
) -> None:
    disagreement = _stripe_disagreement(services, refund, sid, found)
    if disagreement is None:
        return
    kind, stripe_says, fix_by_hand = disagreement
    report.mismatches.append(
        Mismatch(
            kind=kind,
            order_id=refund.order_id,
            refund_id=refund.id,
            ledger=f"{refund.status} {_ledger_amount(refund)} cents",
            directus="-",
            stripe=stripe_says,
            fix=fix_by_hand,
        )
    )


def _stripe_disagreement(
    services: Services, refund: Refund, sid: str, found: stripe_check.StripeRefund | None
) -> tuple[str, str, str] | None:
    """(kind, what Stripe says, the fix) where Stripe and the ledger disagree on a refund."""
    if found is None:
        return (
            STRIPE_REFUND_MISSING,
            f"no refund {sid}",
            "review with RideNDine: the refund id is not Stripe's",
        )
    stripe_says = f"{found.status} {found.amount_cents} cents ({sid})"
    status = refund.status
    if status in (RefundStatus.REQUESTED, RefundStatus.DENIED):
        return (
            STRIPE_STATUS_DIFFERS,
            stripe_says,
            "review by hand: Stripe has a refund the bridge never sent (no admin approved it)",
        )
    sent_at = refund.decided_at or refund.created_at  # a refund that waited was sent then
    fresh = utcnow() - sent_at < timedelta(seconds=services.settings.pending_stale_seconds)
    if status == RefundStatus.PENDING and (fresh or found.status in stripe_check.STILL_PENDING):
        return None  # still under way on both sides; the worker's stale check follows it
    agrees = (status == RefundStatus.REFUNDED and found.status == stripe_check.SUCCEEDED) or (
        status == RefundStatus.FAILED and found.status in stripe_check.FINAL_FAILURES
    )
    if not agrees:
        return STRIPE_STATUS_DIFFERS, stripe_says, "review by hand: Stripe says where the money is"
    if status == RefundStatus.REFUNDED and found.amount_cents != _ledger_amount(refund):
        return STRIPE_AMOUNT_DIFFERS, stripe_says, "review by hand: Stripe says what was refunded"
    return None


def _ledger_amount(refund: Refund) -> int:
    if refund.status == RefundStatus.REFUNDED and refund.refunded_amount_cents is not None:
        return refund.refunded_amount_cents
    return refund.amount_cents


# -- fixing ---------------------------------------------------------------------------------------


def fix(services: Services, report: Report) -> None:
    """Re-project the ledger into Directus for the fixable mismatches; mark what was fixed."""
    client = services.directus
    names = services.settings.order_fields
    written: set[str] = set()
    missing = sorted(report.items_missing)
    for chunk in _chunks(missing):
        created = client.create_items(REFUNDS_COLLECTION, [report.items_to_write[i] for i in chunk])
        written |= {str(item.get("id")) for item in created} if created else set(chunk)
    existing = sorted(set(report.items_to_write) - report.items_missing)
    for chunk in _chunks(existing):
        updated = client.update_batch(REFUNDS_COLLECTION, [report.items_to_write[i] for i in chunk])
        written |= {str(item.get("id")) for item in updated}
    orders_written: set[str] = set()
    order_ids = sorted(report.orders_to_write)
    for chunk in _chunks(order_ids):
        # Only the owned fields, never the whole order (contract section 3).
        updated = client.update_batch(
            names.collection, [{"id": oid, **report.orders_to_write[oid]} for oid in chunk]
        )
        orders_written |= {str(item.get("id")) for item in updated}
    for mismatch in report.mismatches:
        if mismatch.kind in (REFUND_ITEM_MISSING, REFUND_ITEM_DIFFERS):
            mismatch.fixed = mismatch.refund_id in written
        elif mismatch.kind == ORDER_FIELDS_DIFFER:
            mismatch.fixed = mismatch.order_id in orders_written
    report.fix_applied = True


# -- printing -------------------------------------------------------------------------------------


def _row(mismatch: Mismatch) -> dict[str, Any]:
    row = asdict(mismatch)
    row["order_id"] = mismatch.order_id or "-"
    row["refund_id"] = mismatch.refund_id or "-"
    return row


def render(report: Report, fmt: str) -> str:
    """The report as `table`, `csv` or `json` text."""
    columns = [c for c in COLUMNS if c != "fixed" or report.fix_applied]
    rows = [_row(m) for m in report.mismatches]
    if fmt == "json":
        body = {
            "summary": report.summary(),
            "mismatches": [{c: row[c] for c in columns} for row in rows],
        }
        return json.dumps(body, indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {c: ("yes" if row[c] else "no") if c == "fixed" else row[c] for c in columns}
            )
        return out.getvalue()
    return _table(report, columns, rows)


def _table(report: Report, columns: list[str], rows: list[dict[str, Any]]) -> str:
    summary = report.summary()
    scope = f"since {summary['since']}" if summary["since"] else "all time"
    footer = (
        f"{summary['mismatches']} mismatch(es) ({scope}): {summary['refunds_checked']} refund(s), "
        f"{summary['orders_checked']} order(s), {summary['stripe_checked']} Stripe refund(s) "
        "checked"
    )
    if report.fix_applied:
        footer += f"; {summary['fixed']} fixed, {summary['remaining']} remaining"
    if not rows:
        return footer + "\n"
    cells = [[c.upper() for c in columns]] + [
        [("yes" if row[c] else "no") if c == "fixed" else str(row[c]) for c in columns]
        for row in rows
    ]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip() for line in cells
    ]
    return "\n".join([*lines, "", footer]) + "\n"
