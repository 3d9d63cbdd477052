"""Prometheus metrics: `GET /metrics` (docs/observability.md lists every series).

Two kinds of series:
- events counted where they happen (HTTP requests, webhook outcomes, refunds created and
  resolved, outbox job runs, calls to Directus/RideNDine/Stripe, reconciliation mismatches):
  prometheus_client counters and histograms. Under gunicorn they are shared between the worker
  processes through prometheus_client's multiprocess mode (`PROMETHEUS_MULTIPROC_DIR`, set up
  by `refund-bridge serve`: see `multiprocess_dir`).
- states read from the store at scrape time (outbox depth and age, refunds by status and
  reason, inbox events waiting, refunds needing review) by `StoreCollector`: right across
  processes and instances because every process reads the same store.

The event metrics are built on first use, never at import: prometheus_client picks its value
class (in memory or in per-process files) from the environment, and `serve` sets that after
the command modules were imported.
"""

from __future__ import annotations

import functools
import hmac
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import requests
from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from bridge.errors import NotAuthenticated
from bridge.ledger import ledger
from bridge.store.driver import DriverTransaction, Transaction
from bridge.store.models import (
    InboxEvent,
    InboxState,
    OutboxJob,
    OutboxState,
    Refund,
    RefundStatus,
    RefundStatusChange,
    utcnow,
)

if TYPE_CHECKING:
    from bridge.config import Settings
    from bridge.store.db import Store

log = logging.getLogger(__name__)

PREFIX = "refund_bridge"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
UNMATCHED_ROUTE = "unmatched"
WEBHOOK_ENDPOINT = "webhooks.refund_status"
# The `g` attribute where the webhook's view leaves its outcome ("accepted", "duplicate").
WEBHOOK_OUTCOME = "webhook_outcome"
# Seconds; HTTP answers are mostly milliseconds, outbound calls up to the read timeouts.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# Webhook answers by status: what the rejection was about (contract section 3).
WEBHOOK_REJECTIONS: dict[int, str] = {
    400: "validation",
    401: "signature",
    413: "too_large",
    415: "media_type",
}


class _EventMetrics:
    """The counters and histograms; one set per process."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.http_requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route (the URL rule), method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer an HTTP request, by route and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.webhook_events = Counter(
            f"{PREFIX}_webhook_events",
            "Refund-status webhooks by outcome (accepted, duplicate, rejected, error) and reason",
            ["outcome", "reason"],
            registry=registry,
        )
        self.refunds_created = Counter(
            f"{PREFIX}_refunds_created",
            "Refunds recorded in the ledger, by source (cooco, ridendine) and reason",
            ["source", "reason"],
            registry=registry,
        )
        self.refunds_resolved = Counter(
            f"{PREFIX}_refunds_resolved",
            "Refunds that reached a result, by status (REFUNDED, FAILED) and reason",
            ["status", "reason"],
            registry=registry,
        )
        self.outbox_jobs = Counter(
            f"{PREFIX}_outbox_job_runs",
            "Outbox job attempts by kind and state afterwards (done, pending = retry, dead)",
            ["kind", "state"],
            registry=registry,
        )
        self.outbound_requests = Counter(
            f"{PREFIX}_outbound_requests",
            "Calls to Directus, RideNDine and Stripe by target, method and outcome "
            "(2xx, 3xx, 4xx, 5xx, timeout, connection_error, error)",
            ["target", "method", "outcome"],
            registry=registry,
        )
        self.outbound_duration = Histogram(
            f"{PREFIX}_outbound_request_duration_seconds",
            "Time of a call to Directus, RideNDine or Stripe (retries included)",
            ["target", "method"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.reconciliation_mismatches = Counter(
            f"{PREFIX}_reconciliation_mismatches",
            "Mismatches found by reconciliation, by kind",
            ["kind"],
            registry=registry,
        )
        # The children of the series counted on every request, by their labels: `labels()`
        # validates and locks on each call (docs/performance.md). The series keep every child
        # anyway, so these grow no more than the metrics themselves.
        self.http_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.webhook_children: dict[tuple[str, str], Any] = {}


_REGISTRY = CollectorRegistry(auto_describe=True)
_events: _EventMetrics | None = None
_events_lock = threading.Lock()


def _metrics() -> _EventMetrics:
    global _events
    if _events is None:
        with _events_lock:
            if _events is None:
                if os.environ.get(MULTIPROC_ENV) and not getattr(
                    values.ValueClass, "_multiprocess", False
                ):
                    # prometheus_client chose in-memory values when it was imported, before
                    # `serve` set the directory: choose again, before the first value exists.
                    values.ValueClass = values.get_value_class()
                disable_created_metrics()  # the `_created` series only double the output
                _events = _EventMetrics(_REGISTRY)
    return _events


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


# -- recording events -----------------------------------------------------------------------

F = TypeVar("F", bound=Callable[..., None])


def _never_raises(func: F) -> F:
    """A metric must never break the work it counts: failures are logged, not raised."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            func(*args, **kwargs)
        except Exception:
            log.warning("could not record a metric", exc_info=True)

    return wrapper  # type: ignore[return-value]


