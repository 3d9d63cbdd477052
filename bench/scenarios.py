"""The benchmark's scenarios (docs/performance.md): webhook ingest, its baseline, refund requests
and theirs, a backlog drained after a Directus outage with Directus's raw rate beside it, and
the growth of cost with N.

Seeding is not measured: orders are created in Directus in batches, and PENDING refunds are
written straight into the bridge's ledger with their Directus items (as the refund request
path would have left them), each batch with ids of its own.
"""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import requests
import urllib3
from standardwebhooks.webhooks import Webhook

from bench import load
from bench.counting import BridgeMetrics, DirectusLog
from bench.stack import API_TOKEN, BRIDGE_USER_AGENT, BenchStack
from bridge.directus.projection import refund_item
from bridge.refunds.ridendine import RideNDineClient
from bridge.store.db import Store
from bridge.store.models import Refund, RefundSource, RefundStatus, RefundStatusChange, utcnow

AMOUNT_CENTS = 5000
# Items per seeding request: 250 refund items are about 0.28 MB, under Directus's default
# MAX_PAYLOAD_SIZE of 1 MB (1000 were 1.1 MB: `make bench` stopped at scenario 1).
SEED_CHUNK = 250
POLL_SECONDS = 0.25
BASELINE_USER_AGENT = "refund-bridge-bench-baseline"
POLL_USER_AGENT = "refund-bridge-bench-poll"
WEBHOOK_PATH = "/ridendine/webhooks/refund-status"
RAW_BATCH = 100  # items per batch PATCH when measuring Directus's raw rate
MAILS_PER_RESULT = 3  # customer, chef, admins


def chunks(values: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(values), size):
        yield values[start : start + size]


@dataclass
class Event:
    order_id: str
    refund_id: str  # the bridge's
    ridendine_refund_id: str


@dataclass
class Batch:
    label: str
    prefix: str
    events: list[Event]


# Scenario 3 alternates its two sides in this many rounds (each side gets N / rounds per round).
REQUEST_ROUNDS = 4
# Scenario 3b burns its stand-in for the bridge's CPU in this many processes (the bridge's two
# web workers), in these parts of each refund: before the order read, between it and
# RideNDine's create, after the item create.
CHAIN_BURNERS = 2
CHAIN_BURN_PARTS = (0.3, 0.3, 0.4)
CHAIN_BURN_MS = 10.5  # when scenario 3 did not run first: its CPU per refund (2026-12-04)


def alternate_rounds(
    order_ids: Sequence[str],
    first: Callable[[Sequence[str]], None],
    second: Callable[[Sequence[str]], None],
) -> None:
    """Scenario 3's (and 3b's) two sides on N / REQUEST_ROUNDS orders a round, in the order
    first, second, second, first, ...: the machine's speed drifts over a run
    (docs/performance.md), and this way a drift costs both sides alike."""
    for index, part in enumerate(load.split(order_ids, REQUEST_ROUNDS)):
        for side in (first, second) if index % 2 == 0 else (second, first):
            side(part)


def burn_cpu(seconds: float) -> float:
    """Spend `seconds` of this process's CPU (scenario 3b's stand-in for the bridge's work);
    returns the CPU seconds spent."""
    start = time.thread_time()
    end = start + seconds
    while time.thread_time() < end:
        sum(range(200))
    return time.thread_time() - start


@dataclass
class _Side:
    """One side of scenario 3's ratio over its rounds: the requests, and the CPU that the
    processes a refund request keeps busy used meanwhile (`BenchStack.cpu_seconds`)."""

    result: load.LoadResult = field(default_factory=load.LoadResult)
    cpu: dict[str, float] = field(default_factory=dict)

    def measure(self, stack: BenchStack, run: Callable[[], load.LoadResult]) -> None:
        before = stack.cpu_seconds()
        self.result.add(run())
        after = stack.cpu_seconds()
        for name, value in after.items():
            self.cpu[name] = self.cpu.get(name, 0.0) + value - before.get(name, 0.0)

    def cpu_report(self) -> dict[str, Any]:
        """CPU per request by process, and Directus's busy share (its CPU seconds / the
        seconds): what tells whether Directus or the bridge limits the rate."""
        n, seconds = self.result.count, self.result.seconds
        return {
            "cpu_ms_per_request": {
                name: round(1000 * value / n, 2) if n else None for name, value in self.cpu.items()
            },
            "directus_busy": round(self.cpu.get("directus", 0.0) / seconds, 3) if seconds else None,
        }


