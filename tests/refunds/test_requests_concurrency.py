"""Concurrent refund requests on one order, against the app under gunicorn with several worker
processes (contract section 1: the refunds of an order never exceed what was paid, also under
concurrent requests). RideNDine is a tiny stand-in HTTP server in this process (the app runs in
others, where `responses` cannot reach); Directus is the real one."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import select

from bridge.errors import AmountExceedsRefundable
from bridge.ledger import ledger
from bridge.refunds.intake import request_refund
from bridge.services import Services, make_directus
from bridge.store.db import Store, upgrade
from bridge.store.models import Refund
from bridge.web.auth import Caller
from devstack.directus import DirectusServer
from devstack.net import free_port
from directus_client import DirectusClient
from tests.support.helpers import SERVICE_TOKEN, make_order, make_settings, settings_env

REPO = Path(__file__).resolve().parents[2]
REQUESTS = 20
WORKERS = 3


class RideNDineStandIn:
    """Answers POST /refunds/create with 200 and a refund id; remembers what it was sent."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with stand_in._lock:
                    stand_in.received.append((self.headers["Idempotency-Key"], body))
                    number = len(stand_in.received)
                time.sleep(0.05)  # a partner that takes a moment widens any race
                answer = json.dumps({"refund_id": f"re_{number}"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> RideNDineStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_gunicorn(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "wsgi:app",
                "--workers",
                str(WORKERS),
                "--worker-class",
                "gthread",
                "--threads",
                "8",
                "--bind",
                f"127.0.0.1:{port}",
                "--timeout",
                "60",
            ],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{log_path.read_text()[-3000:]}")
        try:
            if requests.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except requests.RequestException:
            pass
        time.sleep(0.2)
    stop(process)
    raise RuntimeError(f"gunicorn did not start:\n{log_path.read_text()[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "postgres":
        url: str = request.getfixturevalue("postgres_url")
    else:
        url = f"sqlite:///{tmp_path / 'bridge.sqlite3'}"
    store = Store(url)
    upgrade(store.engine)
    store.dispose()
    yield url


@pytest.mark.slow
def test_twenty_concurrent_ten_percent_refunds_accept_exactly_ten(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    store_url: str,
    tmp_path: Path,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=10_000)
    with RideNDineStandIn() as ridendine:
        settings = make_settings(
            cooco_directus.url, cooco_directus.admin_token, ridendine_api_url=ridendine.url
        )
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "BRIDGE_LOG_LEVEL": "WARNING",
            **settings_env(settings, store_url),
        }
        process, url = start_gunicorn(env, tmp_path / "gunicorn.log")
        try:
            answers = fire_concurrently(url, order["id"])
        finally:
            stop(process)

        accepted = [body for status, body in answers if status == 202]
        refused = [body for status, body in answers if status == 409]
        assert len(accepted) == 10, answers
        assert len(refused) == 10, answers
        assert {body["code"] for body in refused} == {"amount_exceeds_refundable"}
        assert all(body["refundable_cents"] < 1_000 for body in refused)
        accepted_ids = {body["refund"]["id"] for body in accepted}
        assert all(body["refund"]["amount_cents"] == 1_000 for body in accepted)
        assert all(body["refund"]["ridendine_refund_id"] for body in accepted)
        # RideNDine got exactly the accepted refunds, each once, keyed by the refund's id.
        assert sorted(key for key, _ in ridendine.received) == sorted(accepted_ids)
        assert sum(body["amount_cents"] for _, body in ridendine.received) == 10_000

    store = Store(store_url)
    try:
        with store.session() as session:
            refunds = session.scalars(select(Refund).where(Refund.order_id == order["id"])).all()
            assert {refund.id for refund in refunds} == accepted_ids
            assert sum(refund.amount_cents for refund in refunds) == 10_000
            # Each acceptance recorded once, on its own refund (written without reading the
            # refund back when it is unchanged: docs/refunds.md), on both stores.
            assert sorted(refund.ridendine_refund_id or "" for refund in refunds) == sorted(
                f"re_{number}" for number in range(1, 11)
            )
            assert {len(refund.history) for refund in refunds} == {2}
    finally:
        store.dispose()


def fire_concurrently(url: str, order_id: str) -> list[tuple[int, dict[str, Any]]]:
    barrier = threading.Barrier(REQUESTS)
    answers: list[tuple[int, dict[str, Any]]] = []
    lock = threading.Lock()

    def one() -> None:
        barrier.wait(timeout=30)
        response = requests.post(
            f"{url}/ridendine/refunds",
            json={
                "order_id": order_id,
                "percent": 10,
                "reason": "chef_rejected",
                "requested_by": "admin",
            },
            headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
            timeout=60,
        )
        with lock:
            answers.append((response.status_code, response.json()))

    threads = [threading.Thread(target=one) for _ in range(REQUESTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=90)
    assert len(answers) == REQUESTS
    return answers


def test_the_order_lock_holds_while_the_amount_is_checked(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    store_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Two requests whose amounts fit alone but not together, each with its own database
    connection, the amount check slowed down so that they overlap: one is refused."""
    order = make_order(directus_admin, amount_paid_cents=10_000)
    settings = make_settings(
        cooco_directus.url,
        cooco_directus.admin_token,
        ridendine_api_url=f"http://127.0.0.1:{free_port()}",  # nobody there: retried later
    )
    services = Services(settings=settings, store=Store(store_url), directus=make_directus(settings))
    real_refundable = ledger.refundable_cents

    def slow_refundable(session: Any, order_id: str, paid_cents: int) -> int:
        refundable = real_refundable(session, order_id, paid_cents)
        time.sleep(0.5)  # the other request runs meanwhile, unless the lock holds it back
        return refundable

    monkeypatch.setattr(ledger, "refundable_cents", slow_refundable)
    outcomes: list[str] = []

    def one() -> None:
        body = {"order_id": order["id"], "amount_cents": 6_000, "reason": "chef_rejected"}
        body["requested_by"] = "admin"
        try:
            answer = request_refund(services, Caller(kind="service", scope="s"), body, None)
            outcomes.append(str(answer.status))
        except AmountExceedsRefundable:
            outcomes.append("409")

    threads = [threading.Thread(target=one) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert sorted(outcomes) == ["202", "409"]
        with services.store.session() as session:
            assert ledger.committed_cents(session, order["id"]) == 6_000
    finally:
        services.close()