@_never_raises
def observe_http(route: str, method: str, status: int, seconds: float) -> None:
    events = _metrics()
    key = (route, method, status)
    children = events.http_children.get(key)
    if children is None:
        children = (
            events.http_requests.labels(route, method, str(status)),
            events.http_duration.labels(route, method),
        )
        events.http_children[key] = children
    children[0].inc()
    children[1].observe(seconds)


@_never_raises
def webhook_event(outcome: str, reason: str = "") -> None:
    """One refund-status webhook: `accepted`, `duplicate`, `rejected` (with a reason) or
    `error` (the bridge could not record it: 503)."""
    events = _metrics()
    child = events.webhook_children.get((outcome, reason))
    if child is None:
        child = events.webhook_children[(outcome, reason)] = events.webhook_events.labels(
            outcome, reason
        )
    child.inc()


@_never_raises
def refund_created(source: str, reason: str) -> None:
    _metrics().refunds_created.labels(source, reason).inc()


@_never_raises
def refund_resolved(status: str, reason: str) -> None:
    _metrics().refunds_resolved.labels(status, reason).inc()


@_never_raises
def outbox_job_run(kind: str, state: str) -> None:
    _metrics().outbox_jobs.labels(kind, state).inc()


@_never_raises
def reconciliation_mismatches(kinds: Iterable[str]) -> None:
    counter = _metrics().reconciliation_mismatches
    for kind in kinds:
        counter.labels(kind).inc()


def after_commit(session: Transaction | None, record: Callable[[], None]) -> None:
    """Run `record` once the session's transaction commits (nothing on rollback), so that a
    transaction retried after a conflict is not counted twice; at once without a session."""
    if session is None:
        record()
        return
    if isinstance(session, DriverTransaction):
        session.after_commit(lambda: _safely(record))
        return
    from sqlalchemy import event

    def _committed(_session: Session) -> None:
        _safely(record)

    def _rolled_back(_session: Session, previous: Any) -> None:
        # Only the outermost transaction's rollback undoes the change (not a savepoint's).
        if previous.parent is None and event.contains(session, "after_commit", _committed):
            event.remove(session, "after_commit", _committed)

    event.listen(session, "after_commit", _committed, once=True)
    event.listen(session, "after_soft_rollback", _rolled_back, once=True)


def _safely(record: Callable[[], None]) -> None:
    # A metric must never break the work it counts.
    try:
        record()
    except Exception:
        log.warning("could not record a metric", exc_info=True)


