"""The project's Directus Flows: synced by key, and what they do, against the real Directus
and the SMTP sink it sends to."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from bridge.cli.directus import flow_params
from devstack.directus import DirectusServer
from devstack.net import wait_until
from devstack.smtp import SmtpSink
from directus_client import DirectusClient, ForbiddenError
from flows import APPROVE_OR_DENY, REFUND_RESULT, REQUEST_REFUND
from flows.sync import (
    FlowParams,
    FlowRefused,
    find_flow_id,
    find_flows,
    marker,
    ping_refund_result,
    sync_flows,
    trigger,
)
from tests.support.helpers import FLOW_SECRET, SERVICE_TOKEN, make_settings, make_user, unique_id


def result_body(order_id: str, status: str = "REFUNDED", **recipients: Any) -> dict[str, Any]:
    return {
        "secret": FLOW_SECRET,
        "kind": "refund_result",
        "refund": {
            "id": f"rf_{order_id}",
            "order_id": order_id,
            "amount_cents": 5000,
            "refunded_amount_cents": 5000 if status == "REFUNDED" else None,
            "currency": "EUR",
            "status": status,
            "reason": "chef_rejected",
            "failure_reason": "card_expired" if status == "FAILED" else None,
            "needs_review": False,
            "review_reason": None,
        },
        "order": {
            "id": order_id,
            "ridendine_order_id": f"rdn-{order_id}",
            "status": "CANCELLED" if status == "REFUNDED" else "DELIVERED",
            "payment_status": "REFUNDED" if status == "REFUNDED" else "PAID",
        },
        "amount_display": "50.00 EUR",
        "recipients": {
            "customer": f"customer-{order_id}@example.com",
            "chef": f"chef-{order_id}@example.com",
            "admins": [f"admin1-{order_id}@example.com", f"admin2-{order_id}@example.com"],
            **recipients,
        },
    }


# -- sync ------------------------------------------------------------------------------------


def test_sync_twice_gives_one_flow_of_each(
    cooco_directus: DirectusServer, directus_admin: DirectusClient
) -> None:
    params = flow_params(make_settings(cooco_directus.url, cooco_directus.admin_token))
    first = {r.key: r for r in sync_flows(directus_admin, params)}
    second = {r.key: r for r in sync_flows(directus_admin, params)}
    for key in (REFUND_RESULT, REQUEST_REFUND):
        assert first[key].flow_id
        assert second[key].action == "unchanged", second[key].changes
        assert second[key].flow_id == first[key].flow_id
        flows = directus_admin.list_flows(filter={"description": {"_contains": marker(key)}})
        assert [flow["id"] for flow in flows] == [first[key].flow_id]
        assert find_flow_id(directus_admin, key) == first[key].flow_id


def test_sync_puts_back_what_an_admin_changed_and_keeps_the_id(
    refund_flows: dict[str, str], directus_admin: DirectusClient
) -> None:
    flow_id = refund_flows[REFUND_RESULT]
    params = FlowParams(flow_secret=FLOW_SECRET, service_token=SERVICE_TOKEN)
    operations = directus_admin.list_operations(flow_id)
    mail = next(op for op in operations if op["key"] == "mail_customer")
    directus_admin.update_system("operations", mail["id"], {"options": {"to": "x@example.com"}})
    directus_admin.update_flow(flow_id, {"status": "inactive"})
    assert find_flow_id(directus_admin, REFUND_RESULT) is None

    planned = sync_flows(directus_admin, params, keys=[REFUND_RESULT], dry_run=True)[0]
    assert planned.action == "would update"
    assert "set status" in planned.changes
    assert "update operation mail_customer: options" in planned.changes
    assert find_flow_id(directus_admin, REFUND_RESULT) is None  # a dry run changes nothing

    done = sync_flows(directus_admin, params, keys=[REFUND_RESULT])[0]
    assert (done.action, done.flow_id) == ("updated", flow_id)
    again = sync_flows(directus_admin, params, keys=[REFUND_RESULT])[0]
    assert again.action == "unchanged"
    assert find_flow_id(directus_admin, REFUND_RESULT) == flow_id
    assert ping_refund_result(directus_admin, FLOW_SECRET) == flow_id
    assert len(find_flows(directus_admin, REFUND_RESULT)) == 1


def test_flows_without_their_setting_are_skipped(
    cooco_directus: DirectusServer, directus_admin: DirectusClient
) -> None:
    results = sync_flows(directus_admin, FlowParams(), dry_run=True)
    assert [(r.key, r.action) for r in results] == [
        (REFUND_RESULT, "skipped"),
        (REQUEST_REFUND, "skipped"),
        (APPROVE_OR_DENY, "skipped"),
    ]
    with pytest.raises(ValueError, match="at least 16"):
        sync_flows(directus_admin, FlowParams(flow_secret="short"), dry_run=True)


# -- "refund result" -------------------------------------------------------------------------


def test_refund_result_mails_customer_chef_and_admins(
    refund_flows: dict[str, str], directus_admin: DirectusClient, smtp_sink: SmtpSink
) -> None:
    order_id = unique_id("ord")
    body = result_body(order_id)
    answer = trigger(directus_admin, refund_flows[REFUND_RESULT], body)
    assert answer == {
        "ok": True,
        "kind": "refund_result",
        "sent": ["customer", "chef", "admins"],
        "error": None,
    }
    mails = smtp_sink.wait_for(order_id, 3)
    time.sleep(0.5)  # a fourth would show up now
    assert len(smtp_sink.matching(order_id)) == 3

    recipients = body["recipients"]
    (customer,) = smtp_sink.to(recipients["customer"])
    assert customer.rcpt_to == (recipients["customer"],)
    assert customer.subject == f"Your refund of 50.00 EUR for order {order_id}"
    assert "we have refunded <strong>50.00 EUR</strong>" in customer.text()
    (chef,) = smtp_sink.to(recipients["chef"])
    assert chef.rcpt_to == (recipients["chef"],)
    assert "50.00 EUR" in chef.subject and order_id in chef.subject
    (admins,) = smtp_sink.to(recipients["admins"][0])
    assert sorted(admins.rcpt_to) == sorted(recipients["admins"])
    assert admins.subject == f"[refund-bridge] Order {order_id}: refund REFUNDED (50.00 EUR)"
    assert f"rf_{order_id}" in admins.text() and f"rdn-{order_id}" in admins.text()
    assert {m.rcpt_to for m in mails} == {
        customer.rcpt_to,
        chef.rcpt_to,
        admins.rcpt_to,
    }


def test_a_failed_refund_tells_the_customer_support_will_follow_up(
    refund_flows: dict[str, str], directus_admin: DirectusClient, smtp_sink: SmtpSink
) -> None:
    order_id = unique_id("ord")
    body = result_body(order_id, "FAILED")
    body["refund"].update(needs_review=True, review_reason="failed after RideNDine accepted it")
    trigger(directus_admin, refund_flows[REFUND_RESULT], body)
    smtp_sink.wait_for(order_id, 3)
    (customer,) = smtp_sink.to(body["recipients"]["customer"])
    assert customer.subject == f"Your refund for order {order_id} did not go through"
    assert "did not go through" in customer.text()
    assert "support team" in customer.text() and "follow up" in customer.text()
    (admins,) = smtp_sink.to(body["recipients"]["admins"][0])
    assert "FAILED" in admins.subject and "needs review" in admins.subject
    assert "card_expired" in admins.text()
    assert "failed after RideNDine accepted it" in admins.text()


def test_missing_recipients_are_skipped(
    refund_flows: dict[str, str], directus_admin: DirectusClient, smtp_sink: SmtpSink
) -> None:
    order_id = unique_id("ord")
    body = result_body(order_id, customer=None, chef="")
    answer = trigger(directus_admin, refund_flows[REFUND_RESULT], body)
    assert answer["sent"] == ["admins"]
    smtp_sink.wait_for(order_id, 1)
    time.sleep(0.5)
    assert len(smtp_sink.matching(order_id)) == 1


def test_an_admin_alert_is_one_mail_to_the_admins(
    refund_flows: dict[str, str], directus_admin: DirectusClient, smtp_sink: SmtpSink
) -> None:
    needle = unique_id("alert")
    admins = [f"a-{needle}@example.com", f"b-{needle}@example.com"]
    answer = trigger(
        directus_admin,
        refund_flows[REFUND_RESULT],
        {
            "secret": FLOW_SECRET,
            "kind": "admin_alert",
            "recipients": {"customer": None, "chef": None, "admins": admins},
            "subject": f"Refund needs review ({needle})",
            "message": f"Line one <b>{needle}</b>\nline two",
        },
    )
    assert answer["sent"] == ["admins"]
    (mail,) = smtp_sink.wait_for(needle, 1)
    assert sorted(mail.rcpt_to) == sorted(admins)
    assert mail.subject == f"[refund-bridge] Refund needs review ({needle})"
    assert f"Line one &lt;b&gt;{needle}&lt;/b&gt;<br>" in mail.text()  # escaped, not HTML


def test_without_the_secret_nothing_is_sent_and_nothing_echoed(
    refund_flows: dict[str, str], directus: DirectusServer, smtp_sink: SmtpSink
) -> None:
    flow_id = refund_flows[REFUND_RESULT]
    order_id = unique_id("ord")
    url = f"{directus.url}/flows/trigger/{flow_id}"
    probe = "probe-" + unique_id("h")
    bodies: list[dict[str, Any]] = []
    for secret in ("wrong-secret-0123456789", "", None, ["x"], FLOW_SECRET[:-1]):
        body = result_body(order_id)
        body["secret"] = secret
        bodies.append(body)
    del bodies[2]["secret"]
    for body in bodies:
        answer = requests.post(
            url,
            json=body,
            headers={"Authorization": f"Bearer {directus.admin_token}", "X-Probe": probe},
            timeout=10,
        )
        assert answer.status_code == 200
        assert answer.json() == {"ok": False, "error": "forbidden"}
        for leaked in (probe, directus.admin_token, order_id, "wrong-secret", "customer-"):
            assert leaked not in answer.text
    # A good call afterwards is delivered; none of the refused ones ever is.
    later = unique_id("ord")
    requests.post(url, json=result_body(later), timeout=10).raise_for_status()
    smtp_sink.wait_for(later, 3)
    time.sleep(1.0)
    assert smtp_sink.matching(order_id) == []


def test_a_refused_call_raises_for_the_caller(
    refund_flows: dict[str, str], directus_admin: DirectusClient
) -> None:
    with pytest.raises(FlowRefused) as refused:
        trigger(directus_admin, refund_flows[REFUND_RESULT], {"secret": "x", "kind": "ping"})
    assert refused.value.error == "forbidden"
    with pytest.raises(FlowRefused, match="invalid_request"):
        trigger(
            directus_admin,
            refund_flows[REFUND_RESULT],
            {"secret": FLOW_SECRET, "kind": "refund_result", "refund": {"status": "MAYBE"}},
        )


# -- "request refund" ------------------------------------------------------------------------


class Receiver:
    """A stand-in for the bridge's POST /ridendine/refunds: records calls, answers `answer`."""

    def __init__(self) -> None:
        self.calls: list[tuple[dict[str, str], dict[str, Any]]] = []
        self.answer: tuple[int, dict[str, Any]] = (202, {})
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.calls.append((dict(self.headers), json.loads(raw)))
                status, body = receiver.answer
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wait_until_loaded(client: DirectusClient, flow_id: str, collection: str = "orders") -> None:
    """Directus loads a new Flow in the background: until then its trigger answers 403. An
    empty selection is refused by the Flow itself once it is there (nothing is called)."""

    def loaded() -> bool:
        try:
            client.trigger_flow(flow_id, {"collection": collection, "keys": []}, token=None)
        except ForbiddenError:
            return False
        return True

    wait_until(loaded, timeout=10, interval=0.2, what="Directus to load the Flow")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    bridge = Receiver()
    yield bridge
    bridge.close()


