"""The whole refund flow at COOCO's URLs, with real processes only.

The session Directus (with the `ridendine` extension, whose BRIDGE_URL is the
`directus_bridge_port`), the bridge under gunicorn on that port (`refund-bridge serve`), the worker
(`refund-bridge worker`), the RideNDine sandbox (`refund-bridge sandbox`) posting its signed
webhooks to `{DIRECTUS_URL}/ridendine/webhooks/refund-status`, and the SMTP sink Directus mails to.
Nothing is mocked and nothing runs in this process but the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from bridge.cli.directus import flow_params
from devstack.directus import REPO, DirectusServer
from devstack.net import wait_until
from devstack.sandbox import SandboxProcess
from devstack.smtp import SmtpSink
from directus_client import DirectusClient
from flows import APPROVE_OR_DENY, REQUEST_REFUND
from flows.sync import find_flow_id, sync_flows
from tests.support.helpers import RIDENDINE_KEY, make_order, make_settings, make_user, settings_env

WEBHOOK_PATH = "/ridendine/webhooks/refund-status"
ADMINS = "admins@example.com"
WAIT_SECONDS = 60  # each wait below is bounded; a refund normally settles within seconds


@dataclass
class Stack:
    directus: DirectusServer
    admin: DirectusClient
    sandbox: SandboxProcess
    sink: SmtpSink
    bridge_url: str

    @property
    def refunds_url(self) -> str:
        return f"{self.directus.url}/ridendine/refunds"

    @property
    def webhook_url(self) -> str:
        return f"{self.directus.url}{WEBHOOK_PATH}"

    def order(
        self,
        customer: dict[str, Any],
        chef: dict[str, Any],
        amount: int,
        status: str = "DELIVERED",
    ) -> str:
        """An order of `customer`, whose RideNDine results come back through Directus."""
        order = make_order(
            self.admin,
            amount_paid_cents=amount,
            customer=customer["id"],
            chef=chef["id"],
            status=status,
        )
        self.sandbox.control.set_rule(order["id"], bridge_webhook_url=self.webhook_url)
        return str(order["id"])


def spawn(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)


@pytest.fixture(scope="module")
def stack(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    directus_bridge_port: int,
    ridendine_sandbox: SandboxProcess,
    smtp_sink: SmtpSink,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    folder = tmp_path_factory.mktemp("end-to-end")
    bridge_url = f"http://127.0.0.1:{directus_bridge_port}"
    settings = make_settings(
        cooco_directus.url,
        cooco_directus.admin_token,
        ridendine_api_url=ridendine_sandbox.url,
        public_url=bridge_url,
    )
    assert ridendine_sandbox.api_key == RIDENDINE_KEY
    # The Flows as `refund-bridge flows sync` makes them for this bridge ("request refund"
    # calls it at BRIDGE_PUBLIC_URL).
    sync_flows(directus_admin, flow_params(settings))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        **settings_env(settings, f"sqlite:///{folder / 'bridge.sqlite3'}"),
        "BRIDGE_PUBLIC_URL": bridge_url,
        "BRIDGE_WORKER_POLL_SECONDS": "0.2",
    }
    cli = [sys.executable, "-m", "bridge.cli"]
    bridge = spawn(
        [*cli, "serve", "--bind", f"127.0.0.1:{directus_bridge_port}", "--workers", "2"],
        env,
        folder / "bridge.log",
    )
    worker: subprocess.Popen[bytes] | None = None
    try:

        def bridge_ready() -> bool:
            assert bridge.poll() is None, (folder / "bridge.log").read_text()[-3000:]
            try:
                return requests.get(f"{bridge_url}/healthz", timeout=1).status_code == 200
            except requests.RequestException:
                return False

        wait_until(bridge_ready, timeout=60, interval=0.1, what="the bridge under gunicorn")
        # Started once the bridge has migrated the store.
        worker = spawn([*cli, "worker"], env, folder / "worker.log")
        yield Stack(cooco_directus, directus_admin, ridendine_sandbox, smtp_sink, bridge_url)
        assert worker.poll() is None, (folder / "worker.log").read_text()[-3000:]
    finally:
        if worker is not None:
            stop(worker)
        stop(bridge)


def people(admin: DirectusClient) -> dict[str, dict[str, Any]]:
    return {
        "admin": make_user(admin, admin=True),
        "customer": make_user(admin),
        "other_customer": make_user(admin),
        "chef": make_user(admin),
    }


def request_refund(stack: Stack, token: str, body: dict[str, Any]) -> requests.Response:
    return requests.post(
        stack.refunds_url,
        json=body,
        headers={"Authorization": f"Bearer {token}", "Idempotency-Key": f"e2e-{body['order_id']}"},
        timeout=30,
    )


def wait_for_order(stack: Stack, order_id: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def settled() -> bool:
        nonlocal found
        found = stack.admin.get_item("orders", order_id)
        return found["payment_status"] != "PAID"

    wait_until(settled, timeout=WAIT_SECONDS, interval=0.2, what=f"order {order_id} to change")
    return found


def assert_went_through(
    stack: Stack,
    refund: dict[str, Any],
    *,
    amount: int,
    reason: str,
    requested_by: str,
    customer: dict[str, Any],
    chef: dict[str, Any],
    token: str,
    also_mailed: tuple[str, ...] = (),
    ignored: tuple[str, ...] = (),
) -> None:
    """RideNDine got the contract's call, its signed result came back through Directus, the
    order is REFUNDED and CANCELLED, and the customer, the chef and the admins got one e-mail."""
    order_id = refund["order_id"]
    # RideNDine: /refunds/create with the contract's body, keyed by the bridge's refund id.
    calls: list[dict[str, Any]] = []

    def submitted() -> bool:
        nonlocal calls
        calls = stack.sandbox.control.requests(idempotency_key=refund["id"])
        return bool(calls)

    # Sent inline before the 202; by the worker if that attempt did not get an answer.
    wait_until(submitted, timeout=WAIT_SECONDS, interval=0.2, what="RideNDine to be called")
    (call,) = calls
    assert call["authorized"] is True and call["status"] == 201
    assert call["body"] == {
        "ridendine_order_id": f"rdn-{order_id}",
        "external_order_id": order_id,
        "amount_cents": amount,
        "reason": reason,
        "requested_by": requested_by,
    }
    # Its signed webhook went to COOCO's URL, and the bridge's answer came back through it.
    (delivery,) = stack.sandbox.control.wait_for_deliveries(
        1, timeout=WAIT_SECONDS, external_order_id=order_id
    )
    assert delivery["url"] == stack.webhook_url
    assert delivery["status"] == "REFUNDED"
    assert [a["status_code"] for a in delivery["attempts"]] == [200]
    ridendine_refund_id = delivery["refund_id"]

    order = wait_for_order(stack, order_id)
    assert (order["payment_status"], order["status"]) == ("REFUNDED", "CANCELLED")

    # The refund as COOCO reads it, at its URL, with the caller's own token.
    answer = requests.get(
        f"{stack.refunds_url}/{refund['id']}",
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    settled = answer.json()["refund"]
    assert settled["status"] == "REFUNDED"
    assert settled["ridendine_refund_id"] == ridendine_refund_id
    assert [change["to_status"] for change in settled["history"]][-1] == "REFUNDED"

    expected = [(customer["email"],), (chef["email"],), (ADMINS,)]
    expected += [(address,) for address in also_mailed]
    # `ignored`: subjects of the mails about the order that are not the result's (a waiting
    # request's notices, which Directus also e-mails to every admin it notified).

    def result_mails() -> list[Any]:
        return [
            mail
            for mail in stack.sink.matching(order_id)
            if not any(text in mail.subject for text in ignored)
        ]

    wait_until(
        lambda: len(result_mails()) >= len(expected),
        timeout=WAIT_SECONDS,
        interval=0.1,
        what=f"{len(expected)} e-mail(s) about {order_id}",
    )
    time.sleep(0.5)  # one more would be a duplicate notification
    mails = result_mails()
    assert sorted(m.rcpt_to for m in mails) == sorted(expected), [
        (m.rcpt_to, m.subject) for m in mails
    ]


def test_admins_and_customers_refund_at_coocos_urls(stack: Stack) -> None:
    who = people(stack.admin)
    customer, chef = who["customer"], who["chef"]
    by_admin = stack.order(customer, chef, 5000)
    # PREPARING: inside the refund policy, the customer refunds alone (a DELIVERED order
    # waits for an admin: test_a_customer_request_waits_and_the_approve_or_deny_flow_decides).
    by_customer = stack.order(customer, chef, 3200, status="PREPARING")
    not_theirs = stack.order(who["other_customer"], chef, 4100)

    admin_answer = request_refund(
        stack,
        who["admin"]["token"],
        {"order_id": by_admin, "reason": "chef_rejected", "reason_comments": "no chef today"},
    )
    customer_answer = request_refund(
        stack, customer["token"], {"order_id": by_customer, "reason": "customer_cancel"}
    )
    refused = request_refund(
        stack, customer["token"], {"order_id": not_theirs, "reason": "customer_cancel"}
    )

    assert admin_answer.status_code == 202, admin_answer.text
    admin_refund = admin_answer.json()["refund"]
    assert admin_answer.headers["Location"] == f"/ridendine/refunds/{admin_refund['id']}"
    assert (admin_refund["requested_by"], admin_refund["requested_by_user"]) == (
        "admin",
        who["admin"]["id"],
    )
    assert customer_answer.status_code == 202, customer_answer.text
    customer_refund = customer_answer.json()["refund"]
    assert (customer_refund["requested_by"], customer_refund["requested_by_user"]) == (
        "customer",
        customer["id"],
    )
    assert refused.status_code == 403
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert refused.json()["code"] == "forbidden"

    assert_went_through(
        stack,
        admin_refund,
        amount=5000,
        reason="chef_rejected",
        requested_by="admin",
        customer=customer,
        chef=chef,
        token=who["admin"]["token"],
    )
    assert_went_through(
        stack,
        customer_refund,
        amount=3200,
        reason="customer_cancel",
        requested_by="customer",
        customer=customer,
        chef=chef,
        token=customer["token"],
    )
    # The refused request never reached RideNDine, and its order is untouched.
    assert stack.sandbox.control.requests(external_order_id=not_theirs) == []
    untouched = stack.admin.get_item("orders", not_theirs)
    assert (untouched["payment_status"], untouched["status"]) == ("PAID", "DELIVERED")


def test_the_request_refund_flow_gets_a_refund_through(stack: Stack) -> None:
    who = people(stack.admin)
    # Directus e-mails this admin its notifications during this test only (an admin with it on
    # would also get every later test's in-app notices by e-mail).
    stack.admin.update_system("users", who["admin"]["id"], {"email_notifications": True})
    try:
        request_refund_through_the_flow(stack, who)
    finally:
        stack.admin.update_system("users", who["admin"]["id"], {"email_notifications": False})


def request_refund_through_the_flow(stack: Stack, who: dict[str, dict[str, Any]]) -> None:
    order_id = stack.order(who["customer"], who["chef"], 6400)
    flow_id = find_flow_id(stack.admin, REQUEST_REFUND)
    assert flow_id

    # As the app does it: the order page's button, the dialog's fields, the admin's token.
    answer = requests.post(
        f"{stack.directus.url}/flows/trigger/{flow_id}",
        json={
            "collection": "orders",
            "keys": [order_id],
            "amount_cents": None,
            "reason": "chef_rejected",
            "comments": "the chef is ill",
        },
        headers={"Authorization": f"Bearer {who['admin']['token']}"},
        timeout=30,
    )

    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["ok"] is True, body
    refund = body["refund"]
    assert (refund["order_id"], refund["status"], refund["amount_cents"]) == (
        order_id,
        "PENDING",
        6400,
    )
    assert (refund["requested_by"], refund["requested_by_user"]) == ("admin", who["admin"]["id"])
    assert refund["reason_comments"] == "the chef is ill"
    assert_went_through(
        stack,
        refund,
        amount=6400,
        reason="chef_rejected",
        requested_by="admin",
        customer=who["customer"],
        chef=who["chef"],
        token=who["admin"]["token"],
        # The Flow's notification to the admin who pressed the button, which Directus also
        # e-mails: no e-mail of the refund's result.
        also_mailed=(who["admin"]["email"],),
    )
    (note,) = stack.sink.to(who["admin"]["email"])
    assert note.subject == f"Refund requested for order {order_id}"


def trigger_request_refund(stack: Stack, token: str, order_id: str, **dialog: Any) -> Any:
    """Press "request refund" on an order's page, as the Directus app does."""
    flow_id = find_flow_id(stack.admin, REQUEST_REFUND)
    assert flow_id
    answer = requests.post(
        f"{stack.directus.url}/flows/trigger/{flow_id}",
        json={"collection": "orders", "keys": [order_id], **dialog},
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return answer.json()


def test_the_request_refund_flow_acts_for_the_user_who_pressed_it(stack: Stack) -> None:
    """Directus lets any signed-in user trigger a manual Flow: the bridge, not the button,
    decides, with the rights of the user who pressed it (docs/directus.md)."""
    who = people(stack.admin)
    customer_role = stack.admin.create_system("roles", {"name": f"Customer {time.time_ns()}"})
    customer = make_user(stack.admin, role=customer_role["id"])
    nobody = who["other_customer"]  # no role, no policy, no order of their own
    theirs = stack.order(customer, who["chef"], 3000)
    someone_elses = stack.order(who["customer"], who["chef"], 4000)

    refused = [
        (
            nobody,
            trigger_request_refund(
                stack, nobody["token"], someone_elses, reason="chef_rejected", amount_cents=500
            ),
        ),
        (
            nobody,
            trigger_request_refund(
                stack, nobody["token"], someone_elses, reason="customer_cancel", amount_cents=500
            ),
        ),
        (
            customer,
            trigger_request_refund(
                stack, customer["token"], someone_elses, reason="customer_cancel"
            ),
        ),
        (
            customer,
            trigger_request_refund(stack, customer["token"], theirs, reason="chef_rejected"),
        ),
    ]
    for _user, answer in refused:
        assert answer["ok"] is False, answer
        assert answer["code"] == "forbidden", answer
    # Nothing reached RideNDine or the refunds collection; the orders are untouched.
    assert stack.sandbox.control.requests(external_order_id=someone_elses) == []
    assert stack.admin.query_items("refunds", filter={"order_id": {"_eq": someone_elses}}) == []
    untouched = stack.admin.get_item("orders", someone_elses)
    assert (untouched["payment_status"], untouched["status"]) == ("PAID", "DELIVERED")
    # Each was told why, in a Directus notification.
    for user in (nobody, customer):
        notes = stack.admin.list_system(
            "notifications",
            filter={"recipient": {"_eq": user["id"]}},
            fields=["subject", "message"],
        )
        assert any(
            n["subject"].endswith("not requested") and "(forbidden, HTTP 403)" in n["message"]
            for n in notes
        ), notes

    # A customer on their own order gets what their own token would give them.
    own = trigger_request_refund(
        stack, customer["token"], theirs, reason="customer_cancel", amount="12.50"
    )
    assert own["ok"] is True, own
    refund = own["refund"]
    assert (refund["requested_by"], refund["requested_by_user"]) == ("customer", customer["id"])
    assert (refund["order_id"], refund["amount_cents"]) == (theirs, 1250)
    # Their order is DELIVERED: outside the refund policy, the request waits for an admin,
    # exactly as with their own token, and RideNDine hears nothing yet.
    assert refund["status"] == "REQUESTED"
    assert stack.sandbox.control.requests(idempotency_key=refund["id"]) == []


def test_a_customer_request_waits_and_the_approve_or_deny_flow_decides(stack: Stack) -> None:
    """The refund policy at COOCO's URLs: a customer's request on a DELIVERED order waits and
    RideNDine hears nothing; the "approve or deny" Flow, triggered as the app does it, refuses a
    user who is not an admin (nothing changes) and sends the refund once an admin approves."""
    who = people(stack.admin)
    customer, chef = who["customer"], who["chef"]
    order_id = stack.order(customer, chef, 2750)

    asked = request_refund(
        stack, customer["token"], {"order_id": order_id, "reason": "customer_cancel"}
    )
    assert asked.status_code == 202, asked.text
    refund = asked.json()["refund"]
    assert (refund["status"], refund["ridendine_refund_id"]) == ("REQUESTED", None)
    # The customer is told it is being reviewed, the admins that it waits (before deciding,
    # so that these notices are not skipped as out of date).
    reviewed = stack.sink.wait_for(f"order {order_id} is being reviewed", 1, timeout=WAIT_SECONDS)
    assert [m.rcpt_to for m in reviewed] == [(customer["email"],)]
    (waits,) = stack.sink.wait_for(f"Order {order_id}: refund of 27.50 EUR waits", 1)
    assert waits.rcpt_to == (ADMINS,)

    def notified() -> bool:
        notes = stack.admin.list_system(
            "notifications",
            filter={
                "_and": [
                    {"item": {"_eq": refund["id"]}},
                    {"recipient": {"_eq": who["admin"]["id"]}},
                ]
            },
        )
        return bool(notes)

    wait_until(notified, timeout=WAIT_SECONDS, interval=0.2, what="the admin's notification")
    flow_id = find_flow_id(stack.admin, APPROVE_OR_DENY)
    assert flow_id

    def press(user: dict[str, Any], decision: str) -> dict[str, Any]:
        answer = requests.post(
            f"{stack.directus.url}/flows/trigger/{flow_id}",
            json={
                "collection": "refunds",
                "keys": [refund["id"]],
                "decision": decision,
                "comment": "checked the photos",
            },
            headers={"Authorization": f"Bearer {user['token']}"},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = answer.json()
        return body

    # Any signed-in user can trigger a manual Flow: the bridge refuses one who is no admin.
    refused = press(customer, "approve")
    assert (refused["ok"], refused["code"]) == (False, "forbidden"), refused
    assert press(who["other_customer"], "deny")["code"] == "forbidden"
    unchanged = stack.admin.get_item("refunds", refund["id"])
    assert (unchanged["status"], unchanged["decided_by"]) == ("REQUESTED", None)
    assert stack.sandbox.control.requests(external_order_id=order_id) == []

    approved = press(who["admin"], "approve")
    assert approved["ok"] is True, approved
    assert (approved["refund"]["status"], approved["refund"]["decided_by"]) == (
        "PENDING",
        who["admin"]["id"],
    )
    again = press(who["admin"], "approve")  # a double click
    assert (again["ok"], again["code"]) == (False, "refund_not_awaiting_approval")
    assert_went_through(
        stack,
        approved["refund"],
        amount=2750,
        reason="customer_cancel",
        requested_by="customer",
        customer=customer,
        chef=chef,
        token=customer["token"],
        ignored=("is being reviewed", "waits for approval"),
    )
