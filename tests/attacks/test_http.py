"""Attacks at the HTTP level: huge and deeply nested JSON, slow clients against the real
`refund-bridge serve` (gunicorn), and `X-Forwarded-*` trusted only behind a configured proxy."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import requests
from flask import Flask, jsonify, request
from flask.testing import FlaskClient

from bridge import create_app
from bridge.config import Settings
from bridge.services import get_services
from bridge.web.gunicorn_worker import REQUEST_READ_SECONDS
from devstack.directus import REPO
from devstack.net import free_port, wait_until
from tests.support import reliability
from tests.support.helpers import SERVICE_TOKEN, make_settings, settings_env
from tests.support.webhook_helpers import WEBHOOK_URL, event_body, inbox_count, sign

LIMIT = 64 * 1024
REFUNDS = "/ridendine/refunds"
SERVICE = {"Authorization": f"Bearer {SERVICE_TOKEN}"}


def assert_problem(answer: requests.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert answer.json()["code"] == code


# -- huge and deeply nested JSON (in the app) ------------------------------------------------------


def nested(depth: int) -> bytes:
    return b'{"order_id": ' + b"[" * depth + b"]" * depth + b', "reason": "chef_rejected"}'


@pytest.mark.parametrize(
    "payload",
    [
        nested(100),
        nested(20_000),
        b"[" * 60_000,
        b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
        b'{"order_id": "o", "reason": "chef_rejected", "amount_cents": 1' + b"0" * 5000 + b"}",
        b'{"order_id": "o", "reason": "chef_rejected", "amount_cents": 1e400}',
        b'{"order_id": "o", "reason": "chef_rejected", "amount_cents": NaN}',
        b'{"order_id": "\\ud800", "reason": "chef_rejected"}',
        b'{"order_id": "o", "order_id": "p", "reason": "chef_rejected"}',
        json.dumps({f"k{n}": 0 for n in range(4000)}).encode(),
        b"\xff\xfe{}",
    ],
    ids=[
        "nested 100",
        "nested 20000",
        "unclosed arrays",
        "nested objects",
        "huge integer",
        "1e400",
        "NaN",
        "lone surrogate",
        "duplicate keys",
        "4000 keys",
        "not utf-8",
    ],
)
def test_hostile_json_is_a_clean_4xx(client: FlaskClient, payload: bytes) -> None:
    assert len(payload) <= LIMIT
    answer = client.post(
        REFUNDS, data=payload, headers={**SERVICE, "Content-Type": "application/json"}
    )
    # 400 for what is no refund request; a body that parses to one meets the (absent)
    # Directus: 503. Never a 500.
    assert answer.status_code in (400, 503), answer.get_data(as_text=True)
    assert answer.mimetype == "application/problem+json"

    try:
        headers = sign(payload)
    except UnicodeDecodeError:  # not UTF-8 cannot be signed: a stranger's signature then
        headers = sign(b"{}")
    signed = client.post(WEBHOOK_URL, data=payload, headers=headers)
    assert signed.status_code in (400, 401), signed.get_data(as_text=True)
    assert signed.mimetype == "application/problem+json"


def test_deeply_nested_extra_fields_in_a_signed_webhook(client: FlaskClient, app: Flask) -> None:
    base = json.loads(event_body("re_deep", "ord-deep", 100))
    inner = "[" * 5000 + "]" * 5000
    raw = json.dumps(base)[:-1].encode() + b', "amount_details": ' + inner.encode() + b"}"
    answer = client.post(WEBHOOK_URL, data=raw, headers=sign(raw))
    # Recorded (unknown fields are kept) or refused as unstorable: never a 500.
    assert answer.status_code in (200, 400), answer.get_data(as_text=True)


@pytest.mark.parametrize("path", [REFUNDS, WEBHOOK_URL])
def test_bodies_over_64_kib_are_refused_before_anything(
    client: FlaskClient, app: Flask, path: str
) -> None:
    payload = b'{"pad": "' + b"x" * LIMIT + b'"}'
    headers = sign(payload) if path == WEBHOOK_URL else SERVICE
    answer = client.post(
        path, data=payload, headers={**headers, "Content-Type": "application/json"}
    )
    assert answer.status_code == 413
    assert answer.get_json()["code"] == "payload_too_large"
    with app.app_context():
        assert inbox_count(get_services()) == 0


# -- the real server -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`refund-bridge serve` as deployed (2 gunicorn workers of 4 threads)."""
    folder: Path = tmp_path_factory.mktemp("attacks-http")
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        **settings_env(
            make_settings("http://127.0.0.1:9", "directus-token-unused"),
            f"sqlite:///{folder / 'bridge.sqlite3'}",
        ),
    }
    log = open(folder / "serve.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "bridge.cli", "serve", "--bind", f"127.0.0.1:{port}"],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, (folder / "serve.log").read_text()[-2000:]
        try:
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    try:
        wait_until(up, timeout=60, interval=0.1, what="refund-bridge serve")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        log.close()


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _exchange(url: str, raw: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes, read until the server closes or stops sending."""
    with socket.create_connection(("127.0.0.1", _port(url)), timeout=timeout) as sock:
        sock.sendall(raw)
        received = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            received += chunk
            if (
                received.count(b"HTTP/1.1 ") >= raw.count(b" HTTP/1.1\r\n")
                and b"\r\n\r\n" in received
            ):
                last = received.rsplit(b"HTTP/1.1 ", 1)[1]
                head, _, body = last.partition(b"\r\n\r\n")
                length = [
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if length and len(body) >= length[0]:
                    break
        return received


@pytest.mark.slow
@pytest.mark.parametrize("style", ["headers", "body"])
def test_slow_clients_do_not_stop_the_bridge(server: str, style: str) -> None:
    """60 clients trickling a byte a second (slowloris), against 8 threads: the bridge still
    answers at once, and drops the tricklers once their request takes too long."""
    stop = threading.Event()
    dropped: list[float] = []
    started = time.monotonic()

    def trickle() -> None:
        sock = socket.create_connection(("127.0.0.1", _port(server)), timeout=30)
        try:
            if style == "headers":
                sock.sendall(b"POST " + WEBHOOK_URL.encode() + b" HTTP/1.1\r\nHost: x\r\n")
            else:
                sock.sendall(
                    b"POST " + WEBHOOK_URL.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                    b"Content-Type: application/json\r\nContent-Length: 60000\r\n\r\n"
                )
            while not stop.is_set():
                sock.sendall(b"X-a: b\r\n" if style == "headers" else b" ")
                stop.wait(1.0)
        except OSError:
            dropped.append(time.monotonic() - started)
        finally:
            sock.close()

    threads = [threading.Thread(target=trickle, daemon=True) for _ in range(60)]
    for thread in threads:
        thread.start()
    latencies = []
    try:
        time.sleep(1.0)
        deadline = time.monotonic() + REQUEST_READ_SECONDS + 3
        while time.monotonic() < deadline:
            began = time.monotonic()
            answer = requests.get(f"{server}/healthz", timeout=5)
            latencies.append(time.monotonic() - began)
            assert answer.status_code == 200
            body = event_body("re_slow", "ord-slow", 100)
            signed = requests.post(
                f"{server}{WEBHOOK_URL}", data=body, headers=sign(body), timeout=5
            )
            assert signed.status_code == 200, signed.text
            time.sleep(0.25)
    finally:
        stop.set()
        for thread in threads:
            thread.join(5)
    assert max(latencies) < 2.0, latencies  # without the fix: no answer at all (5 s timeout)
    # The tricklers were cut off after the read limit, not served forever.
    assert len(dropped) >= 50, dropped
    assert min(dropped) >= REQUEST_READ_SECONDS - 1
    reliability.record(
        "test_attacks_http.slow_clients",
        style=style,
        slow_clients=len(threads),
        requests_during=len(latencies),
        max_latency_s=round(max(latencies), 3),
        dropped=len(dropped),
    )


def test_whole_requests_still_pass_every_way(server: str) -> None:
    """The buffering in front of the threads keeps HTTP/1.1 as clients use it."""
    body = event_body("re_http", "ord-http", 100)
    headers = sign(body)
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    request_bytes = (
        f"POST {WEBHOOK_URL} HTTP/1.1\r\nHost: x\r\n{lines}Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body

    # One request in tiny pieces (a slow but honest client).
    with socket.create_connection(("127.0.0.1", _port(server)), timeout=10) as sock:
        for start in range(0, len(request_bytes), 7):
            sock.sendall(request_bytes[start : start + 7])
            time.sleep(0.002)
        answer = sock.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200"), answer

    # Two requests pipelined on one kept-alive connection.
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = _exchange(server, healthz + healthz)
    assert answer.count(b"HTTP/1.1 200") == 2, answer

    # Expect: 100-continue.
    continued = request_bytes.replace(b"Host: x\r\n", b"Host: x\r\nExpect: 100-continue\r\n")
    answer = _exchange(server, continued)
    assert b"HTTP/1.1 100 Continue" in answer and b"HTTP/1.1 200" in answer, answer

    # A chunked body.
    chunked = (
        (
            f"POST {WEBHOOK_URL} HTTP/1.1\r\nHost: x\r\n{lines}Transfer-Encoding: chunked\r\n\r\n"
        ).encode()
        + f"{len(body):x}\r\n".encode()
        + body
        + b"\r\n0\r\n\r\n"
    )
    answer = _exchange(server, chunked)
    assert b"HTTP/1.1 200" in answer, answer

    # Keep-alive with requests.Session (pooled connection, several requests).
    with requests.Session() as session:
        for _ in range(5):
            assert session.get(f"{server}/healthz", timeout=5).status_code == 200


def test_over_64_kib_through_the_server(server: str) -> None:
    payload = b'{"pad": "' + b"x" * LIMIT + b'"}'
    answer = requests.post(
        f"{server}{REFUNDS}",
        data=payload,
        headers={**SERVICE, "Content-Type": "application/json"},
        timeout=10,
    )
    assert_problem(answer, 413, "payload_too_large")

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b"x" * 4096

    streamed = requests.post(
        f"{server}{WEBHOOK_URL}",
        data=chunks(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    assert streamed.status_code in (401, 413), streamed.text
    assert streamed.headers["Content-Type"].startswith("application/problem+json")


# -- X-Forwarded-* -------------------------------------------------------------------------------


def _echo_app(settings: Settings, database_url: str, trusted: int) -> FlaskClient:
    app = create_app(
        {
            "BRIDGE_SETTINGS": replace(settings, trusted_proxies=trusted),
            "DATABASE_URL": database_url,
            "TESTING": True,
        }
    )

    @app.get("/_echo")  # what the app believes about the request
    def echo() -> object:
        return jsonify(
            remote_addr=request.remote_addr,
            scheme=request.scheme,
            host=request.host,
            url_root=request.url_root,
        )

    return app.test_client()


FORWARDED = {
    "X-Forwarded-For": "203.0.113.9, 198.51.100.7",
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "evil.example",
    "X-Forwarded-Prefix": "/attacker",
}


def test_forwarded_headers_are_ignored_without_a_proxy(
    settings: Settings, database_url: str
) -> None:
    seen = _echo_app(settings, database_url, 0).get(
        "/_echo", headers=FORWARDED, environ_base={"REMOTE_ADDR": "10.0.0.5"}
    )
    assert seen.get_json() == {
        "remote_addr": "10.0.0.5",
        "scheme": "http",
        "host": "localhost",
        "url_root": "http://localhost/",
    }


def test_forwarded_headers_are_believed_from_the_configured_proxies(
    settings: Settings, database_url: str
) -> None:
    seen = _echo_app(settings, database_url, 1).get(
        "/_echo", headers=FORWARDED, environ_base={"REMOTE_ADDR": "10.0.0.5"}
    )
    # One proxy: only the last X-Forwarded-For value is its own word.
    assert seen.get_json() == {
        "remote_addr": "198.51.100.7",
        "scheme": "https",
        "host": "evil.example",
        "url_root": "https://evil.example/attacker/",
    }
    two = _echo_app(settings, database_url, 2).get(
        "/_echo", headers=FORWARDED, environ_base={"REMOTE_ADDR": "10.0.0.5"}
    )
    assert two.get_json()["remote_addr"] == "203.0.113.9"