def test_request_refund_calls_the_bridge_for_the_user_who_pressed_it(
    spare_directus: DirectusServer, receiver: Receiver
) -> None:
    admin = DirectusClient(spare_directus.url, spare_directus.admin_token)
    params = FlowParams(
        flow_secret=FLOW_SECRET, bridge_url=receiver.url, service_token=SERVICE_TOKEN
    )
    flow_id = {r.key: r.flow_id for r in sync_flows(admin, params)}[REQUEST_REFUND]
    assert flow_id
    wait_until_loaded(admin, flow_id)
    flow = admin.list_flows(filter={"id": {"_eq": flow_id}})[0]
    assert (flow["trigger"], flow["options"]["collections"]) == ("manual", ["orders"])
    assert flow["options"]["requireSelection"] is True
    assert [f["field"] for f in flow["options"]["fields"]] == ["amount", "reason", "comments"]

    staff = make_user(admin, admin=True)
    as_staff = admin.with_token(staff["token"])
    order_id = unique_id("ord")
    dialog = {
        "collection": "orders",
        "keys": [order_id],
        "amount": "25.00",
        "reason": "chef_rejected",
        "comments": "the chef cancelled",
    }
    refund = {"id": "rf_1", "status": "PENDING", "amount_cents": 2500, "currency": "EUR"}
    receiver.answer = (202, {"refund": refund})
    first = as_staff.trigger_flow(flow_id, dialog, token=None)
    second = as_staff.trigger_flow(flow_id, dialog, token=None)  # a double click
    assert first == second == {"ok": True, "refund": refund}
    (headers, body), (headers_again, _) = receiver.calls
    assert headers["Authorization"] == f"Bearer {SERVICE_TOKEN}"
    # The user who pressed the button, never a claim of being an admin: the bridge applies that
    # user's own rights (Directus lets any signed-in user trigger a manual Flow).
    assert headers["X-Directus-User-Id"] == staff["id"]
    assert body == {
        "order_id": order_id,
        "reason": "chef_rejected",
        "amount_cents": 2500,
        "reason_comments": "the chef cancelled",
    }
    notes = admin.list_system(
        "notifications", filter={"recipient": {"_eq": staff["id"]}}, fields=["subject", "message"]
    )
    assert {
        "subject": f"Refund requested for order {order_id}",
        "message": "refund-bridge accepted a refund of 25.00 EUR (sent to RideNDine; refund rf_1)."
        " The customer, the chef and the admins get an e-mail when RideNDine reports the result.",
    } in notes
    assert headers["Idempotency-Key"].startswith("directus-flow-request-refund-")
    assert headers_again["Idempotency-Key"] == headers["Idempotency-Key"]

    # Another amount is another request; no amount asks for all that is refundable. Money
    # in the dialog, or whole cents from a caller of POST /flows/trigger.
    as_staff.trigger_flow(flow_id, {**dialog, "amount": "1,5"}, token=None)
    as_staff.trigger_flow(flow_id, {**dialog, "amount": None}, token=None)
    del dialog["amount"]
    as_staff.trigger_flow(flow_id, {**dialog, "amount_cents": 7}, token=None)
    keys = [h["Idempotency-Key"] for h, _ in receiver.calls]
    assert len(set(keys)) == 4
    assert [body.get("amount_cents") for _, body in receiver.calls[2:]] == [150, None, 7]

    # The bridge's refusal is told to the admin, in the answer and as a notification.
    receiver.answer = (
        409,
        {"status": 409, "code": "amount_exceeds_refundable", "detail": "At most 300 cents."},
    )
    refused = as_staff.trigger_flow(flow_id, {**dialog, "amount_cents": 9999}, token=None)
    assert refused["ok"] is False and refused["code"] == "amount_exceeds_refundable"
    assert "At most 300 cents." in refused["error"]
    notes = admin.list_system(
        "notifications", filter={"recipient": {"_eq": staff["id"]}}, fields=["subject", "item"]
    )
    assert {"subject": f"Refund for order {order_id} not requested", "item": order_id} in notes

    # Bad input never reaches the bridge.
    calls = len(receiver.calls)
    for bad in (
        {**dialog, "amount_cents": "12.5"},
        {**dialog, "amount": "12.505"},
        {**dialog, "amount": "0.00"},
        {**dialog, "amount": "-3"},
        {**dialog, "amount": "ten"},
        {**dialog, "keys": []},
        {**dialog, "keys": [order_id, "another"]},
    ):
        answer = as_staff.trigger_flow(flow_id, bad, token=None)
        assert answer["ok"] is False, bad
    assert len(receiver.calls) == calls
    admin.close()


