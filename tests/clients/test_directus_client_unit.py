"""The Directus client's HTTP behaviour, without Directus.

`responses` stands in for Directus where only the answers matter (error mapping, Directus's
quirks, path encoding, which calls are retried on 5xx). It replaces the HTTP adapter's send, so
urllib3 never sleeps nor sees a timeout: `Retry-After`, timeouts and connection errors are
tested against a small scripted HTTP server on 127.0.0.1 instead.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import responses

from devstack.net import free_port
from directus_client import (
    DirectusClient,
    DirectusError,
    DirectusTimeoutError,
    DirectusUnavailableError,
    FailedValidationError,
    ForbiddenError,
    InvalidCredentialsError,
    InvalidPayloadError,
    InvalidQueryError,
    MissingPermissionError,
    NotFoundError,
    RateLimitedError,
    RecordNotUniqueError,
)

BASE = "http://directus.test"
TOKEN = "secret-static-token-0123456789"


def problem(code: str, message: str = "something is wrong") -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


@pytest.fixture
def client() -> Iterator[DirectusClient]:
    directus = DirectusClient(BASE, TOKEN, retries=2, backoff_factor=0, backoff_jitter=0)
    yield directus
    directus.close()


@pytest.fixture
def mocked() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


# -- Directus's quirks -----------------------------------------------------------------------


def test_patch_answered_204_is_not_found(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.patch(f"{BASE}/items/orders/o-1", status=204)
    with pytest.raises(NotFoundError) as caught:
        client.update_item("orders", "o-1", {"status": "CANCELLED"})
    assert caught.value.status == 204
    assert caught.value.method == "PATCH"


def test_patch_answered_403_for_an_absent_item_is_not_found(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    # Non-admin tokens get 403 for a PATCH of a missing item; the item is confirmed absent
    # (403 on the item, the collection readable) before saying "not found".
    mocked.patch(f"{BASE}/items/orders/o-1", status=403, json=problem("FORBIDDEN"))
    mocked.get(f"{BASE}/items/orders/o-1", status=403, json=problem("FORBIDDEN"))
    mocked.get(f"{BASE}/items/orders", json={"data": []})
    with pytest.raises(NotFoundError):
        client.update_item("orders", "o-1", {"status": "CANCELLED"})


def test_patch_answered_403_for_an_item_that_exists_is_forbidden(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.patch(f"{BASE}/items/orders/o-1", status=403, json=problem("FORBIDDEN"))
    mocked.get(f"{BASE}/items/orders/o-1", json={"data": {"id": "o-1"}})
    with pytest.raises(ForbiddenError) as caught:
        client.update_item("orders", "o-1", {"status": "CANCELLED"})
    assert not isinstance(caught.value, NotFoundError)


def test_patch_that_updated_returns_the_item(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.patch(f"{BASE}/items/orders/o-1", json={"data": {"id": "o-1"}})
    assert client.update_item("orders", "o-1", {"status": "CANCELLED"}) == {"id": "o-1"}
    assert mocked.calls[0].request.url.endswith("?fields=id")
    assert json.loads(mocked.calls[0].request.body) == {"status": "CANCELLED"}


def test_get_answered_403_is_not_found_when_the_collection_is_readable(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/items/orders/o-1", status=403, json=problem("FORBIDDEN"))
    mocked.get(f"{BASE}/items/orders", json={"data": []})
    with pytest.raises(NotFoundError):
        client.get_item("orders", "o-1", fields=["id", "status"])
    probe = mocked.calls[1].request
    assert probe.params == {"limit": "0", "fields": "id,status"}  # same fields, no rows


def test_get_answered_403_stays_forbidden_when_the_collection_is_not_readable(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/items/orders/o-1", status=403, json=problem("FORBIDDEN"))
    mocked.get(f"{BASE}/items/orders", status=403, json=problem("FORBIDDEN"))
    with pytest.raises(ForbiddenError) as caught:
        client.get_item("orders", "o-1")
    assert not isinstance(caught.value, NotFoundError)


# -- errors by code --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "error_cls"),
    [
        (401, "INVALID_CREDENTIALS", InvalidCredentialsError),
        (401, "TOKEN_EXPIRED", InvalidCredentialsError),
        (403, "FORBIDDEN", ForbiddenError),
        (400, "INVALID_PAYLOAD", InvalidPayloadError),
        (400, "INVALID_QUERY", InvalidQueryError),
        (400, "RECORD_NOT_UNIQUE", RecordNotUniqueError),
        (400, "FAILED_VALIDATION", FailedValidationError),
        (404, "ROUTE_NOT_FOUND", NotFoundError),
        (400, "SOMETHING_NEW", DirectusError),
    ],
)
def test_errors_are_classified_by_directus_code(
    client: DirectusClient,
    mocked: responses.RequestsMock,
    status: int,
    code: str,
    error_cls: type[DirectusError],
) -> None:
    mocked.post(f"{BASE}/items/orders", status=status, json=problem(code, "the message"))
    with pytest.raises(error_cls) as caught:
        client.create_item("orders", {"id": "o-1"})
    error = caught.value
    assert type(error) is error_cls
    assert (error.status, error.code, error.message) == (status, code, "the message")
    assert (error.method, error.url) == ("POST", f"{BASE}/items/orders")


def test_an_error_never_shows_the_token(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/users/me", status=401, json=problem("INVALID_CREDENTIALS"))
    with pytest.raises(InvalidCredentialsError) as caught:
        client.me()
    assert mocked.calls[0].request.headers["Authorization"] == f"Bearer {TOKEN}"
    assert TOKEN not in str(caught.value)
    assert TOKEN not in repr(caught.value.__dict__)


def test_a_proxy_error_page_is_unavailable(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/items/orders", status=502, body="<html>Bad gateway</html>")
    with pytest.raises(DirectusUnavailableError) as caught:
        client.query_items("orders")
    assert caught.value.status == 502
    assert caught.value.message == "HTTP 502"


def test_a_redirect_is_an_error_not_followed(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(
        f"{BASE}/items/orders", status=301, headers={"Location": "https://directus.test/x?t=1"}
    )
    with pytest.raises(DirectusError, match=r"unexpected redirect \(HTTP 301\) to https"):
        client.query_items("orders")
    assert len(mocked.calls) == 1


# -- retries on 5xx and 429 (status retries are emulated by responses) -----------------------


def test_reads_are_retried_on_5xx_up_to_the_limit(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/items/orders", status=503, json=problem("SERVICE_UNAVAILABLE"))
    with pytest.raises(DirectusUnavailableError) as caught:
        client.query_items("orders")
    assert caught.value.status == 503
    assert len(mocked.calls) == 3  # the first try and 2 retries


def test_a_read_that_recovers_is_answered(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/items/orders", status=500, json=problem("INTERNAL_SERVER_ERROR"))
    mocked.get(f"{BASE}/items/orders", json={"data": [{"id": "o-1"}]})
    assert client.query_items("orders") == [{"id": "o-1"}]
    assert len(mocked.calls) == 2


def test_patch_is_retried_on_5xx(client: DirectusClient, mocked: responses.RequestsMock) -> None:
    mocked.patch(f"{BASE}/items/orders/o-1", status=502)
    mocked.patch(f"{BASE}/items/orders/o-1", json={"data": {"id": "o-1"}})
    assert client.update_item("orders", "o-1", {"status": "CANCELLED"}) == {"id": "o-1"}
    assert len(mocked.calls) == 2


@pytest.mark.parametrize("status", [429, 500, 503])
def test_post_is_never_retried(
    client: DirectusClient, mocked: responses.RequestsMock, status: int
) -> None:
    mocked.post(f"{BASE}/items/refunds", status=status, headers={"Retry-After": "0"})
    with pytest.raises(DirectusUnavailableError):
        client.create_item("refunds", {"id": "rf_1"})
    assert len(mocked.calls) == 1


def test_flow_trigger_is_not_retried_and_sends_no_token(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    flow_id = "5f0c64c6-1c7e-4b8b-a6d3-6c1d1f1f1f1f"
    mocked.post(f"{BASE}/flows/trigger/{flow_id}", status=503)
    with pytest.raises(DirectusUnavailableError):
        client.trigger_flow(flow_id, {"kind": "ping"})
    assert len(mocked.calls) == 1
    assert "Authorization" not in mocked.calls[0].request.headers


def test_rate_limited_tells_how_long_to_wait(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.post(
        f"{BASE}/items/refunds",
        status=429,
        headers={"Retry-After": "42"},
        json=problem("REQUESTS_EXCEEDED"),
    )
    with pytest.raises(RateLimitedError) as caught:
        client.create_item("refunds", {"id": "rf_1"})
    assert caught.value.retry_after == 42


# -- ids in paths ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("item_id", "path"),
    [
        ("1/../../users", "/items/orders/1%2F..%2F..%2Fusers"),
        ("..", "/items/orders/%2E%2E"),
        (".", "/items/orders/%2E"),
        ("a?b#c d", "/items/orders/a%3Fb%23c%20d"),
        ("%2F", "/items/orders/%252F"),
    ],
)
def test_an_id_is_one_path_segment(
    client: DirectusClient, mocked: responses.RequestsMock, item_id: str, path: str
) -> None:
    # A pattern: responses would normalise a registered URL's dot segments.
    mocked.get(
        re.compile(re.escape(f"{BASE}/items/orders/") + ".*"), json={"data": {"id": item_id}}
    )
    assert client.get_item("orders", item_id) == {"id": item_id}
    assert mocked.calls[0].request.path_url == path


def test_an_empty_id_names_no_item_and_sends_nothing(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    with pytest.raises(NotFoundError):
        client.get_item("orders", "")
    with pytest.raises(NotFoundError):
        client.update_item("orders", "", {"status": "X"})
    assert len(mocked.calls) == 0


def test_an_id_too_long_for_a_url_is_not_found(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    long_id = "x" * 20_000
    mocked.get(f"{BASE}/items/orders/{long_id}", status=431)
    with pytest.raises(NotFoundError) as caught:
        client.get_item("orders", long_id)
    assert len(str(caught.value)) < 500


def test_filters_are_sent_as_json(client: DirectusClient, mocked: responses.RequestsMock) -> None:
    mocked.get(f"{BASE}/items/orders", json={"data": []})
    client.query_items(
        "orders", filter={"id": {"_eq": "a&b"}}, fields=["id", "status"], sort=["-id"], limit=5
    )
    params = mocked.calls[0].request.params
    assert json.loads(params["filter"]) == {"id": {"_eq": "a&b"}}
    assert (params["fields"], params["sort"], params["limit"]) == ("id,status", "-id", "5")


# -- timeouts, connection errors and Retry-After, against a scripted server ----------------


@dataclass
class Step:
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class ScriptedServer:
    """Answers each request with the next step of its script (the last step repeats)."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.seen: list[tuple[str, str, float]] = []
        script = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                script.seen.append((self.command, self.path, time.monotonic()))
                step = script.steps[min(len(script.seen), len(script.steps)) - 1]
                if step.delay:
                    time.sleep(step.delay)
                payload = json.dumps(step.body if step.body is not None else {}).encode()
                try:
                    self.send_response(step.status)
                    for name, value in step.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client gave up (timeout) and closed the connection

            do_GET = do_POST = do_PATCH = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ScriptedServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def quick_client(url: str, **options: Any) -> DirectusClient:
    values: dict[str, Any] = {"retries": 2, "backoff_factor": 0.01, "backoff_jitter": 0}
    values.update(options)
    return DirectusClient(url, TOKEN, **values)