def count_ledger_changes() -> None:
    """Count refunds created and resolved from the ledger's history lines as they are written,
    once their transaction commits: the ledger itself knows nothing of metrics. Called by the
    processes that serve metrics (the web app, the worker); idempotent."""
    from sqlalchemy import event

    if not event.contains(RefundStatusChange, "after_insert", _history_written):
        event.listen(RefundStatusChange, "after_insert", _history_written)
    # A refund request writes its new refund with Core statements (no ORM event): told here.
    ledger.on_created(_refund_written)


def _refund_written(session: Transaction, refund: Refund) -> None:
    source, reason = str(refund.source or "cooco"), str(refund.reason)
    after_commit(session, lambda: refund_created(source, reason))


def _history_written(_mapper: Any, _connection: Any, change: RefundStatusChange) -> None:
    from sqlalchemy.orm import object_session

    refund = change.refund  # set in memory: lines are appended to refund.history
    reason, status = str(refund.reason), str(change.to_status)
    if change.from_status is None:
        source = str(refund.source or "cooco")
        after_commit(object_session(refund), lambda: refund_created(source, reason))
    elif status != change.from_status and status in (RefundStatus.REFUNDED, RefundStatus.FAILED):
        after_commit(object_session(refund), lambda: refund_resolved(status, reason))


# -- outbound calls (Directus, RideNDine, Stripe) -------------------------------------------