def test_the_answer_comes_after_the_mails_reached_the_mail_server(
    refund_flows: dict[str, str], directus_admin: DirectusClient, smtp_sink: SmtpSink
) -> None:
    # The bridge records a notification as sent when the Flow answers ok: a mail still under
    # way then dies with Directus (stopped, restarted) and is never retried.
    order_id = unique_id("ord")
    answer = trigger(directus_admin, refund_flows[REFUND_RESULT], result_body(order_id))
    assert answer["ok"] is True
    assert len(smtp_sink.matching(order_id)) == 3


def test_an_e_mail_the_mail_server_refuses_is_a_refusal_for_the_caller(
    refund_flows: dict[str, str], directus_admin: DirectusClient, smtp_sink: SmtpSink
) -> None:
    # The bridge retries an answer without "ok": true; the mails before it may repeat then.
    order_id = unique_id("ord")
    body = result_body(order_id, chef=f"refused-chef-{order_id}@example.com")
    with pytest.raises(FlowRefused, match="mail_failed"):
        trigger(directus_admin, refund_flows[REFUND_RESULT], body)
    # The customer's e-mail went before the chef's failed; the admins' was not tried.
    assert [m.rcpt_to for m in smtp_sink.matching(order_id)] == [(body["recipients"]["customer"],)]


