"""The refund policy (contract section 1a): customers' requests outside it wait as REQUESTED,
admins approve or deny them. Against the real Directus (users, admin access, orders, the
"refund result" Flow and the SMTP sink); RideNDine is mocked with `responses`."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import responses
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import select, update

from bridge import create_app
from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.refunds import approval
from bridge.services import Services, get_services
from bridge.store.models import OutboxJob, Refund, utcnow
from devstack.directus import DirectusServer
from devstack.smtp import SmtpSink
from directus_client import DirectusClient
from tests.support.helpers import (
    RIDENDINE_URL,
    SERVICE_TOKEN,
    make_order,
    make_settings,
    make_user,
)

CREATE_URL = f"{RIDENDINE_URL}/refunds/create"
PROBLEM = "application/problem+json"
SERVICE = {"Authorization": f"Bearer {SERVICE_TOKEN}"}


def make_bridge(directus: DirectusServer, database_url: str, **overrides: Any) -> Flask:
    return create_app(
        {
            "BRIDGE_SETTINGS": make_settings(directus.url, directus.admin_token, **overrides),
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )


@pytest.fixture
def bridge(cooco_directus: DirectusServer, database_url: str) -> Iterator[Flask]:
    app = make_bridge(cooco_directus, database_url)
    yield app
    with app.app_context():
        get_services().close()


@pytest.fixture
def api(bridge: Flask) -> FlaskClient:
    return bridge.test_client()


@pytest.fixture
def services(bridge: Flask) -> Services:
    with bridge.app_context():
        return get_services()


@pytest.fixture
def ridendine(cooco_directus: DirectusServer) -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(cooco_directus.url)
        mock.add(responses.POST, CREATE_URL, json={"refund_id": f"re_{uuid.uuid4().hex}"})
        yield mock


@pytest.fixture
def customer(cooco_directus: DirectusServer, directus_admin: DirectusClient) -> dict[str, Any]:
    return make_user(directus_admin)


@pytest.fixture
def admin(cooco_directus: DirectusServer, directus_admin: DirectusClient) -> dict[str, Any]:
    return make_user(directus_admin, admin=True)


def calls(mock: responses.RequestsMock) -> list[Any]:
    return [call for call in mock.calls if call.request.url == CREATE_URL]


def bearer(user: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['token']}"}


def acting_for(user: dict[str, Any]) -> dict[str, str]:
    return {**SERVICE, "X-Directus-User-Id": user["id"]}


def ask(api: FlaskClient, order_id: str, user: dict[str, Any], **fields: Any) -> Any:
    return api.post(
        "/ridendine/refunds",
        json={"order_id": order_id, "reason": "customer_cancel", **fields},
        headers=bearer(user),
    )


def decide(
    api: FlaskClient, refund_id: str, verb: str, headers: dict[str, str], body: Any = None
) -> Any:
    return api.post(f"/ridendine/refunds/{refund_id}/{verb}", json=body, headers=headers)


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = response.get_json()
    assert (body["code"], body["status"]) == (code, status)
    return body


def jobs(services: Services, refund_id: str) -> list[tuple[str, str]]:
    with services.store.session() as session:
        return [
            (kind, key)
            for kind, key in session.execute(
                select(OutboxJob.kind, OutboxJob.dedupe_key).where(OutboxJob.refund_id == refund_id)
            )
        ]


def committed(services: Services, order_id: str) -> int:
    with services.store.session() as session:
        return ledger.committed_cents(session, order_id)


# -- a customer's request outside the policy waits ----------------------------------------------


def test_a_customer_request_on_a_delivered_order_waits_and_ridendine_hears_nothing(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
) -> None:
    order = make_order(directus_admin, customer=customer["id"], amount_paid_cents=3_000)

    answer = ask(api, order["id"], customer, reason_comments="it arrived cold")

    assert answer.status_code == 202, answer.get_data(as_text=True)
    refund = answer.get_json()["refund"]
    assert answer.headers["Location"] == f"/ridendine/refunds/{refund['id']}"
    assert (refund["status"], refund["amount_cents"], refund["requested_by"]) == (
        "REQUESTED",
        3_000,
        "customer",
    )
    assert refund["ridendine_refund_id"] is None
    assert calls(ridendine) == []
    kinds = jobs(services, refund["id"])
    assert not [kind for kind, _ in kinds if kind == "submit_refund"]
    assert ("notify_approval", f"approval:{refund['id']}:requested:mail") in kinds
    assert ("notify_approval", f"approval:{refund['id']}:requested:app") in kinds
    # It counts against what is refundable: nobody can ask for the same money meanwhile.
    assert committed(services, order["id"]) == 3_000
    more = api.post(
        "/ridendine/refunds",
        json={"order_id": order["id"], "reason": "chef_rejected", "requested_by": "admin"},
        headers=SERVICE,
    )
    assert assert_problem(more, 409, "amount_exceeds_refundable")["refundable_cents"] == 0
    # The customer sees where it stands, with the reason it waits.
    shown = api.get(f"/ridendine/refunds/{refund['id']}", headers=bearer(customer))
    body = shown.get_json()["refund"]
    assert body["status"] == "REQUESTED"
    assert "waits for an admin's approval: the order is DELIVERED" in body["history"][0]["detail"]
    # Its Directus item shows it too.
    item = directus_admin.get_item("refunds", refund["id"])
    assert item["status"] == "REQUESTED"


def test_the_service_token_for_a_customer_waits_too(
    api: FlaskClient, ridendine: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin)
    answer = api.post(
        "/ridendine/refunds",
        json={"order_id": order["id"], "reason": "customer_cancel", "requested_by": "customer"},
        headers=SERVICE,
    )
    assert answer.status_code == 202
    assert answer.get_json()["refund"]["status"] == "REQUESTED"
    assert calls(ridendine) == []


def test_inside_the_policy_nothing_changes(
    api: FlaskClient,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
    admin: dict[str, Any],
) -> None:
    preparing = make_order(directus_admin, customer=customer["id"], status="PREPARING")
    delivered = make_order(directus_admin, customer=customer["id"])

    own = ask(api, preparing["id"], customer, amount_cents=500)
    by_admin = api.post(
        "/ridendine/refunds",
        json={"order_id": delivered["id"], "reason": "chef_rejected", "amount_cents": 700},
        headers=bearer(admin),
    )

    assert own.status_code == 202 and by_admin.status_code == 202
    assert own.get_json()["refund"]["status"] == "PENDING"
    assert by_admin.get_json()["refund"]["status"] == "PENDING"  # admins never wait
    sent = [json.loads(call.request.body) for call in calls(ridendine)]
    assert [(s["amount_cents"], s["requested_by"]) for s in sent] == [
        (500, "customer"),
        (700, "admin"),
    ]


def test_above_the_amount_limit_a_customer_waits(
    cooco_directus: DirectusServer,
    database_url: str,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
) -> None:
    """BRIDGE_APPROVAL_ABOVE_CENTS=1000 and no status waits: the limit counts what the customer
    got without approval on the order, so two small requests cannot pass it either."""
    app = make_bridge(
        cooco_directus,
        database_url,
        approval_order_statuses=(),
        approval_above_cents=1_000,
    )
    api = app.test_client()
    order = make_order(directus_admin, customer=customer["id"], amount_paid_cents=5_000)

    first = ask(api, order["id"], customer, amount_cents=600)
    second = ask(api, order["id"], customer, amount_cents=500)
    third = ask(api, order["id"], customer, amount_cents=400)
    big = api.post(
        "/ridendine/refunds",
        json={"order_id": order["id"], "reason": "chef_rejected", "requested_by": "admin"},
        headers=SERVICE,
    )

    assert [r.get_json()["refund"]["status"] for r in (first, second, third, big)] == [
        "PENDING",
        "REQUESTED",  # 600 + 500 > 1000
        "PENDING",  # 600 + 400 = 1000: not above
        "PENDING",  # an admin's 3500: never waits
    ]
    assert (
        "above the 1000 cents"
        in api.get(
            f"/ridendine/refunds/{second.get_json()['refund']['id']}", headers=SERVICE
        ).get_json()["refund"]["history"][0]["detail"]
    )
    assert len(calls(ridendine)) == 3
    with app.app_context():
        get_services().close()


# -- approve and deny ---------------------------------------------------------------------------


def test_an_admin_approves_and_ridendine_gets_it_once(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
    admin: dict[str, Any],
) -> None:
    order = make_order(directus_admin, customer=customer["id"], amount_paid_cents=2_000)
    refund = ask(api, order["id"], customer, amount_cents=1_500).get_json()["refund"]

    approved = decide(api, refund["id"], "approve", bearer(admin), {"comment": "goodwill"})
    again = decide(api, refund["id"], "approve", bearer(admin))
    denied_after = decide(api, refund["id"], "deny", bearer(admin))

    assert approved.status_code == 200, approved.get_data(as_text=True)
    body = approved.get_json()["refund"]
    assert (body["status"], body["decided_by"], body["decision_comment"]) == (
        "PENDING",
        admin["id"],
        "goodwill",
    )
    assert body["ridendine_refund_id"].startswith("re_")
    assert_problem(again, 409, "refund_not_awaiting_approval")
    assert_problem(denied_after, 409, "refund_not_awaiting_approval")
    (call,) = calls(ridendine)  # once, however often it is approved
    assert call.request.headers["Idempotency-Key"] == refund["id"]
    assert json.loads(call.request.body) == {
        "ridendine_order_id": order["ridendine_order_id"],
        "external_order_id": order["id"],
        "amount_cents": 1_500,
        "reason": "customer_cancel",
        "requested_by": "customer",
    }
    history = api.get(f"/ridendine/refunds/{refund['id']}", headers=bearer(customer))
    lines = history.get_json()["refund"]["history"]
    assert [(h["from_status"], h["to_status"]) for h in lines][:2] == [
        (None, "REQUESTED"),
        ("REQUESTED", "PENDING"),
    ]
    assert lines[1]["source"] == "admin" and admin["email"] in lines[1]["detail"]
    assert directus_admin.get_item("refunds", refund["id"])["status"] == "PENDING"
    # A repeated approve queued nothing more either.
    kinds = jobs(services, refund["id"])
    assert [key for kind, key in kinds if kind == "submit_refund"] == [f"submit:{refund['id']}"]


def test_the_extension_acting_for_an_admin_may_decide(
    api: FlaskClient,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
    admin: dict[str, Any],
) -> None:
    order = make_order(directus_admin, customer=customer["id"])
    refund = ask(api, order["id"], customer).get_json()["refund"]

    answer = decide(api, refund["id"], "approve", acting_for(admin))

    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["refund"]["status"] == "PENDING"
    assert len(calls(ridendine)) == 1


def test_deny_frees_the_amount_and_tells_the_customer(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
    admin: dict[str, Any],
    refund_flows: dict[str, str],
    smtp_sink: SmtpSink,
) -> None:
    order = make_order(directus_admin, customer=customer["id"], amount_paid_cents=4_200)
    refund = ask(api, order["id"], customer).get_json()["refund"]
    assert committed(services, order["id"]) == 4_200
    outbox.drain(services)  # the e-mails and notifications of the new request

    denied = decide(
        api, refund["id"], "deny", bearer(admin), {"comment": "The order was eaten <b>whole</b>."}
    )
    again = decide(api, refund["id"], "deny", bearer(admin), {"comment": "twice"})
    approve_after = decide(api, refund["id"], "approve", bearer(admin))

    assert denied.status_code == 200, denied.get_data(as_text=True)
    body = denied.get_json()["refund"]
    assert (body["status"], body["decided_by"]) == ("DENIED", admin["id"])
    assert body["decision_comment"] == "The order was eaten <b>whole</b>."
    assert body["history"][-1]["detail"].startswith(f"denied by admin {admin['email']}")
    assert_problem(again, 409, "refund_not_awaiting_approval")
    assert_problem(approve_after, 409, "refund_not_awaiting_approval")
    assert calls(ridendine) == []
    assert committed(services, order["id"]) == 0  # the amount is free again
    # The customer sees the decision with its comment.
    shown = api.get(f"/ridendine/refunds/{refund['id']}", headers=bearer(customer))
    assert shown.get_json()["refund"]["decision_comment"] == "The order was eaten <b>whole</b>."

    # The e-mails and notifications, through the "refund result" Flow and Directus.
    outbox.drain(services)
    smtp_sink.wait_for(f"order {order['id']} was not approved", 1)
    customer_mails = smtp_sink.to(customer["email"])
    subjects = sorted(m.subject for m in customer_mails)
    assert subjects == [
        f"Your refund request for order {order['id']} is being reviewed",
        f"Your refund request for order {order['id']} was not approved",
    ]
    (denial,) = [m for m in customer_mails if "not approved" in m.subject]
    assert "The order was eaten &lt;b&gt;whole&lt;/b&gt;." in denial.text()
    (to_admins,) = [m for m in smtp_sink.to("admins@example.com") if order["id"] in m.subject]
    assert "waits for approval" in to_admins.subject
    assert f"/admin/content/refunds/{refund['id']}" in to_admins.text()
    notes = directus_admin.list_system(
        "notifications",
        filter={"item": {"_eq": refund["id"]}},
        fields=["recipient", "collection", "subject"],
    )
    assert {"recipient": admin["id"], "collection": "refunds"}.items() <= {
        **next(n for n in notes if n["recipient"] == admin["id"])
    }.items()
    assert all("waits for approval" in n["subject"] for n in notes)
    # The denial was the last word: the order can be refunded again.
    assert ask(api, order["id"], customer).get_json()["refund"]["amount_cents"] == 4_200


@pytest.mark.parametrize(
    "who",
    ["customer", "service", "service-for-customer", "other-admin-token-as-user"],
)
def test_only_admins_approve_or_deny(
    who: str,
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
    admin: dict[str, Any],
) -> None:
    order = make_order(directus_admin, customer=customer["id"])
    refund = ask(api, order["id"], customer).get_json()["refund"]
    headers = {
        "customer": bearer(customer),
        "service": SERVICE,
        "service-for-customer": acting_for(customer),
        # A user token naming someone else in X-Directus-User-Id is refused (auth rule).
        "other-admin-token-as-user": {**bearer(customer), "X-Directus-User-Id": admin["id"]},
    }[who]

    for verb in ("approve", "deny"):
        assert_problem(decide(api, refund["id"], verb, headers, {}), 403, "forbidden")
    assert_problem(decide(api, "rf_missing", "approve", headers), 403, "forbidden")
    assert calls(ridendine) == []
    with services.store.session() as session:
        stored = session.get(Refund, refund["id"])
        assert stored is not None
        assert (stored.status, stored.decided_by) == ("REQUESTED", None)


def test_no_token_is_401(api: FlaskClient) -> None:
    assert_problem(api.post("/ridendine/refunds/rf_1/approve"), 401, "not_authenticated")
    assert_problem(api.post("/ridendine/refunds/rf_1/deny"), 401, "not_authenticated")


def test_only_a_requested_refund_can_be_decided(
    api: FlaskClient,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    admin: dict[str, Any],
) -> None:
    order = make_order(directus_admin)
    pending = api.post(
        "/ridendine/refunds",
        json={"order_id": order["id"], "reason": "chef_rejected", "amount_cents": 100},
        headers=bearer(admin),
    ).get_json()["refund"]

    for verb in ("approve", "deny"):
        problem = assert_problem(
            decide(api, pending["id"], verb, bearer(admin)), 409, "refund_not_awaiting_approval"
        )
        assert problem["refund"]["status"] == "PENDING"
    assert_problem(decide(api, "rf_nope", "approve", bearer(admin)), 404, "refund_not_found")
    assert len(calls(ridendine)) == 1


@pytest.mark.parametrize(
    ("body", "content_type", "status", "field"),
    [
        ({"comment": "x" * 501}, "application/json", 400, "comment"),
        ({"comment": 5}, "application/json", 400, "comment"),
        ({"why": "no"}, "application/json", 400, "why"),
        ([], "application/json", 400, "_schema"),
        ("comment=no", "application/x-www-form-urlencoded", 415, None),
        ("{not json", "application/json", 400, "_schema"),
    ],
)
def test_a_bad_decision_body_is_refused_and_changes_nothing(
    body: Any,
    content_type: str,
    status: int,
    field: str | None,
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
    admin: dict[str, Any],
) -> None:
    order = make_order(directus_admin, customer=customer["id"])
    refund = ask(api, order["id"], customer).get_json()["refund"]
    data = body if isinstance(body, str) else json.dumps(body)

    answer = api.post(
        f"/ridendine/refunds/{refund['id']}/deny",
        data=data,
        headers={**bearer(admin), "Content-Type": content_type},
    )

    code = "validation_error" if status == 400 else "unsupported_media_type"
    problem = assert_problem(answer, status, code)
    if field is not None:
        assert field in problem["errors"]
    with services.store.session() as session:
        stored = session.get(Refund, refund["id"])
        assert stored is not None and stored.status == "REQUESTED"


# -- reminders ----------------------------------------------------------------------------------


def test_a_request_waiting_too_long_is_reminded_once(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
    admin: dict[str, Any],
    refund_flows: dict[str, str],
    smtp_sink: SmtpSink,
) -> None:
    order = make_order(directus_admin, customer=customer["id"])
    old = ask(api, order["id"], customer, amount_cents=100).get_json()["refund"]
    fresh = ask(api, order["id"], customer, amount_cents=100).get_json()["refund"]
    decided = ask(api, order["id"], customer, amount_cents=100).get_json()["refund"]
    decide(api, decided["id"], "deny", bearer(admin))
    limit = services.settings.approval_remind_seconds
    with services.store.session() as session:
        session.execute(
            update(Refund)
            .where(Refund.id.in_([old["id"], decided["id"]]))
            .values(created_at=utcnow() - timedelta(seconds=limit + 5))
        )

    first = approval.enqueue_reminders(services)
    second = approval.enqueue_reminders(services)

    assert (first, second) == (1, 0)
    assert ("notify_approval", f"approval:{old['id']}:reminder:mail") in jobs(services, old["id"])
    assert ("notify_approval", f"approval:{old['id']}:reminder:app") in jobs(services, old["id"])
    assert not [k for _, k in jobs(services, fresh["id"]) if "reminder" in k]
    assert not [k for _, k in jobs(services, decided["id"]) if "reminder" in k]

    # The reminder reaches the admins: an e-mail through the Flow, a notification each.
    outbox.drain(services)
    (reminder,) = smtp_sink.wait_for(f"Order {order['id']}: refund of 1.00 EUR still waits", 1)
    assert reminder.rcpt_to == ("admins@example.com",)
    assert old["id"] in reminder.text()
    notes = directus_admin.list_system(
        "notifications",
        filter={"_and": [{"item": {"_eq": old["id"]}}, {"recipient": {"_eq": admin["id"]}}]},
        fields=["subject"],
    )
    assert any("is still waiting for approval" in n["subject"] for n in notes), notes
