"""No secret ever leaks: a whole refund flow with every secret and token set to a recognisable
value, then every log line, every answer, every command's output, every e-mail and the items in
Directus are searched for them.

Real processes: `refund-bridge serve` and `refund-bridge worker` (log level DEBUG), the RideNDine
sandbox with the canary key and secret, a stand-in for Stripe (the canary Stripe key), the
session's Directus with a bridge user whose static token is a canary, and the project's Flows
synced with the canary flow secret (put back afterwards).
"""

from __future__ import annotations

import base64
import json
import secrets
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

from bridge.cli.directus import flow_params
from bridge.config import load_settings
from devstack.directus import REPO, DirectusServer
from devstack.net import free_port
from devstack.smtp import SmtpSink
from directus_client import DirectusClient
from flows.sync import ping_refund_result, sync_flows
from tests.support import reliability
from tests.support.fault_stack import ADMINS, WEBHOOK_PATH, FaultStack
from tests.support.helpers import FLOW_SECRET, admin_role_id, make_settings, make_user
from tests.support.webhook_helpers import sign

RUN = secrets.token_hex(6)
CANARY = {
    "api_token": f"canary-api-token-{RUN}",
    "flow_service_token": f"canary-flow-service-token-{RUN}",
    "webhook_secret_bytes": f"canary-webhook-secret-{RUN}",
    "ridendine_key": f"canary-ridendine-key-{RUN}",
    "directus_token": f"canary-directus-token-{RUN}",
    "flow_secret": f"canary-flow-secret-{RUN}",
    "metrics_token": f"canary-metrics-token-{RUN}",
    "stripe_key": f"sk_test_canary{RUN}",
}
WEBHOOK_SECRET = "whsec_" + base64.b64encode(CANARY["webhook_secret_bytes"].encode()).decode()
NEEDLES = {**CANARY, "webhook_secret": WEBHOOK_SECRET, "webhook_secret_b64": WEBHOOK_SECRET[6:]}


class FakeStripe:
    """Answers the refunds the sandbox made as succeeded, with their amounts."""

    def __init__(self) -> None:
        self.port = free_port()
        self.amounts: dict[str, int] = {}
        self.seen_keys: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                fake.seen_keys.append(self.headers.get("Authorization", ""))
                path = self.path.split("?", 1)[0]
                if path == "/v1/refunds":
                    body: dict[str, Any] = {
                        "object": "list",
                        "url": "/v1/refunds",
                        "has_more": False,
                        "data": [fake.refund(refund_id) for refund_id in fake.amounts],
                    }
                else:
                    refund_id = path.rsplit("/", 1)[-1]
                    body = fake.refund(refund_id)
                raw = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, format: str, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def refund(self, refund_id: str) -> dict[str, Any]:
        return {
            "id": refund_id,
            "object": "refund",
            "amount": self.amounts.get(refund_id, 0),
            "currency": "eur",
            "status": "succeeded",
            "created": int(time.time()),
        }

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def canary_stack(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[FaultStack, FakeStripe]]:
    folder: Path = tmp_path_factory.mktemp("secrets")
    # The bridge's own Directus user, with a canary static token.
    directus_admin.create_system(
        "users",
        {
            "email": f"bridge-{RUN}@example.com",
            "token": CANARY["directus_token"],
            "status": "active",
            "role": admin_role_id(directus_admin),
            "password": secrets.token_hex(12),
            # An admin: off, or Directus e-mails it every in-app notice other tests count.
            "email_notifications": False,
        },
    )
    stripe = FakeStripe()
    env = {
        "BRIDGE_DIRECTUS_TOKEN": CANARY["directus_token"],
        "BRIDGE_RIDENDINE_API_KEY": CANARY["ridendine_key"],
        "BRIDGE_WEBHOOK_SECRETS": WEBHOOK_SECRET,
        "BRIDGE_API_TOKENS": f"{CANARY['api_token']},{CANARY['flow_service_token']}",
        "BRIDGE_FLOW_SERVICE_TOKEN": CANARY["flow_service_token"],
        "BRIDGE_FLOW_SECRET": CANARY["flow_secret"],
        "BRIDGE_METRICS_TOKEN": CANARY["metrics_token"],
        "BRIDGE_STRIPE_API_KEY": CANARY["stripe_key"],
        "BRIDGE_STRIPE_API_BASE": stripe.url,
        "BRIDGE_LOG_LEVEL": "DEBUG",
    }
    stack = FaultStack(
        cooco_directus,
        directus_admin,
        smtp_sink,
        folder,
        ridendine_key=CANARY["ridendine_key"],
        webhook_secret=WEBHOOK_SECRET,
        env_overrides=env,
    )
    standard = flow_params(make_settings(cooco_directus.url, cooco_directus.admin_token))
    try:
        # The Flows as `flows sync` makes them for this configuration.
        canary_settings = load_settings({**stack_env_stub(cooco_directus.url), **env})
        results = sync_flows(directus_admin, flow_params(canary_settings))
        flow_id = next(str(r.flow_id) for r in results if r.key == "refund-result")
        ping_refund_result(directus_admin, CANARY["flow_secret"], flow_id)
        stack.start()
        yield stack, stripe
    finally:
        if getattr(stack, "sandbox", None) is not None:
            stack.stop()
        stripe.stop()
        # Put the session's Flows back as the other tests expect them.
        results = sync_flows(directus_admin, standard)
        flow_id = next(str(r.flow_id) for r in results if r.key == "refund-result")
        ping_refund_result(directus_admin, FLOW_SECRET, flow_id)


