"""`/metrics`: counts after a scripted run, the store's gauges, the token, outbound calls, and
correct totals under several gunicorn workers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from bridge import create_app
from bridge.jobs import outbox
from bridge.metrics import StoreCollector, instrument_session
from bridge.services import Services, get_services
from bridge.store.db import Store
from bridge.store.models import OutboxJob, OutboxState, Refund, utcnow
from devstack.directus import DirectusServer
from devstack.net import free_port, wait_until
from devstack.sandbox import SandboxProcess
from directus_client import DirectusClient
from tests.support.helpers import SERVICE_TOKEN, make_order, make_settings, settings_env
from tests.support.webhook_helpers import (
    WEBHOOK_URL,
    event_body,
    sign,
    sync_result_flow,
    wait_for_jobs_done,
)

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
WEBHOOK_ROUTE = "/ridendine/webhooks/refund-status"


def parse(text: str) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def scrape(client: FlaskClient, **headers: str) -> Samples:
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.content_type.startswith("text/plain; version=")
    return parse(answer.get_data(as_text=True))


class Delta:
    """Counter increases between two scrapes (counters are per process, tests share it)."""

    def __init__(self, before: Samples, after: Samples) -> None:
        self.before, self.after = before, after

    def __call__(self, name: str, **labels: str) -> float:
        return value(self.after, name, **labels) - value(self.before, name, **labels)


# -- the scripted run -----------------------------------------------------------------------


@pytest.fixture
def bridge(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    ridendine_sandbox: SandboxProcess,
    database_url: str,
) -> Iterator[Flask]:
    settings = make_settings(
        cooco_directus.url, cooco_directus.admin_token, ridendine_api_url=ridendine_sandbox.url
    )
    app = create_app(
        {
            "BRIDGE_SETTINGS": settings,
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    sync_result_flow(directus_admin)
    yield app
    with app.app_context():
        get_services().close()


def test_metrics_after_a_scripted_run(bridge: Flask, directus_admin: DirectusClient) -> None:
    client = bridge.test_client()
    services: Services = bridge.extensions["bridge.services"]
    before = scrape(client)

    # A refund request, forwarded to RideNDine (the sandbox) at once.
    order = make_order(directus_admin, amount_paid_cents=4200)
    answer = client.post(
        "/ridendine/refunds",
        json={"order_id": order["id"], "reason": "chef_rejected", "requested_by": "admin"},
        headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
    )
    assert answer.status_code == 202, answer.get_json()
    refund_id = answer.get_json()["refund"]["id"]
    with services.store.session() as session:
        ridendine_refund_id = session.get(Refund, refund_id).ridendine_refund_id  # type: ignore[union-attr]
    assert ridendine_refund_id

    # Its result, twice (the second is a duplicate), and four webhooks that are refused.
    body = event_body(ridendine_refund_id, order["id"], 4200, "REFUNDED")
    headers = sign(body)
    assert client.post(WEBHOOK_URL, data=body, headers=headers).get_json()["status"] == "accepted"
    assert client.post(WEBHOOK_URL, data=body, headers=headers).get_json()["status"] == "duplicate"
    bad_signature = {**sign(body), "webhook-signature": "v1,AAAA"}
    assert client.post(WEBHOOK_URL, data=body, headers=bad_signature).status_code == 401
    text_headers = {**sign(body), "Content-Type": "text/plain"}
    assert client.post(WEBHOOK_URL, data=body, headers=text_headers).status_code == 415
    not_an_event = b'{"refund_id": "x"}'
    assert client.post(WEBHOOK_URL, data=not_an_event, headers=sign(not_an_event)).status_code == (
        400
    )
    huge = b'{"pad": "' + b"x" * (70 * 1024) + b'"}'
    assert client.post(WEBHOOK_URL, data=huge, headers=sign(huge)).status_code == 413
    # An unknown URL with an id in it: counted under "unmatched", the path never shown.
    assert client.get("/no/such/ord-secret-path").status_code == 404

    # The outbox: the order update, the projection, the notification.
    wait_for_jobs_done(services)
    after = scrape(client)
    delta = Delta(before, after)

    http = "refund_bridge_http_requests_total"
    assert delta(http, route="/ridendine/refunds", method="POST", status="202") == 1
    assert delta(http, route=WEBHOOK_ROUTE, method="POST", status="200") == 2
    for status in ("401", "415", "400", "413"):
        assert delta(http, route=WEBHOOK_ROUTE, method="POST", status=status) == 1, status
    assert delta(http, route="unmatched", method="GET", status="404") == 1
    assert "ord-secret-path" not in client.get("/metrics").get_data(as_text=True)
    assert (
        delta(
            "refund_bridge_http_request_duration_seconds_count",
            route="/ridendine/refunds",
            method="POST",
        )
        == 1
    )

    webhooks = "refund_bridge_webhook_events_total"
    assert delta(webhooks, outcome="accepted", reason="") == 1
    assert delta(webhooks, outcome="duplicate", reason="") == 1
    for reason in ("signature", "media_type", "validation", "too_large"):
        assert delta(webhooks, outcome="rejected", reason=reason) == 1, reason

    assert delta("refund_bridge_refunds_created_total", source="cooco", reason="chef_rejected") == 1
    assert (
        delta("refund_bridge_refunds_resolved_total", status="REFUNDED", reason="chef_rejected")
        == 1
    )

    # Every job ran once and is done: the counters agree with the store.
    with services.store.session() as session:
        done = list(session.scalars(select(OutboxJob).where(OutboxJob.state == OutboxState.DONE)))
    assert {job.kind for job in done} >= {"submit_refund", "notify_result"}
    for kind in {job.kind for job in done}:
        ran = sum(job.attempts for job in done if job.kind == kind)
        assert delta("refund_bridge_outbox_job_runs_total", kind=kind, state="done") == ran, kind

    outbound = "refund_bridge_outbound_requests_total"
    assert delta(outbound, target="ridendine", method="POST", outcome="2xx") == 1
    assert delta(outbound, target="directus", method="GET", outcome="2xx") >= 1
    assert delta(outbound, target="directus", method="PATCH", outcome="2xx") >= 1
    assert (
        delta(
            "refund_bridge_outbound_request_duration_seconds_count",
            target="ridendine",
            method="POST",
        )
        == 1
    )

    # The store's gauges (this test's own store).
    assert value(after, "refund_bridge_store_up") == 1
    assert value(after, "refund_bridge_refunds", status="REFUNDED", reason="chef_rejected") == 1
    assert value(after, "refund_bridge_refund_oldest_pending_age_seconds") == 0
    assert value(after, "refund_bridge_outbox_oldest_due_age_seconds") == 0
    assert not [k for k in after if k[0] == "refund_bridge_outbox_jobs"]
    assert value(after, "refund_bridge_inbox_events", state="unmatched") == 0


# -- the store's gauges ---------------------------------------------------------------------


def test_outbox_depth_and_age_of_the_oldest_due_job(app: Flask, client: FlaskClient) -> None:
    services: Services = app.extensions["bridge.services"]
    with services.store.session() as session:
        outbox.enqueue(session, "project_refund", "a", run_at=utcnow() - timedelta(seconds=300))
        outbox.enqueue(session, "project_refund", "b", run_at=utcnow() + timedelta(hours=1))
        outbox.enqueue(session, "notify_result", "c")
        dead = outbox.enqueue(session, "notify_result", "d")
        session.execute(
            OutboxJob.__table__.update().where(OutboxJob.id == dead).values(state=OutboxState.DEAD)
        )
    samples = scrape(client)
    jobs = "refund_bridge_outbox_jobs"
    assert value(samples, jobs, kind="project_refund", state="pending") == 2
    assert value(samples, jobs, kind="notify_result", state="pending") == 1
    assert value(samples, jobs, kind="notify_result", state="dead") == 1
    assert 300 <= value(samples, "refund_bridge_outbox_oldest_due_age_seconds") < 360


def test_refunds_and_inbox_gauges(app: Flask, client: FlaskClient) -> None:
    services: Services = app.extensions["bridge.services"]
    with services.store.session() as session:
        for status, reason, review in (
            ("PENDING", "chef_rejected", False),
            ("PENDING", "chef_rejected", True),
            ("FAILED", "customer_cancel", True),
        ):
            session.add(
                Refund(
                    order_id="o-1",
                    amount_cents=100,
                    currency="EUR",
                    reason=reason,
                    requested_by="admin",
                    status=status,
                    needs_review=review,
                    created_at=utcnow() - timedelta(seconds=600),
                )
            )
    samples = scrape(client)
    assert value(samples, "refund_bridge_refunds", status="PENDING", reason="chef_rejected") == 2
    assert value(samples, "refund_bridge_refunds", status="FAILED", reason="customer_cancel") == 1
    assert value(samples, "refund_bridge_refunds_needing_review") == 2
    assert 600 <= value(samples, "refund_bridge_refund_oldest_pending_age_seconds") < 660
    for state in ("received", "unmatched", "failed"):
        assert value(samples, "refund_bridge_inbox_events", state=state) == 0


def test_a_store_that_does_not_answer_is_store_up_0(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'missing' / 'dir' / 'x.sqlite3'}")
    families = list(StoreCollector(store).collect())
    assert [(f.name, f.samples[0].value) for f in families] == [("refund_bridge_store_up", 0)]


# -- who may read /metrics ------------------------------------------------------------------


def test_metrics_token_when_configured(database_url: str) -> None:
    token = "metrics-token-0123456789"
    app = create_app(
        {
            "BRIDGE_SETTINGS": make_settings(
                "http://127.0.0.1:9", "directus-token-unused", metrics_token=token
            ),
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
        answer = client.get("/metrics", headers=headers)
        assert answer.status_code == 401
        assert answer.content_type == "application/problem+json"
        assert token not in answer.get_data(as_text=True)
    assert scrape(client, Authorization=f"Bearer {token}")


def test_metrics_is_open_without_a_token(client: FlaskClient) -> None:
    assert value(scrape(client), "refund_bridge_store_up") == 1


# -- calls to the outside -------------------------------------------------------------------


def test_outbound_calls_are_timed_and_counted_by_outcome(client: FlaskClient) -> None:
    session = instrument_session(requests.Session(), "directus")
    assert instrument_session(session, "directus") is session  # idempotent
    before = scrape(client)
    with pytest.raises(requests.ConnectionError):
        session.get(f"http://127.0.0.1:{free_port()}/server/ping", timeout=2)
    after = scrape(client)
    delta = Delta(before, after)
    outbound = "refund_bridge_outbound_requests_total"
    assert delta(outbound, target="directus", method="GET", outcome="connection_error") == 1
    assert (
        delta(
            "refund_bridge_outbound_request_duration_seconds_count", target="directus", method="GET"
        )
        == 1
    )


# -- several gunicorn workers ---------------------------------------------------------------


@pytest.mark.slow
def test_counts_are_right_across_gunicorn_workers(
    tmp_path: Path, settings: Any, database_url: str
) -> None:
    port = free_port()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "TMPDIR": str(scratch),  # where `serve` makes its metrics directory
        **settings_env(settings, database_url),
    }
    server = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from bridge.cli import run; run()",
            "serve",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "2",
        ],
        cwd=Path(__file__).resolve().parent.parent,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _answers(f"{base}/healthz"), timeout=60, what="refund-bridge serve")
        metrics_dir = next(scratch.iterdir())
        requests_sent = 40

        def hit(_: int) -> int:
            # A new connection each time, so that both workers take requests.
            return requests.get(
                f"{base}/healthz", headers={"Connection": "close"}, timeout=10
            ).status_code

        def healthz_count() -> float:
            text = requests.get(f"{base}/metrics", headers={"Connection": "close"}, timeout=10).text
            return value(
                parse(text),
                "refund_bridge_http_requests_total",
                route="/healthz",
                method="GET",
                status="200",
            )

        # The wait above may have been answered more than once (a client timeout under load).
        baseline = healthz_count()
        assert baseline >= 1
        # Which worker accepts a connection is the kernel's choice: on a busy machine one may
        # take a whole batch. Send batches (bounded) until both have answered some.
        sent = 0
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in range(10):
                assert set(pool.map(hit, range(requests_sent))) == {200}
                sent += requests_sent
                if len(list(metrics_dir.glob("counter_*.db"))) == 2:
                    break
        assert len(list(metrics_dir.glob("counter_*.db"))) == 2  # one file per worker
        served = baseline + sent
        totals = {healthz_count() for _ in range(8)}
        # Whichever worker answers the scrape, it sees every worker's requests.
        assert totals == {served}
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            _, stderr = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            _, stderr = server.communicate()
    assert server.returncode == 0, stderr.decode()[-2000:]
    assert list(scratch.iterdir()) == []  # the metrics directory is gone with the server
    # Everything serve printed, gunicorn's own lines included, is one JSON object per line.
    lines = stderr.decode().splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]
    assert any(e["logger"] == "gunicorn.error" for e in entries)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=1).status_code == 200
    except requests.RequestException:
        return False


def test_no_traceback_or_500_for_odd_scrapes(client: FlaskClient) -> None:
    assert client.post("/metrics").status_code == 405
    answer = client.get("/metrics?x=%00", headers={"Authorization": "Bearer \x00"})
    assert answer.status_code == 200
    assert answer.content_type.startswith("text/plain")


def test_worker_exporter_serves_the_workers_metrics(app: Flask, settings: Any) -> None:
    from dataclasses import replace

    from bridge.metrics import start_worker_exporter

    services: Services = app.extensions["bridge.services"]
    assert start_worker_exporter(settings, services.store) is None  # off by default
    port = free_port()
    server = start_worker_exporter(replace(settings, worker_metrics_port=port), services.store)
    assert server is not None
    try:
        answer = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5)
        samples = parse(answer.text)
        assert value(samples, "refund_bridge_store_up") == 1
        assert "# TYPE refund_bridge_outbox_job_runs_total counter" in answer.text
        # A port that is taken is logged; the worker carries on without metrics.
        taken = replace(settings, worker_metrics_port=port)
        assert start_worker_exporter(taken, services.store) is None
    finally:
        server.shutdown()
        server.server_close()


def test_reconciliation_mismatches_are_counted_by_kind(
    cooco_directus: DirectusServer, directus_settings: Any, database_url: str
) -> None:
    from collections import Counter

    from bridge.ops import reconcile

    app = create_app(
        {
            "BRIDGE_SETTINGS": directus_settings,
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    client = app.test_client()
    services: Services = app.extensions["bridge.services"]
    with services.store.session() as session:
        # In the ledger, never projected, for an order Directus does not have.
        session.add(
            Refund(
                order_id=f"ord-missing-{free_port()}",
                amount_cents=100,
                currency="EUR",
                reason="chef_rejected",
                requested_by="admin",
            )
        )
    before = scrape(client)
    report = reconcile.compare(services)
    delta = Delta(before, scrape(client))
    kinds = Counter(m.kind for m in report.mismatches)
    assert kinds["refund_item_missing"] == 1
    for kind, count in kinds.items():
        assert delta("refund_bridge_reconciliation_mismatches_total", kind=kind) == count
    services.close()


def test_observability_settings_are_checked() -> None:
    from bridge.config import ConfigError, load_settings

    env = settings_env(make_settings("http://127.0.0.1:9", "directus-token-unused"))
    loaded = load_settings(
        {
            **env,
            "BRIDGE_METRICS_TOKEN": " metrics-token-0123456789 ",
            "BRIDGE_WORKER_METRICS_PORT": "9464",
            "BRIDGE_REPORT_ORDER_DATE_FIELD": "paid_at",
        }
    )
    assert (loaded.metrics_token, loaded.worker_metrics_port) == ("metrics-token-0123456789", 9464)
    assert (loaded.worker_metrics_addr, loaded.report_order_date_field) == ("127.0.0.1", "paid_at")
    defaults = load_settings(env)
    assert (defaults.metrics_token, defaults.worker_metrics_port) == (None, 0)
    assert defaults.report_order_date_field == "date_created"
    for bad in ("70000", "-1", "port"):
        with pytest.raises(ConfigError) as raised:
            load_settings({**env, "BRIDGE_WORKER_METRICS_PORT": bad})
        assert raised.value.variable == "BRIDGE_WORKER_METRICS_PORT"


def test_refunds_are_counted_only_when_their_transaction_commits(
    app: Flask, client: FlaskClient
) -> None:
    from bridge.ledger import ledger

    services: Services = app.extensions["bridge.services"]

    def new_refund(reason: str) -> Refund:
        return Refund(
            order_id="o-commit",
            amount_cents=100,
            currency="EUR",
            reason=reason,
            requested_by="a",
            status="PENDING",
        )

    before = scrape(client)
    with pytest.raises(RuntimeError), services.store.session() as session:
        refund = new_refund("goodwill")
        session.add(refund)
        ledger.record_created(refund)
        raise RuntimeError("rolled back")
    with services.store.session() as session:
        refund = new_refund("goodwill")
        session.add(refund)
        ledger.record_created(refund)
        ledger.transition(refund, "REFUNDED", source="test")
    delta = Delta(before, scrape(client))
    assert delta("refund_bridge_refunds_created_total", source="cooco", reason="goodwill") == 1
    assert delta("refund_bridge_refunds_resolved_total", status="REFUNDED", reason="goodwill") == 1