def test_retry_after_is_honoured() -> None:
    steps = [Step(503, headers={"Retry-After": "1"}), Step(200, {"data": [{"id": "o-1"}]})]
    with ScriptedServer(steps) as server:
        client = quick_client(server.url)
        assert client.query_items("orders") == [{"id": "o-1"}]
        client.close()
    assert len(server.seen) == 2
    waited = server.seen[1][2] - server.seen[0][2]
    assert 0.9 <= waited < 3.0


def test_retry_after_is_capped_and_reported_when_retries_run_out() -> None:
    steps = [Step(429, problem("REQUESTS_EXCEEDED"), headers={"Retry-After": "3600"})]
    with ScriptedServer(steps) as server:
        client = quick_client(server.url, retry_after_max=0.2)
        started = time.monotonic()
        with pytest.raises(RateLimitedError) as caught:
            client.query_items("orders")
        elapsed = time.monotonic() - started
        client.close()
    assert len(server.seen) == 3  # the first try and 2 retries, 0.2 s apart
    assert elapsed < 2.0
    assert caught.value.retry_after == 3600


def test_an_unparseable_retry_after_falls_back_to_backoff() -> None:
    steps = [Step(503, headers={"Retry-After": "soon"}), Step(200, {"data": []})]
    with ScriptedServer(steps) as server:
        client = quick_client(server.url)
        assert client.query_items("orders") == []
        client.close()
    assert len(server.seen) == 2