def stack_env_stub(directus_url: str) -> dict[str, str]:
    return {"BRIDGE_DIRECTUS_URL": directus_url, "BRIDGE_RIDENDINE_API_URL": "http://127.0.0.1:9"}


def find_leaks(where: str, text: str, found: list[tuple[str, str]]) -> None:
    for name, needle in NEEDLES.items():
        if needle in text:
            at = text.index(needle)
            found.append((where, f"{name}: ...{text[max(0, at - 80) : at + 20]}..."))


def cli(stack: FaultStack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge.cli", *args],
        cwd=REPO,
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_no_secret_in_any_log_answer_output_or_mail(
    canary_stack: tuple[FaultStack, FakeStripe], directus_admin: DirectusClient
) -> None:
    stack, stripe = canary_stack
    answers: list[requests.Response] = []
    customer, chef = make_user(directus_admin), make_user(directus_admin)
    admin = make_user(directus_admin, admin=True)
    order_ids = stack.orders(3, customer, chef)
    api = {"Authorization": f"Bearer {CANARY['api_token']}"}

    def keep(answer: requests.Response) -> requests.Response:
        answers.append(answer)
        return answer

    # The flow: by the service token, by an admin's Directus token, with a key and a replay,
    # and a customer's request that waits for the admin's approval.
    bodies = [
        ({"order_id": order_ids[0], "reason": "chef_rejected", "requested_by": "admin"}, api),
        (
            {"order_id": order_ids[1], "reason": "chef_rejected"},
            {"Authorization": f"Bearer {admin['token']}", "Idempotency-Key": f"k-{RUN}"},
        ),
        (
            {"order_id": order_ids[2], "reason": "customer_cancel"},
            {"Authorization": f"Bearer {customer['token']}"},
        ),
    ]
    refunds = []
    for body, headers in bodies:
        answer = keep(
            requests.post(f"{stack.url}/ridendine/refunds", json=body, headers=headers, timeout=30)
        )
        assert answer.status_code == 202, answer.text
        refund = answer.json()["refund"]
        if refund["status"] == "REQUESTED":
            # The customer's request on the DELIVERED order waits: the admin approves it.
            answer = keep(
                requests.post(
                    f"{stack.url}/ridendine/refunds/{refund['id']}/approve",
                    json={"comment": "ok"},
                    headers={"Authorization": f"Bearer {admin['token']}"},
                    timeout=30,
                )
            )
            assert answer.status_code == 200, answer.text
            refund = answer.json()["refund"]
        refunds.append(refund)
        stripe.amounts[refund["ridendine_refund_id"]] = refund["amount_cents"]
    replay = keep(
        requests.post(
            f"{stack.url}/ridendine/refunds", json=bodies[1][0], headers=bodies[1][1], timeout=30
        )
    )
    assert replay.headers.get("Idempotent-Replayed") == "true"
    stack.settle(order_ids)
    assert all(key == f"Bearer {CANARY['stripe_key']}" for key in stripe.seen_keys)
    assert stripe.seen_keys, "Stripe was not asked"

    # Wrong credentials everywhere, each a canary in the wrong place.
    for name in (
        "webhook_secret",
        "ridendine_key",
        "flow_secret",
        "metrics_token",
        "directus_token",
    ):
        keep(
            requests.get(
                f"{stack.url}/ridendine/refunds/{refunds[0]['id']}",
                headers={"Authorization": f"Bearer {NEEDLES[name]}"},
                timeout=30,
            )
        )
        keep(
            requests.get(
                f"{stack.url}/ridendine/refunds/stats",
                headers={"Authorization": f"Bearer {NEEDLES[name]}"},
                timeout=30,
            )
        )
    keep(
        requests.get(
            f"{stack.url}/metrics",
            headers={"Authorization": f"Bearer {CANARY['api_token']}"},
            timeout=30,
        )
    )
    keep(
        requests.get(
            f"{stack.url}/metrics",
            headers={"Authorization": f"Bearer {CANARY['metrics_token']}"},
            timeout=30,
        )
    )
    keep(
        requests.post(
            f"{stack.url}{WEBHOOK_PATH}",
            data=b"{}",
            headers={
                "Authorization": f"Bearer {CANARY['api_token']}",
                "Content-Type": "application/json",
                "webhook-signature": f"v1,{NEEDLES['webhook_secret_b64']}",
                "webhook-id": "x",
                "webhook-timestamp": "1",
            },
            timeout=30,
        )
    )
    bad = b'{"refund_id": 1}'
    keep(
        requests.post(
            f"{stack.url}{WEBHOOK_PATH}",
            data=bad,
            headers=sign(bad, secret=WEBHOOK_SECRET),
            timeout=30,
        )
    )
    keep(
        requests.post(
            f"{stack.url}/ridendine/refunds",
            data=b"{",
            headers={**api, "Content-Type": "application/json"},
            timeout=30,
        )
    )
    keep(requests.get(f"{stack.url}/readyz", timeout=30))
    keep(requests.get(f"{stack.url}/ridendine/refunds/stats", headers=api, timeout=30))
    keep(
        requests.get(
            f"{stack.url}/ridendine/refunds",
            params={"order_id": order_ids[0]},
            headers=api,
            timeout=30,
        )
    )
    keep(requests.get(f"{stack.url}/nowhere/{CANARY['api_token']}", timeout=30))

    # The operators' commands.
    outputs = {
        "inbox list": cli(stack, "inbox", "list", "--json"),
        "reconcile": cli(stack, "reconcile", "--format", "json"),
        "report": cli(stack, "report", "--format", "json"),
        "check": cli(stack, "check"),
        "bad config": subprocess.run(
            [sys.executable, "-m", "bridge.cli", "check"],
            cwd=REPO,
            env={**stack.env(), "BRIDGE_API_TOKENS": "short," + CANARY["api_token"]},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ),
    }
    assert outputs["reconcile"].returncode == 0, outputs["reconcile"].stdout
    events = [json.loads(line) for line in outputs["inbox list"].stdout.splitlines() if line]
    event_ids = [str(event["id"]) for event in events]
    assert event_ids
    for event_id in event_ids:
        outputs[f"inbox show {event_id}"] = cli(stack, "inbox", "show", event_id)

    leaks: list[tuple[str, str]] = []
    lines = 0
    for log in ("serve.log", "worker.log"):
        text = (stack.folder / log).read_text(errors="replace")
        lines += text.count("\n")
        find_leaks(log, text, leaks)
    for answer in answers:
        find_leaks(
            f"{answer.request.method} {answer.url} {answer.status_code}",
            answer.text + json.dumps(dict(answer.headers)),
            leaks,
        )
    for name, result in outputs.items():
        find_leaks(name, result.stdout + result.stderr, leaks)
    mails = [m for order_id in order_ids for m in stack.sink.matching(order_id)]
    for mail in mails:
        find_leaks(f"mail {mail.subject}", mail.subject + mail.text() + str(mail.message), leaks)
    items = directus_admin.query_items("refunds", filter={"order_id": {"_in": order_ids}}, limit=-1)
    find_leaks("Directus refunds items", json.dumps(items), leaks)
    assert len(items) == 3
    assert leaks == []
    # The search could have found them: the logs are verbose and mention the refunds.
    assert lines > 50
    assert {ADMINS, customer["email"], chef["email"]} <= {r for m in mails for r in m.rcpt_to}
    reliability.record(
        "test_attacks_secrets",
        secrets_searched=len(NEEDLES),
        log_lines=lines,
        answers=len(answers),
        command_outputs=len(outputs),
        mails=len(mails),
        leaks=len(leaks),
    )


def test_gunicorn_lines_are_redacted_like_the_apps() -> None:
    """Regression: gunicorn's own lines (at DEBUG it prints request lines, which may carry a
    token a client put in a URL) went out without the configured secrets redacted."""
    from bridge.logs import REDACTED, gunicorn_logconfig

    config = gunicorn_logconfig("DEBUG", [CANARY["api_token"]])["filters"]["redact"]
    factory = config.pop("()")
    redacting = factory(**config)
    line = f"GET /nowhere/{CANARY['api_token']} HTTP/1.1"
    assert redacting.redact(line) == f"GET /nowhere/{REDACTED} HTTP/1.1"
