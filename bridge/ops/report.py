"""The monthly refund report: `refund-bridge report` and `GET /ridendine/refunds/stats`.

Figures come from the ledger, in UTC calendar months; only the number of paid orders (the refund
rate's denominator) comes from Directus, as one aggregate query. Every figure's definition:
docs/operations.md ("The refund report").
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import or_, select

from bridge.store.models import Refund, RefundStatus
from directus_client import DirectusError

if TYPE_CHECKING:
    from bridge.services import Services

FORMATS = ("table", "csv", "json")
PAID_STATUSES = ("PAID", "PARTIALLY_REFUNDED", "REFUNDED")
_MONTH = re.compile(r"^(\d{4})-(0[1-9]|1[0-2])$")


REPORT_COLUMNS = (
    Refund.order_id,
    Refund.amount_cents,
    Refund.refunded_amount_cents,
    Refund.currency,
    Refund.reason,
    Refund.source,
    Refund.status,
    Refund.needs_review,
    Refund.failure_reason,
    Refund.created_at,
    Refund.resolved_at,
    Refund.decided_at,
)


class BadMonth(ValueError):
    """The month is not `YYYY-MM`."""


def parse_month(text: str) -> tuple[datetime, datetime]:
    """`YYYY-MM` -> [first instant of the month, first instant of the next), in UTC."""
    found = _MONTH.match(text.strip())
    if not found:
        raise BadMonth(f"month must be YYYY-MM, got {text!r}")
    year, month = int(found.group(1)), int(found.group(2))
    if year < 1970:
        raise BadMonth(f"month must be 1970-01 or later, got {text!r}")
    start = datetime(year, month, 1, tzinfo=UTC)
    end = datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC)
    return start, end


def current_month(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y-%m")


def percentile(values: Sequence[float], p: float) -> float | None:
    """The nearest-rank percentile: the smallest value with at least p % of values <= it."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def average_cents(total: int, count: int) -> int:
    """total / count rounded half up to a whole cent (integer arithmetic only)."""
    return (2 * total + count) // (2 * count)


def refund_amount(refund: Any) -> int:
    """What a refund moved: RideNDine's figure when it gave one, else the amount requested."""
    if refund.refunded_amount_cents is not None:
        return refund.refunded_amount_cents
    return refund.amount_cents