def instrument_session(session: requests.Session, target: str) -> requests.Session:
    """Time every request the session sends and count it by outcome.

    Wraps `Session.send`, the one call every request of a session goes through (adapters'
    retries happen inside it, so the time is what the caller waited). Idempotent.
    """
    if getattr(session, "_refund_bridge_target", None) is not None:
        return session
    send = session.send

    def timed_send(prepared: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        method = str(prepared.method or "GET").upper()
        started = time.perf_counter()
        outcome = "error"
        try:
            response = send(prepared, **kwargs)
            outcome = f"{response.status_code // 100}xx"
            return response
        except requests.Timeout:
            outcome = "timeout"
            raise
        except requests.ConnectionError:
            outcome = "connection_error"
            raise
        finally:
            seconds = time.perf_counter() - started

            def _record() -> None:
                events = _metrics()
                events.outbound_requests.labels(target, method, outcome).inc()
                events.outbound_duration.labels(target, method).observe(seconds)

            _safely(_record)

    session.send = timed_send  # type: ignore[method-assign,assignment]
    session._refund_bridge_target = target  # type: ignore[attr-defined]
    return session


def instrumented_session(target: str) -> requests.Session:
    """A new requests session whose calls are measured (e.g. for stripe.RequestsClient)."""
    return instrument_session(requests.Session(), target)


# -- states read from the store at scrape time ----------------------------------------------


class StoreCollector(Collector):
    """Gauges computed from the store on every scrape: a handful of grouped counts on indexed
    columns (done outbox jobs, the bulk of the table, are not counted)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(f"{PREFIX}_store_up", "1 when the store answered this scrape")
        try:
            with self.store.session() as session:
                families = list(_store_families(session))
        except Exception:
            log.warning("metrics: the store did not answer", exc_info=True)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield from families


def _store_families(session: Session) -> Iterator[Metric]:
    now = utcnow()
    depth = GaugeMetricFamily(
        f"{PREFIX}_outbox_jobs",
        "Outbox jobs not done, by kind and state (pending, dead)",
        labels=["kind", "state"],
    )
    rows = session.execute(
        select(OutboxJob.kind, OutboxJob.state, func.count())
        .where(OutboxJob.state.in_((OutboxState.PENDING, OutboxState.DEAD)))
        .group_by(OutboxJob.kind, OutboxJob.state)
    )
    for kind, state, count in rows:
        depth.add_metric([str(kind), str(state)], int(count))
    yield depth

    oldest_due = session.scalar(
        select(func.min(OutboxJob.next_attempt_at)).where(
            OutboxJob.state == OutboxState.PENDING, OutboxJob.next_attempt_at <= now
        )
    )
    due_age = GaugeMetricFamily(
        f"{PREFIX}_outbox_oldest_due_age_seconds",
        "How long the longest-waiting due outbox job has been due (0 when none is due)",
    )
    due_age.add_metric([], _age(now, oldest_due))
    yield due_age

    oldest_pending = session.scalar(
        select(func.min(OutboxJob.created_at)).where(OutboxJob.state == OutboxState.PENDING)
    )
    pending_age = GaugeMetricFamily(
        f"{PREFIX}_outbox_oldest_pending_age_seconds",
        "Age of the oldest outbox job not yet done, retries included (0 when none)",
    )
    pending_age.add_metric([], _age(now, oldest_pending))
    yield pending_age

    # One pass over the refunds for the three refund gauges.
    refunds = GaugeMetricFamily(
        f"{PREFIX}_refunds",
        "Refunds in the ledger by status and reason",
        labels=["status", "reason"],
    )
    needing_review = 0
    oldest_refund: datetime | None = None
    flagged = func.sum(case((Refund.needs_review.is_(True), 1), else_=0))
    for status, reason, count, in_review, oldest in session.execute(
        select(
            Refund.status, Refund.reason, func.count(), flagged, func.min(Refund.created_at)
        ).group_by(Refund.status, Refund.reason)
    ):
        refunds.add_metric([str(status), str(reason)], int(count))
        needing_review += int(in_review or 0)
        if status == RefundStatus.PENDING and oldest is not None:
            oldest_refund = oldest if oldest_refund is None else min(oldest_refund, oldest)
    yield refunds

    review = GaugeMetricFamily(
        f"{PREFIX}_refunds_needing_review", "Refunds flagged for a person (needs_review)"
    )
    review.add_metric([], needing_review)
    yield review

    pending_refund_age = GaugeMetricFamily(
        f"{PREFIX}_refund_oldest_pending_age_seconds",
        "Age of the oldest PENDING refund (0 when none)",
    )
    pending_refund_age.add_metric([], _age(now, oldest_refund))
    yield pending_refund_age

    inbox = GaugeMetricFamily(
        f"{PREFIX}_inbox_events",
        "Webhook events not applied, by state (received, unmatched, failed)",
        labels=["state"],
    )
    waiting = (InboxState.RECEIVED, InboxState.UNMATCHED, InboxState.FAILED)
    counts = dict.fromkeys((str(s) for s in waiting), 0)
    for state, count in session.execute(
        select(InboxEvent.state, func.count())
        .where(InboxEvent.state.in_(waiting))
        .group_by(InboxEvent.state)
    ):
        counts[str(state)] = int(count)
    for state, count in counts.items():
        inbox.add_metric([state], count)
    yield inbox


def _age(now: datetime, since: datetime | None) -> float:
    return max(0.0, (now - since).total_seconds()) if since is not None else 0.0


# -- exposition -----------------------------------------------------------------------------


class _EventsCollector(Collector):
    """This process's event metrics, in a registry built for one scrape."""

    def collect(self) -> Iterator[Metric]:
        _metrics()
        yield from _REGISTRY.collect()


def scrape_registry(store: Store | None) -> CollectorRegistry:
    """A registry for one scrape: the event metrics (every process's in multiprocess mode,
    else this one's) and the store's gauges."""
    registry = CollectorRegistry()
    if multiprocess_enabled():
        multiprocess.MultiProcessCollector(registry)
    else:
        registry.register(_EventsCollector())
    if store is not None:
        registry.register(StoreCollector(store))
    return registry


def render(store: Store | None) -> bytes:
    return generate_latest(scrape_registry(store))


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def metrics_view() -> Response:
    from bridge.store.db import get_store

    settings: Settings = current_app.config["BRIDGE_SETTINGS"]
    expected = settings.metrics_token
    if expected:
        given = request.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            token.strip().encode("utf-8"), expected.encode("utf-8")
        ):
            raise NotAuthenticated("Send `Authorization: Bearer <BRIDGE_METRICS_TOKEN>`.")
    return Response(render(get_store()), mimetype=None, content_type=CONTENT_TYPE_LATEST)


