"""Both outbound clients take the environment's proxy settings once, when they are made
(`directus_client.read_environment_once`), and prepare their requests without requests'
per-call merging (`directus_client.send_request`): both were a good part of a call's CPU
(docs/performance.md). What the environment says must still hold: HTTP_PROXY is used, NO_PROXY
is honoured, ~/.netrc never replaces our token; and the requests sent are the same."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from bridge.refunds.ridendine import RideNDineClient
from directus_client import DirectusClient


class Seen(BaseHTTPRequestHandler):
    """Answers every request with JSON and remembers its request line and Authorization."""

    seen: list[tuple[str, str]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        type(self).seen.append((self.requestline, self.headers.get("Authorization", "")))
        body = json.dumps({"data": {"ok": True}, "refund_id": "re_1"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    handler = type("Handler", (Seen,), {"seen": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", handler.seen
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def call_both(base_url: str) -> None:
    DirectusClient(base_url, "directus-token", retries=0).request("GET", "/server/ping")
    RideNDineClient(base_url, "ridendine-key").create_refund(
        idempotency_key="rf_1",
        ridendine_order_id="rdn-1",
        external_order_id="o-1",
        amount_cents=100,
        reason="chef_rejected",
        requested_by="admin",
    )


def test_the_proxy_of_the_environment_is_used(
    server: tuple[str, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    proxy, seen = server
    monkeypatch.setenv("HTTP_PROXY", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    call_both("http://partner.invalid")  # resolvable only through the proxy
    assert [line for line, _auth in seen] == [
        "GET http://partner.invalid/server/ping HTTP/1.1",
        "POST http://partner.invalid/refunds/create HTTP/1.1",
    ]


def test_no_proxy_is_honoured(
    server: tuple[str, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    direct, seen = server
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    call_both(direct)
    assert [line for line, _auth in seen] == [
        "GET /server/ping HTTP/1.1",
        "POST /refunds/create HTTP/1.1",
    ]


def test_a_netrc_entry_never_replaces_the_token(
    server: tuple[str, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    direct, seen = server
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login someone password not-our-token\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.delenv("HTTP_PROXY", raising=False)
    call_both(direct)
    assert [auth for _line, auth in seen] == ["Bearer directus-token", "Bearer ridendine-key"]


def test_requests_are_sent_as_prepared_by_the_clients_themselves(
    server: tuple[str, list[tuple[str, str]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    direct, seen = server
    monkeypatch.delenv("HTTP_PROXY", raising=False)

    def merged_per_call(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("Session.prepare_request was used")

    monkeypatch.setattr(requests.Session, "prepare_request", merged_per_call)
    directus = DirectusClient(direct, "directus-token", retries=0)
    hooked: list[int] = []
    directus.session.hooks["response"].append(lambda response, **_: hooked.append(1))
    directus.request("GET", "/items/orders", params={"filter": {"id": {"_eq": "o 1/2"}}})
    directus.request("POST", "/items/refunds", json_body={"id": "rf_1"})
    call_both(direct)
    assert [line for line, _auth in seen] == [
        "GET /items/orders?filter=%7B%22id%22%3A%7B%22_eq%22%3A%22o+1%2F2%22%7D%7D HTTP/1.1",
        "POST /items/refunds HTTP/1.1",
        "GET /server/ping HTTP/1.1",
        "POST /refunds/create HTTP/1.1",
    ]
    assert [auth for _line, auth in seen][-1] == "Bearer ridendine-key"
    assert hooked == [1, 1]  # the session's own hooks still run