def test_a_read_timeout_is_retried_for_reads_then_reported() -> None:
    with ScriptedServer([Step(200, {"data": []}, delay=1.0)]) as server:
        client = quick_client(server.url, read_timeout=0.2)
        with pytest.raises(DirectusTimeoutError):
            client.query_items("orders")
        client.close()
    assert len(server.seen) == 3


def test_a_read_timeout_is_not_retried_for_post() -> None:
    with ScriptedServer([Step(200, {"data": {}}, delay=1.0)]) as server:
        client = quick_client(server.url, read_timeout=0.2)
        with pytest.raises(DirectusTimeoutError):
            client.create_item("refunds", {"id": "rf_1"})
        client.close()
    assert [method for method, _, _ in server.seen] == ["POST"]


def test_connection_refused_is_unavailable_after_the_retries() -> None:
    client = quick_client(f"http://127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(DirectusUnavailableError) as caught:
        client.query_items("orders")
    client.close()
    assert time.monotonic() - started < 5
    assert not isinstance(caught.value, DirectusTimeoutError)
    assert TOKEN not in str(caught.value)
    assert client.ping() is False


# -- lookups of people: a missing permission is named, never a crash --------------------------

USER = "6b6e3a70-8605-4a73-88f0-18f6da19e6c0"


@pytest.mark.parametrize(
    "answer",
    [
        {"data": ["7c735bdc-6ae3-44ef-bccd-b934cc09309c"]},  # ids where objects were asked
        {"data": {"id": "p1"}},
        {"data": None},
        "not json at all",
    ],
)
def test_an_answer_of_another_shape_names_the_permission(
    client: DirectusClient, mocked: responses.RequestsMock, answer: Any
) -> None:
    if isinstance(answer, str):
        mocked.get(f"{BASE}/policies", body=answer)
    else:
        mocked.get(f"{BASE}/policies", json=answer)
    with pytest.raises(MissingPermissionError) as caught:
        client.admin_emails()
    assert caught.value.permission == "read directus_policies (id, admin_access)"
    assert str(caught.value).startswith(
        "cannot read directus_policies (id, admin_access): needed to find the users with "
        "admin access (Directus answered "
    )
    assert TOKEN not in str(caught.value)


def test_a_403_on_a_lookup_is_a_missing_permission_not_a_missing_user(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/users", json={"data": [{"id": USER, "role": "r1"}]})
    mocked.get(f"{BASE}/roles", json={"data": [{"id": "r1", "parent": None}]})
    mocked.get(f"{BASE}/access", status=403, json=problem("FORBIDDEN"))
    with pytest.raises(MissingPermissionError) as caught:
        client.user_has_admin_access(USER)
    assert caught.value.permission == "read directus_access (user, role, policy)"
    assert caught.value.purpose == "tell whether a user has admin access"
    assert caught.value.status == 403
    assert not isinstance(caught.value, ForbiddenError)  # callers must not read "no such user"


def test_a_user_that_is_not_there_is_none(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    mocked.get(f"{BASE}/users", json={"data": []})
    assert client.find_user(USER) is None
    assert client.user_has_admin_access(USER) is False


def test_admin_access_through_a_parent_role(
    client: DirectusClient, mocked: responses.RequestsMock
) -> None:
    """A role inherits its parent's policies (Directus 11): the chain is followed, and a
    cycle in it ends the walk."""
    parents = {"child": "parent", "parent": "child"}

    def role(request: Any) -> tuple[int, dict[str, str], str]:
        wanted = json.loads(request.params["filter"])["id"]["_eq"]
        return 200, {}, json.dumps({"data": [{"id": wanted, "parent": parents[wanted]}]})

    def access(request: Any) -> tuple[int, dict[str, str], str]:
        holders = json.loads(request.params["filter"])["_or"]
        roles = next((h["role"]["_in"] for h in holders if "role" in h), [])
        assert roles == ["child", "parent"]
        return 200, {}, json.dumps({"data": [{"policy": "admin-policy"}]})

    mocked.add_callback(responses.GET, f"{BASE}/roles", callback=role)
    mocked.add_callback(responses.GET, f"{BASE}/access", callback=access)
    mocked.get(f"{BASE}/policies", json={"data": [{"id": "admin-policy"}]})
    assert client.admin_access(USER, "child") is True