@dataclass
class _Chain:
    """What scenario 3b adds to the direct work: RideNDine's create, and CPU burnt elsewhere."""

    ridendine: RideNDineClient
    burners: ProcessPoolExecutor | None
    burn_seconds: float
    run_id: str
    burnt_seconds: float = 0.0
    ridendine_calls: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def burn(self, part: int) -> None:
        if self.burners is not None:
            task = self.burners.submit(burn_cpu, self.burn_seconds * CHAIN_BURN_PARTS[part])
            burnt = task.result()
            with self.lock:
                self.burnt_seconds += burnt

    def ask_ridendine(self, order_id: str) -> None:
        with self.lock:
            self.ridendine_calls += 1
        self.ridendine.create_refund(
            idempotency_key=f"chain-{self.run_id}-{uuid.uuid4().hex[:12]}",
            ridendine_order_id=f"rdn-{order_id}",
            external_order_id=order_id,
            amount_cents=AMOUNT_CENTS,
            reason="chef_rejected",
            requested_by="admin",
        )


class Bench:
    def __init__(self, stack: BenchStack, *, concurrency: int) -> None:
        self.stack = stack
        self.concurrency = concurrency
        self.run_id = uuid.uuid4().hex[:6]
        self.seed = stack.seed_client()
        self.poll = stack.seed_client()
        self.poll.session.headers["User-Agent"] = POLL_USER_AGENT
        self.store = Store(f"sqlite:///{stack.database_path}")
        self.log = DirectusLog(stack.directus_log) if stack.directus_log else None
        self.metrics = BridgeMetrics(
            stack.bridge_url, f"http://127.0.0.1:{stack.worker_metrics_port}"
        )
        self.webhook = Webhook(stack.settings.webhook_secrets[0])
        bridge = urllib3.util.parse_url(stack.bridge_url)
        self.bridge_host, self.bridge_port = str(bridge.host), int(bridge.port or 80)

    def close(self) -> None:
        self.seed.close()
        self.poll.close()
        self.store.dispose()

    # -- seeding ---------------------------------------------------------------------------

    def orders(self, label: str, n: int) -> tuple[str, list[str]]:
        """n PAID orders of the benchmark's customer and chef, in Directus."""
        prefix = f"bench-{self.run_id}-{label}-"
        ids = [f"{prefix}{index:06d}" for index in range(n)]
        for part in chunks(ids, SEED_CHUNK):
            self.seed.create_items(
                "orders",
                [
                    {
                        "id": order_id,
                        "ridendine_order_id": f"rdn-{order_id}",
                        "status": "DELIVERED",
                        "payment_status": "PAID",
                        "amount_paid_cents": AMOUNT_CENTS,
                        "currency": "EUR",
                        "customer": self.stack.customer["id"],
                        "chef": self.stack.chef["id"],
                    }
                    for order_id in part
                ],
            )
        return prefix, ids

    def pending_refunds(self, label: str, n: int, *, ledger: bool = True) -> Batch:
        """n orders, each with a PENDING refund that RideNDine accepted (its refund id known):
        in the ledger (unless `ledger` is false: the baselines) and as items in Directus."""
        prefix, order_ids = self.orders(label, n)
        events = [
            Event(order_id, f"rf_{uuid.uuid4().hex[:24]}", f"re_bench_{uuid.uuid4().hex[:20]}")
            for order_id in order_ids
        ]
        for part in chunks(events, SEED_CHUNK):
            now = utcnow()
            refunds = [self.seeded_refund(event, now) for event in part]
            if ledger:
                with self.store.session() as session:
                    session.add_all(refunds)
            self.seed.create_items("refunds", [refund_item(refund) for refund in refunds])
        return Batch(label, prefix, events)

    @staticmethod
    def seeded_refund(event: Event, now: datetime) -> Refund:
        """A PENDING refund that RideNDine accepted, as the benchmark seeds it."""
        refund = Refund(
            id=event.refund_id,
            order_id=event.order_id,
            ridendine_order_id=f"rdn-{event.order_id}",
            amount_cents=AMOUNT_CENTS,
            order_paid_cents=AMOUNT_CENTS,
            currency="EUR",
            reason="chef_rejected",
            requested_by="admin",
            status=RefundStatus.PENDING,
            ridendine_refund_id=event.ridendine_refund_id,
            source=RefundSource.COOCO,
            needs_review=False,
            created_at=now - timedelta(seconds=5),
            updated_at=now,
        )
        refund.history.append(
            RefundStatusChange(
                from_status=None,
                to_status=RefundStatus.PENDING,
                source="request",
                detail="seeded by the benchmark",
                at=now - timedelta(seconds=5),
            )
        )
        refund.history.append(
            RefundStatusChange(
                from_status=RefundStatus.PENDING,
                to_status=RefundStatus.PENDING,
                source="ridendine_api",
                detail=f"accepted by RideNDine (HTTP 201), refund_id {event.ridendine_refund_id}",
                at=now,
            )
        )
        return refund

    # -- sending ---------------------------------------------------------------------------

    def _bridge_pool(self) -> urllib3.HTTPConnectionPool:
        return urllib3.HTTPConnectionPool(
            self.bridge_host, self.bridge_port, maxsize=1, timeout=30.0, retries=False
        )

    def _send_webhook(self, pool: urllib3.HTTPConnectionPool, event: Event) -> int:
        body = json.dumps(
            {
                "refund_id": event.ridendine_refund_id,
                "external_order_id": event.order_id,
                "amount_cents": AMOUNT_CENTS,
                "status": "REFUNDED",
                "currency_code": "EUR",
            },
            separators=(",", ":"),
        )
        webhook_id = f"msg_{uuid.uuid4().hex}"
        now = datetime.now(UTC)
        headers = {
            "Content-Type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self.webhook.sign(webhook_id, now, body),
        }
        response = pool.urlopen("POST", WEBHOOK_PATH, body=body.encode(), headers=headers)
        return int(response.status)

    def send_webhooks(self, batch: Batch) -> load.LoadResult:
        return load.run(
            batch.events,
            self._send_webhook,
            concurrency=self.concurrency,
            make_client=self._bridge_pool,
        )

    # -- waiting (bounded) -----------------------------------------------------------------

    def refunded_orders(self, prefix: str) -> int:
        rows = self.poll.query_items(
            "orders",
            filter={
                "_and": [
                    {"id": {"_starts_with": prefix}},
                    {"payment_status": {"_eq": "REFUNDED"}},
                    {"status": {"_eq": "CANCELLED"}},
                ]
            },
            aggregate={"count": "*"},
        )
        return int(rows[0]["count"]) if rows else 0

    def wait_orders(self, batch: Batch, started: float, timeout: float) -> tuple[float, int]:
        """Seconds from `started` until every order of the batch is REFUNDED and CANCELLED
        in Directus (or the timeout), and how many are.

        Polled cheaply: the bridge's store says when no order update is left to do (its
        `apply_order` jobs, which end when Directus answered the PATCH); only then is Directus
        asked (a count over tens of thousands of orders four times a second would cost
        Directus more than a part of the work measured)."""
        deadline = time.monotonic() + timeout
        done = 0
        while True:
            if not self.pending("apply_order"):
                try:
                    done = self.refunded_orders(batch.prefix)
                except Exception:  # Directus restarting: asked again
                    done = done
                if done >= len(batch.events):
                    return time.perf_counter() - started, done
            if time.monotonic() >= deadline:
                return time.perf_counter() - started, done
            time.sleep(POLL_SECONDS)

    def pending(self, kind: str) -> int:
        """Pending outbox jobs of a kind, read from the bridge's store (read-only)."""
        uri = f"file:{self.stack.database_path}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=30) as connection:
            (count,) = connection.execute(
                "SELECT count(*) FROM outbox_jobs WHERE state = 'pending' AND kind = ?", (kind,)
            ).fetchone()
        connection.close()
        return int(count)

    def outbox(self) -> dict[str, int]:
        """Outbox jobs by state, read from the bridge's store (read-only)."""
        uri = f"file:{self.stack.database_path}?mode=ro"
        with sqlite3.connect(uri, uri=True, timeout=30) as connection:
            rows = connection.execute(
                "SELECT state, count(*) FROM outbox_jobs GROUP BY state"
            ).fetchall()
        connection.close()
        return {str(state): int(count) for state, count in rows}

    def wait_outbox_idle(self, started: float, timeout: float) -> tuple[float, dict[str, int]]:
        """Seconds from `started` until no outbox job is pending (every order update,
        projection and notification done), or the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            states = self.outbox()
            if not states.get("pending") or time.monotonic() >= deadline:
                return time.perf_counter() - started, states
            time.sleep(POLL_SECONDS)

    def wait_mails(self, expected_total: int, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while True:
            count = self.stack.mail_count()
            if count >= expected_total or time.monotonic() >= deadline:
                return count
            time.sleep(POLL_SECONDS)

    # -- counting --------------------------------------------------------------------------

    def mark(self) -> dict[str, Any]:
        time.sleep(0.3)  # lines of answers just given reach the log
        return {
            "log": self.log.mark() if self.log else None,
            "metrics": self.metrics.directus_requests(),
            "mails": self.stack.mail_count(),
            "outbox": self.outbox(),
        }

    def directus_requests(self, mark: dict[str, Any], events: int) -> dict[str, Any]:
        """The bridge's requests to Directus since `mark`, per event, both ways of counting."""
        time.sleep(0.3)
        by_metrics = self.metrics.directus_requests() - int(mark["metrics"])
        counted: dict[str, Any] = {
            "bridge_metrics": by_metrics,
            "bridge_metrics_per_event": round(by_metrics / events, 3) if events else None,
        }
        if self.log is not None and mark["log"] is not None:
            routes = self.log.since(int(mark["log"]), BRIDGE_USER_AGENT)
            total = sum(routes.values())
            counted.update(
                directus_log=total,
                directus_log_per_event=round(total / events, 3) if events else None,
                by_route=dict(routes.most_common()),
            )
        counted["per_event"] = counted.get("directus_log_per_event", by_metrics / events)
        return counted

    def errors_in(self, mark: dict[str, Any]) -> dict[str, int]:
        states = self.outbox()
        before = mark["outbox"]
        return {"dead_jobs": states.get("dead", 0) - before.get("dead", 0)}

    # -- scenarios -------------------------------------------------------------------------

    def wait_timeout(self, n: int) -> float:
        # Bounded: a bridge slower than 5 events/s fails the run rather than stalling it.
        return 120.0 + n * 0.2

    def webhook_ingest(self, n: int, label: str = "ingest") -> dict[str, Any]:
        """Scenario 1: N signed REFUNDED webhooks at the configured concurrency."""
        batch = self.pending_refunds(label, n)
        mark = self.mark()
        started = time.perf_counter()
        answers = self.send_webhooks(batch)
        orders_seconds, updated = self.wait_orders(batch, started, self.wait_timeout(n))
        done_seconds, states = self.wait_outbox_idle(started, self.wait_timeout(n))
        counted = self.directus_requests(mark, n)
        mails = self.wait_mails(mark["mails"] + MAILS_PER_RESULT * n, 30.0) - mark["mails"]
        errors = {
            "answers_not_200": len(answers.errors),
            "orders_not_updated": n - updated,
            "jobs_left_pending": states.get("pending", 0),
            **self.errors_in(mark),
            "mails_missing": max(0, MAILS_PER_RESULT * n - mails),
            # One result, one notification (on a sink of our own: a shared one may get
            # other senders' mail meanwhile).
            "mails_extra": max(0, mails - MAILS_PER_RESULT * n) if self.stack.owns_directus else 0,
        }
        self.stack.check_running()
        return {
            "n": n,
            "concurrency": self.concurrency,
            "answers": {
                "seconds": round(answers.seconds, 3),
                "per_second": round(answers.rate(), 1),
                "latency_ms": answers.percentiles_ms(),
                "statuses": {str(k): v for k, v in sorted(answers.statuses.items())},
                "first_errors": answers.errors[:5],
            },
            "orders_updated_seconds": round(orders_seconds, 3),
            "end_to_end_seconds": round(done_seconds, 3),
            "seconds_per_event_ms": round(done_seconds / n * 1000, 3),
            "directus_requests": counted,
            "mails": mails,
            "errors": errors,
            "error_count": sum(errors.values()),
            "memory": self.stack.memory(),
        }

    def baseline(self, n: int, label: str = "baseline") -> dict[str, Any]:
        """Scenario 2: the same results applied straight to Directus with plain requests, only
        the unavoidable calls (the order's two fields, the refund item, the Flow)."""
        batch = self.pending_refunds(label, n, ledger=False)
        settings = self.stack.settings
        url = self.stack.directus.url
        trigger = f"{url}/flows/trigger/{self.stack.flow_id}"
        mails_before = self.stack.mail_count()

        def session() -> requests.Session:
            client = requests.Session()
            client.headers.update(
                {
                    "Authorization": f"Bearer {self.stack.directus.admin_token}",
                    "User-Agent": BASELINE_USER_AGENT,
                }
            )
            return client

        def apply(client: requests.Session, event: Event) -> int:
            now = utcnow().isoformat().replace("+00:00", "Z")
            worst = 200
            answer = client.patch(
                f"{url}/items/orders/{event.order_id}",
                json={"payment_status": "REFUNDED", "status": "CANCELLED"},
                timeout=30,
            )
            worst = max(worst, answer.status_code)
            refund = {
                "status": "REFUNDED",
                "refunded_amount_cents": AMOUNT_CENTS,
                "updated_at": now,
                "status_history": [
                    {"from_status": "PENDING", "to_status": "REFUNDED", "source": "webhook"}
                ],
            }
            answer = client.patch(f"{url}/items/refunds/{event.refund_id}", json=refund, timeout=30)
            worst = max(worst, answer.status_code)
            answer = client.post(
                trigger,
                json={
                    "secret": settings.flow_secret,
                    "kind": "refund_result",
                    "refund": {
                        "id": event.refund_id,
                        "order_id": event.order_id,
                        "amount_cents": AMOUNT_CENTS,
                        "refunded_amount_cents": AMOUNT_CENTS,
                        "currency": "EUR",
                        "reason": "chef_rejected",
                        "status": "REFUNDED",
                    },
                    "order": {
                        "id": event.order_id,
                        "ridendine_order_id": f"rdn-{event.order_id}",
                        "status": "CANCELLED",
                        "payment_status": "REFUNDED",
                    },
                    "amount_display": "50.00 EUR",
                    "recipients": {
                        "customer": self.stack.customer["email"],
                        "chef": self.stack.chef["email"],
                        "admins": list(settings.admin_emails),
                    },
                },
                timeout=30,
            )
            ok = answer.status_code == 200 and answer.json().get("ok") is True
            return max(worst, answer.status_code) if ok else 599

        result = load.run(batch.events, apply, concurrency=self.concurrency, make_client=session)
        updated = self.refunded_orders(batch.prefix)
        mails = self.wait_mails(mails_before + MAILS_PER_RESULT * n, 30.0) - mails_before
        errors = {
            "calls_failed": len(result.errors),
            "orders_not_updated": n - updated,
            "mails_missing": max(0, MAILS_PER_RESULT * n - mails),
        }
        return {
            "n": n,
            "concurrency": self.concurrency,
            "seconds": round(result.seconds, 3),
            "events_per_second": round(result.rate(), 1),
            "directus_requests_per_event": 3,
            "event_latency_ms": result.percentiles_ms(),
            "first_errors": result.errors[:5],
            "errors": errors,
            "error_count": sum(errors.values()),
        }

    def refund_requests(self, n: int, label: str = "requests") -> dict[str, Any]:
        """Scenario 3: N refund requests (POST /ridendine/refunds) against the sandbox, and the
        same orders' unavoidable Directus work done directly, in alternating rounds."""
        _prefix, order_ids = self.orders(label, n)
        mark = self.mark()

        def send(pool: urllib3.HTTPConnectionPool, order_id: str) -> int:
            body = json.dumps(
                {"order_id": order_id, "reason": "chef_rejected", "requested_by": "admin"}
            )
            response = pool.urlopen(
                "POST",
                "/ridendine/refunds",
                body=body.encode(),
                headers={
                    "Content-Type": "application/json",
                    "Authorization": f"Bearer {API_TOKEN}",
                    "Idempotency-Key": f"bench-{order_id}",
                },
            )
            return int(response.status)

        def through_bridge(part: Sequence[str]) -> load.LoadResult:
            return load.run(
                part,
                send,
                concurrency=self.concurrency,
                make_client=self._bridge_pool,
                ok=lambda status: status == 202,
            )

        bridge, direct = _Side(), _Side()
        background = 0.0
        states: dict[str, int] = {}

        def bridge_round(part: Sequence[str]) -> None:
            nonlocal background, states
            bridge.measure(self.stack, partial(through_bridge, part))
            # What the requests left for the worker (nothing, when every request projected
            # its refund): done before the next round, timed on its own.
            seconds, states = self.wait_outbox_idle(
                time.perf_counter(), self.wait_timeout(len(part))
            )
            background += seconds

        alternate_rounds(order_ids, bridge_round, partial(self._measure_direct, direct))
        answers = bridge.result
        counted = self.directus_requests(mark, n)
        baseline = {
            "seconds": round(direct.result.seconds, 3),
            "per_second": round(direct.result.rate(), 1),
            "latency_ms": direct.result.percentiles_ms(),
            "directus_requests_per_request": 2,
            **direct.cpu_report(),
            "errors": len(direct.result.errors),
        }
        errors = {
            "answers_not_202": len(answers.errors),
            "jobs_left_pending": states.get("pending", 0),
            **self.errors_in(mark),
            "baseline_calls_failed": baseline["errors"],
        }
        return {
            "n": n,
            "concurrency": self.concurrency,
            "rounds": REQUEST_ROUNDS,
            "seconds": round(answers.seconds, 3),
            "per_second": round(answers.rate(), 1),
            "latency_ms": answers.percentiles_ms(),
            "statuses": {str(k): v for k, v in sorted(answers.statuses.items())},
            "first_errors": answers.errors[:5],
            "background_seconds_after_last_answer": round(background, 3),
            "directus_requests": counted,
            **bridge.cpu_report(),
            "baseline": baseline,
            "ratio_to_baseline": round(answers.seconds / direct.result.seconds, 3)
            if direct.result.seconds
            else None,
            "errors": errors,
            "error_count": sum(errors.values()),
        }

    def refund_chain(self, n: int, burn_ms: float) -> dict[str, Any]:
        """Scenario 3b (a diagnostic, no target): a refund request's unavoidable chain without
        the bridge, driven by the load generator itself (the order read, RideNDine's create on
        the sandbox through `RideNDineClient`, the item create), against the direct work in
        alternating rounds; first as it is, then with `burn_ms` of CPU per refund burnt in two
        other processes while the chain waits, as the bridge's two web workers spend theirs.
        What the bridge's CPU alone costs the ratio on this machine (docs/performance.md)."""
        _prefix, order_ids = self.orders("chain", 2 * n)
        settings = self.stack.settings
        ridendine = RideNDineClient(settings.ridendine_api_url, settings.ridendine_api_key)
        runs: dict[str, Any] = {}
        spawn = multiprocessing.get_context("spawn")  # the load's threads are not forked
        with closing(ridendine), ProcessPoolExecutor(CHAIN_BURNERS, mp_context=spawn) as burners:
            for burner in [burners.submit(burn_cpu, 0.0) for _ in range(CHAIN_BURNERS)]:
                burner.result()  # started before anything is measured
            for index, burn in enumerate((0.0, burn_ms)):
                chain = _Chain(ridendine, burners if burn else None, burn / 1000, self.run_id)
                chained, direct = _Side(), _Side()
                part_ids = order_ids[index * n : (index + 1) * n]
                alternate_rounds(
                    part_ids,
                    partial(self._measure_direct, chained, chain=chain),
                    partial(self._measure_direct, direct),
                )
                runs[f"{burn:g}"] = {
                    "burn_ms_per_refund": burn,
                    "per_second": round(chained.result.rate(), 1),
                    "direct_per_second": round(direct.result.rate(), 1),
                    "ratio_to_baseline": round(chained.result.seconds / direct.result.seconds, 3)
                    if direct.result.seconds
                    else None,
                    "burnt_ms_per_refund": round(1000 * chain.burnt_seconds / len(part_ids), 2),
                    "ridendine_calls": chain.ridendine_calls,
                    "directus_busy": chained.cpu_report()["directus_busy"],
                    "direct_directus_busy": direct.cpu_report()["directus_busy"],
                    "errors": len(chained.result.errors) + len(direct.result.errors),
                    "first_errors": (chained.result.errors + direct.result.errors)[:5],
                }
        return {
            "n": n,
            "concurrency": self.concurrency,
            "rounds": REQUEST_ROUNDS,
            "runs": runs,
            "error_count": sum(run_["errors"] for run_ in runs.values()),
        }

    def _measure_direct(
        self, side: _Side, part: Sequence[str], chain: _Chain | None = None
    ) -> None:
        side.measure(self.stack, partial(self._direct_work, part, chain))

    def _direct_work(
        self, order_ids: Sequence[str], chain: _Chain | None = None
    ) -> load.LoadResult:
        """The unavoidable Directus work of a refund request done directly: read the order,
        create the refund's item; with `chain`, RideNDine's create between the two, and the
        chain's CPU burnt around them (scenario 3b)."""
        url = self.stack.directus.url

        def session() -> requests.Session:
            client = requests.Session()
            client.headers.update(
                {
                    "Authorization": f"Bearer {self.stack.directus.admin_token}",
                    "User-Agent": BASELINE_USER_AGENT,
                }
            )
            return client

        def request(client: requests.Session, order_id: str) -> int:
            if chain is not None:
                chain.burn(0)
            answer = client.get(
                f"{url}/items/orders",
                params={
                    "filter": json.dumps({"id": {"_eq": order_id}}),
                    "fields": "id,ridendine_order_id,payment_status,amount_paid_cents,currency,"
                    "customer",
                    "limit": "1",
                },
                timeout=30,
            )
            if answer.status_code != 200 or not answer.json()["data"]:
                return 599
            if chain is not None:
                chain.burn(1)
                chain.ask_ridendine(order_id)
            now = utcnow().isoformat().replace("+00:00", "Z")
            answer = client.post(
                f"{url}/items/refunds",
                json={
                    "id": f"rf_{uuid.uuid4().hex[:24]}",
                    "order_id": order_id,
                    "ridendine_order_id": f"rdn-{order_id}",
                    "amount_cents": AMOUNT_CENTS,
                    "currency": "EUR",
                    "reason": "chef_rejected",
                    "requested_by": "admin",
                    "status": "PENDING",
                    "source": "cooco",
                    "needs_review": False,
                    "created_at": now,
                    "updated_at": now,
                },
                timeout=30,
            )
            if chain is not None:
                chain.burn(2)
            return int(answer.status_code)

        return load.run(order_ids, request, concurrency=self.concurrency, make_client=session)

    def backlog(self, n: int, raw_n: int, label: str = "backlog") -> dict[str, Any]:
        """Scenario 4: Directus stopped, N webhooks accepted, Directus started: the drain."""
        batch = self.pending_refunds(label, n)
        directus = self.stack.directus
        mark = self.mark()
        directus.stop()
        try:
            started = time.perf_counter()
            answers = self.send_webhooks(batch)
            accepted_seconds = time.perf_counter() - started
        finally:
            directus.start(timeout=120)
        up = time.perf_counter()
        orders_seconds, updated = self.wait_orders(batch, up, self.wait_timeout(n))
        drain_seconds, states = self.wait_outbox_idle(up, self.wait_timeout(n))
        counted = self.directus_requests(mark, n)
        mails = self.wait_mails(mark["mails"] + MAILS_PER_RESULT * n, 60.0) - mark["mails"]
        raw = self.raw_rate(raw_n)
        drain_rate = n / drain_seconds if drain_seconds else 0.0
        errors = {
            "answers_not_200": len(answers.errors),
            "orders_not_updated": n - updated,
            "jobs_left_pending": states.get("pending", 0),
            **self.errors_in(mark),
            "mails_missing": max(0, MAILS_PER_RESULT * n - mails),
            "raw_calls_failed": raw["errors"],
        }
        self.stack.check_running()
        return {
            "n": n,
            "accepted": {
                "seconds": round(accepted_seconds, 3),
                "per_second": round(answers.rate(), 1),
                "latency_ms": answers.percentiles_ms(),
                "statuses": {str(k): v for k, v in sorted(answers.statuses.items())},
            },
            "orders_updated_seconds": round(orders_seconds, 3),
            "drain_seconds": round(drain_seconds, 3),
            "drain_events_per_second": round(drain_rate, 1),
            "directus_requests": counted,
            "raw": raw,
            "drain_to_raw_ratio": round(drain_rate / raw["events_per_second"], 3)
            if raw["events_per_second"]
            else None,
            "mails": mails,
            "errors": errors,
            "error_count": sum(errors.values()),
        }

    def raw_rate(self, n: int, label: str = "raw") -> dict[str, Any]:
        """Directus's own limit for the same work, written straight in the cheapest way it
        allows: the orders' fields and the refund items by batch PATCH (RAW_BATCH items per
        request, one request at a time: Directus on SQLite writes one at a time anyway, and 16
        batches at once only made them wait past any timeout), then one Flow call per result
        at the configured concurrency."""
        batch = self.pending_refunds(label, n, ledger=False)
        url = self.stack.directus.url
        trigger = f"{url}/flows/trigger/{self.stack.flow_id}"
        settings = self.stack.settings

        def session() -> requests.Session:
            client = requests.Session()
            client.headers.update(
                {
                    "Authorization": f"Bearer {self.stack.directus.admin_token}",
                    "User-Agent": BASELINE_USER_AGENT,
                }
            )
            return client

        def write(client: requests.Session, part: Sequence[Event]) -> int:
            orders = client.patch(
                f"{url}/items/orders",
                params={"fields": "id"},
                json=[
                    {"id": e.order_id, "payment_status": "REFUNDED", "status": "CANCELLED"}
                    for e in part
                ],
                timeout=300,
            )
            refunds = client.patch(
                f"{url}/items/refunds",
                params={"fields": "id"},
                json=[
                    {"id": e.refund_id, "status": "REFUNDED", "refunded_amount_cents": AMOUNT_CENTS}
                    for e in part
                ],
                timeout=300,
            )
            return max(orders.status_code, refunds.status_code)

        def notify(client: requests.Session, event: Event) -> int:
            answer = client.post(
                trigger,
                json={
                    "secret": settings.flow_secret,
                    "kind": "refund_result",
                    "refund": {"id": event.refund_id, "order_id": event.order_id},
                    "order": {"id": event.order_id},
                    "amount_display": "50.00 EUR",
                    "recipients": {
                        "customer": self.stack.customer["email"],
                        "chef": self.stack.chef["email"],
                        "admins": list(settings.admin_emails),
                    },
                },
                timeout=30,
            )
            return int(answer.status_code)

        parts = list(chunks(batch.events, RAW_BATCH))
        writes = load.run(parts, write, concurrency=1, make_client=session)
        flows = load.run(batch.events, notify, concurrency=self.concurrency, make_client=session)
        seconds = writes.seconds + flows.seconds
        return {
            "n": n,
            "seconds": round(seconds, 3),
            "batch_writes_seconds": round(writes.seconds, 3),
            "flow_calls_seconds": round(flows.seconds, 3),
            "events_per_second": round(n / seconds, 1) if seconds else 0.0,
            "directus_requests_per_event": round((2 * len(parts) + n) / n, 3),
            "errors": len(writes.errors) + len(flows.errors),
        }

    def growth(
        self, sizes: Sequence[int], on_step: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Scenario 5: scenario 1 at each size; time per event must stay flat. `on_step` gets
        the runs so far after each size (a run cut short keeps them)."""
        runs = []
        for n in sizes:
            runs.append(self.webhook_ingest(n, label=f"growth{n}"))
            if on_step is not None:
                on_step({"runs": list(runs), "complete": False})
        per_event = [run["seconds_per_event_ms"] for run in runs]
        smallest, largest = runs[0], runs[-1]
        return {
            "runs": runs,
            "seconds_per_event_ms": dict(zip([str(n) for n in sizes], per_event, strict=True)),
            "largest_to_smallest": round(
                largest["seconds_per_event_ms"] / smallest["seconds_per_event_ms"], 3
            )
            if smallest["seconds_per_event_ms"]
            else None,
            "memory": self.stack.memory(),
            "error_count": sum(run["error_count"] for run in runs),
        }