# -- HTTP instrumentation -------------------------------------------------------------------


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


def _observe(response: Response) -> Response:
    started = getattr(g, "metrics_started", None)
    if started is None:
        return response
    seconds = time.perf_counter() - started
    rule = request.url_rule
    route = rule.rule if rule is not None else UNMATCHED_ROUTE
    status = response.status_code

    def _record() -> None:
        observe_http(route, request.method, status, seconds)
        if request.endpoint == WEBHOOK_ENDPOINT:
            _record_webhook(response)

    _safely(_record)
    return response


def _record_webhook(response: Response) -> None:
    status = response.status_code
    if status == 200:
        # The view says which (WEBHOOK_OUTCOME); reading the answer's JSON is the fallback.
        outcome = g.get(WEBHOOK_OUTCOME)
        if outcome is None:
            body = response.get_json(silent=True)
            outcome = body.get("status") if isinstance(body, dict) else None
        webhook_event("duplicate" if outcome == "duplicate" else "accepted")
    elif status in WEBHOOK_REJECTIONS:
        webhook_event("rejected", WEBHOOK_REJECTIONS[status])
    elif status >= 500:
        webhook_event("error", str(status))
    else:
        webhook_event("rejected", str(status))


def init_app(app: Flask) -> None:
    """Time every request and count it by route and status; serve `/metrics`."""
    app.before_request(_start_timer)
    app.after_request(_observe)
    app.register_blueprint(bp)
    count_ledger_changes()


# -- processes ------------------------------------------------------------------------------


@contextmanager
def multiprocess_dir() -> Iterator[str]:
    """The directory gunicorn's workers share their metrics through (`serve`).

    An operator's `PROMETHEUS_MULTIPROC_DIR` is used as given (they empty it before starting);
    otherwise a new temporary directory is made, handed to the workers through the environment
    (they are forked after this), and removed when the server stops.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        os.makedirs(given, exist_ok=True)
        yield given
        return
    path = tempfile.mkdtemp(prefix="refund-bridge-metrics-")
    os.environ[MULTIPROC_ENV] = path
    try:
        yield path
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(path, ignore_errors=True)


def mark_process_dead(pid: int) -> None:
    """gunicorn's `child_exit` hook: drop a dead worker's live gauges (counters stay)."""
    if multiprocess_enabled():
        multiprocess.mark_process_dead(pid)


def start_exporter(port: int, addr: str, store: Store | None) -> Any:
    """Serve this process's metrics (and the store's) on addr:port, in a daemon thread.
    Returns the server (its `server_port` is the port, when 0 asked for any)."""
    from prometheus_client import start_http_server

    server, _thread = start_http_server(port, addr=addr, registry=scrape_registry(store))
    return server


def start_worker_exporter(settings: Settings, store: Store | None) -> Any:
    """The worker's metrics (its outbox runs, its calls out) on BRIDGE_WORKER_METRICS_PORT,
    which gunicorn's /metrics cannot see; None when the port is 0 (the default) or taken.
    Metrics never stop the worker: a port that is taken is logged, and the worker runs on."""
    if not settings.worker_metrics_port:
        return None
    try:
        server = start_exporter(settings.worker_metrics_port, settings.worker_metrics_addr, store)
    except OSError as exc:  # the port is taken, or the address is not this machine's
        log.error(
            "worker metrics: cannot listen on %s:%d (%s)",
            settings.worker_metrics_addr,
            settings.worker_metrics_port,
            exc.strerror or type(exc).__name__,
        )
        return None
    log.info(
        "worker metrics on http://%s:%d/metrics",
        settings.worker_metrics_addr,
        settings.worker_metrics_port,
    )
    return server