# -- "approve or deny" ------------------------------------------------------------------------


def test_approve_or_deny_calls_the_bridge_as_the_user_who_pressed_it(
    spare_directus: DirectusServer, receiver: Receiver
) -> None:
    admin = DirectusClient(spare_directus.url, spare_directus.admin_token)
    params = FlowParams(
        flow_secret=FLOW_SECRET, bridge_url=receiver.url, service_token=SERVICE_TOKEN
    )
    flow_id = {r.key: r.flow_id for r in sync_flows(admin, params)}[APPROVE_OR_DENY]
    assert flow_id
    wait_until_loaded(admin, flow_id, "refunds")
    flow = admin.list_flows(filter={"id": {"_eq": flow_id}})[0]
    assert (flow["trigger"], flow["options"]["collections"]) == ("manual", ["refunds"])
    assert [f["field"] for f in flow["options"]["fields"]] == ["decision", "comment"]

    # Anyone signed in can trigger it: the Flow passes who it is, the bridge decides.
    nobody = make_user(admin)
    as_nobody = admin.with_token(nobody["token"])
    refund = {"id": "rf/1", "status": "DENIED", "amount_cents": 900, "order_id": "o-1"}
    receiver.answer = (200, {"refund": refund})
    dialog = {"collection": "refunds", "keys": ["rf/1"], "decision": "deny", "comment": " late "}
    answer = as_nobody.trigger_flow(flow_id, dialog, token=None)
    assert answer == {"ok": True, "refund": refund}
    ((headers, body),) = receiver.calls
    assert headers["Authorization"] == f"Bearer {SERVICE_TOKEN}"
    assert headers["X-Directus-User-Id"] == nobody["id"]
    assert body == {"comment": "late"}
    notes = admin.list_system(
        "notifications", filter={"recipient": {"_eq": nobody["id"]}}, fields=["subject", "item"]
    )
    assert {"subject": "Refund rf/1: denied", "item": "rf/1"} in notes

    # The bridge's refusal (here: not an admin) is told to the user and answered.
    receiver.answer = (
        403,
        {"status": 403, "code": "forbidden", "detail": "Only an admin may approve."},
    )
    refused = as_nobody.trigger_flow(flow_id, {**dialog, "decision": "approve"}, token=None)
    assert (refused["ok"], refused["code"]) == (False, "forbidden")
    assert "Only an admin may approve." in refused["error"]
    notes = admin.list_system(
        "notifications", filter={"recipient": {"_eq": nobody["id"]}}, fields=["subject"]
    )
    assert {"subject": "Refund rf/1: not approved"} in notes

    # Bad input never reaches the bridge.
    calls = len(receiver.calls)
    for bad in ({**dialog, "decision": "maybe"}, {**dialog, "keys": []}):
        assert as_nobody.trigger_flow(flow_id, bad, token=None)["ok"] is False
    assert len(receiver.calls) == calls
    admin.close()