@dataclass
class RefundReport:
    month: str
    period_start: str
    period_end: str
    requested: int = 0
    pending: int = 0
    refunded: int = 0
    refunded_cents: dict[str, int] = field(default_factory=dict)
    average_refund_cents: dict[str, int] = field(default_factory=dict)
    refunded_orders: int = 0
    paid_orders: int | None = None
    refund_rate: float | None = None
    failed: int = 0
    failure_rate: float | None = None
    failure_reasons: dict[str, int] = field(default_factory=dict)
    by_reason: dict[str, dict[str, Any]] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    processing_seconds: dict[str, float | int | None] = field(default_factory=dict)
    needs_review: int = 0
    awaiting_approval: int = 0
    approved: int = 0
    denied: int = 0
    decision_seconds: dict[str, float | int | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_report(
    services: Services, month: str, *, paid_orders: int | bool | None = True
) -> RefundReport:
    """The report of `month` (`YYYY-MM`). `paid_orders`: True asks Directus; an int is used as
    given; None/False leaves the refund rate out."""
    start, end = parse_month(month)
    report = RefundReport(
        month=month,
        period_start=start.isoformat().replace("+00:00", "Z"),
        period_end=end.isoformat().replace("+00:00", "Z"),
    )
    with services.store.session() as session:
        # Only the columns the figures need (not the items, comments or history).
        refunds = list(
            session.execute(
                select(*REPORT_COLUMNS).where(
                    or_(
                        (Refund.created_at >= start) & (Refund.created_at < end),
                        (Refund.resolved_at >= start) & (Refund.resolved_at < end),
                        (Refund.decided_at >= start) & (Refund.decided_at < end),
                    )
                )
            )
        )
    _fill_from_ledger(report, refunds, start, end)
    if paid_orders is True:
        try:
            report.paid_orders = count_paid_orders(services, start, end)
        except DirectusError as exc:
            report.warnings.append(
                f"paid orders could not be counted in Directus ({type(exc).__name__}: "
                f"{exc.message}); refund rate left out"
            )
    elif isinstance(paid_orders, int) and not isinstance(paid_orders, bool):
        report.paid_orders = paid_orders
    if report.paid_orders:
        report.refund_rate = round(report.refunded_orders / report.paid_orders, 4)
    return report


def _within(value: datetime | None, start: datetime, end: datetime) -> bool:
    return value is not None and start <= value < end


def _fill_from_ledger(
    report: RefundReport, refunds: Sequence[Any], start: datetime, end: datetime
) -> None:
    """The figures from the ledger's rows (`REPORT_COLUMNS`) of refunds created or resolved
    in [start, end)."""
    totals: dict[str, int] = defaultdict(int)
    counts: dict[str, int] = defaultdict(int)
    orders: set[str] = set()
    reasons: dict[str, dict[str, Any]] = {}
    failures: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    durations: list[float] = []
    decisions: list[float] = []
    for refund in refunds:
        created_here = _within(refund.created_at, start, end)
        resolved_here = _within(refund.resolved_at, start, end)
        if created_here:
            report.requested += 1
            sources[refund.source] += 1
            if refund.status == RefundStatus.PENDING:
                report.pending += 1
            elif refund.status == RefundStatus.REQUESTED:
                report.awaiting_approval += 1
        if (created_here or resolved_here) and refund.needs_review:
            report.needs_review += 1
        if _within(refund.decided_at, start, end):
            decisions.append((refund.decided_at - refund.created_at).total_seconds())
            if refund.status == RefundStatus.DENIED:
                report.denied += 1
            else:
                report.approved += 1
        if not resolved_here or refund.resolved_at is None:
            continue
        sent_at = refund.decided_at or refund.created_at
        durations.append((refund.resolved_at - sent_at).total_seconds())
        if refund.status == RefundStatus.REFUNDED:
            amount = refund_amount(refund)
            report.refunded += 1
            totals[refund.currency] += amount
            counts[refund.currency] += 1
            orders.add(refund.order_id)
            entry = reasons.setdefault(refund.reason, {"count": 0, "refunded_cents": {}})
            entry["count"] += 1
            entry["refunded_cents"][refund.currency] = (
                entry["refunded_cents"].get(refund.currency, 0) + amount
            )
        elif refund.status == RefundStatus.FAILED:
            report.failed += 1
            failures[_failure_label(refund.failure_reason)] += 1
    report.refunded_cents = dict(sorted(totals.items()))
    report.average_refund_cents = {
        currency: average_cents(total, counts[currency]) for currency, total in totals.items()
    }
    report.average_refund_cents = dict(sorted(report.average_refund_cents.items()))
    report.refunded_orders = len(orders)
    resolved = report.refunded + report.failed
    report.failure_rate = round(report.failed / resolved, 4) if resolved else None
    report.failure_reasons = dict(sorted(failures.items(), key=lambda kv: (-kv[1], kv[0])))
    report.by_reason = dict(sorted(reasons.items()))
    report.by_source = dict(sorted(sources.items()))
    report.processing_seconds = _spread(durations)
    report.decision_seconds = _spread(decisions)


def _spread(seconds: list[float]) -> dict[str, float | int | None]:
    p50, p95 = percentile(seconds, 50), percentile(seconds, 95)
    return {
        "count": len(seconds),
        "p50": round(p50, 3) if p50 is not None else None,
        "p95": round(p95, 3) if p95 is not None else None,
    }


def _failure_label(reason: str | None) -> str:
    text = " ".join((reason or "").split())
    return text[:120] if text else "unknown"


def count_paid_orders(services: Services, start: datetime, end: datetime) -> int:
    """Orders paid in [start, end): one aggregate query in Directus, never a fetch of them."""
    names = services.settings.order_fields
    date_field = services.settings.report_order_date_field
    rows = services.directus.query_items(
        names.collection,
        filter={
            "_and": [
                {"payment_status": {"_in": list(PAID_STATUSES)}},
                {date_field: {"_gte": _directus_time(start)}},
                {date_field: {"_lt": _directus_time(end)}},
            ]
        },
        aggregate={"count": ["*"]},
    )
    if not rows:
        return 0
    value = rows[0].get("count")
    if isinstance(value, dict):  # count of a field: {"count": {"id": n}}
        value = next(iter(value.values()), 0)
    return int(value or 0)


def _directus_time(value: datetime) -> str:
    return value.strftime("%Y-%m-%dT%H:%M:%S")


# -- rendering ------------------------------------------------------------------------------


def render(report: RefundReport, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(report.as_dict(), indent=2)
    if fmt == "csv":
        return _csv(report)
    if fmt == "table":
        return _table(report)
    raise ValueError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")


def _rows(report: RefundReport) -> list[tuple[str, str, Any]]:
    """(metric, dimension, value): one figure per row, for the CSV and the table."""
    rows: list[tuple[str, str, Any]] = [
        ("requested", "", report.requested),
        ("pending", "", report.pending),
        ("refunded", "", report.refunded),
    ]
    rows += [("refunded_cents", cur, cents) for cur, cents in report.refunded_cents.items()]
    rows += [
        ("average_refund_cents", cur, cents) for cur, cents in report.average_refund_cents.items()
    ]
    rows += [
        ("refunded_orders", "", report.refunded_orders),
        ("paid_orders", "", _blank(report.paid_orders)),
        ("refund_rate", "", _blank(report.refund_rate)),
        ("failed", "", report.failed),
        ("failure_rate", "", _blank(report.failure_rate)),
    ]
    rows += [("failure_reason", label, n) for label, n in report.failure_reasons.items()]
    for reason, entry in report.by_reason.items():
        rows.append(("reason_count", reason, entry["count"]))
        rows += [
            ("reason_refunded_cents", f"{reason} {cur}", cents)
            for cur, cents in entry["refunded_cents"].items()
        ]
    rows += [("source_count", source, n) for source, n in report.by_source.items()]
    rows += [
        ("processing_seconds_count", "", report.processing_seconds.get("count", 0)),
        ("processing_seconds_p50", "", _blank(report.processing_seconds.get("p50"))),
        ("processing_seconds_p95", "", _blank(report.processing_seconds.get("p95"))),
        ("needs_review", "", report.needs_review),
        ("awaiting_approval", "", report.awaiting_approval),
        ("approved", "", report.approved),
        ("denied", "", report.denied),
        ("decision_seconds_count", "", report.decision_seconds.get("count", 0)),
        ("decision_seconds_p50", "", _blank(report.decision_seconds.get("p50"))),
        ("decision_seconds_p95", "", _blank(report.decision_seconds.get("p95"))),
    ]
    return rows


def _blank(value: Any) -> Any:
    return "" if value is None else value


def _csv(report: RefundReport) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["month", "metric", "dimension", "value"])
    for metric, dimension, value in _rows(report):
        writer.writerow([report.month, metric, dimension, value])
    return out.getvalue().rstrip("\n")


def _table(report: RefundReport) -> str:
    lines = [f"Refund report {report.month} (UTC, {report.period_start} to {report.period_end})"]
    rows = [(f"{m} {d}".strip(), "-" if v == "" else str(v)) for m, d, v in _rows(report)]
    width = max(len(label) for label, _ in rows)
    lines += [f"  {label.ljust(width)}  {value}" for label, value in rows]
    lines += [f"warning: {text}" for text in report.warnings]
    return "\n".join(lines)
