"""POST /ridendine/refunds and reading refunds back, against the real Directus (contract
sections 1, 2 and 6). RideNDine is an outside party: its HTTP is mocked with `responses`, and
Directus's requests pass through to the real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import requests
import responses
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, select, update

from bridge import create_app
from bridge.jobs import outbox
from bridge.ledger import ledger
from bridge.refunds import intake as refund_service
from bridge.services import Services, get_services
from bridge.store.models import (
    IdempotencyRecord,
    OutboxJob,
    OutboxState,
    Refund,
    RefundStatus,
    utcnow,
)
from devstack.directus import DirectusServer
from directus_client import DirectusClient
from tests.support.helpers import (
    RIDENDINE_KEY,
    RIDENDINE_URL,
    SERVICE_TOKEN,
    count_requests,
    make_order,
    make_settings,
)
from tests.support.helpers import make_user as make_directus_user

PROBLEM = "application/problem+json"
CREATE_URL = f"{RIDENDINE_URL}/refunds/create"
SERVICE = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
OTHER_SERVICE_TOKEN = "another-service-token-0123456789"


@pytest.fixture
def bridge(cooco_directus: DirectusServer, database_url: str) -> Iterator[Flask]:
    settings = make_settings(
        cooco_directus.url,
        cooco_directus.admin_token,
        api_tokens=(SERVICE_TOKEN, OTHER_SERVICE_TOKEN),
    )
    app = create_app(
        {
            "BRIDGE_SETTINGS": settings,
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
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
    """RideNDine mocked; calls to the real Directus pass through."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        mock.add_passthru(cooco_directus.url)
        yield mock


def accept(mock: responses.RequestsMock, refund_id: str = "re_1", status: int = 200) -> None:
    mock.add(responses.POST, CREATE_URL, json={"refund_id": refund_id}, status=status)


def ridendine_calls(mock: responses.RequestsMock) -> list[Any]:
    return [call for call in mock.calls if call.request.url == CREATE_URL]


def post(api: FlaskClient, body: dict[str, Any], headers: dict[str, str] | None = None) -> Any:
    return api.post("/ridendine/refunds", json=body, headers={**SERVICE, **(headers or {})})


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = response.get_json()
    assert body["code"] == code
    assert body["status"] == status
    return body


def admin_refund(order_id: str, **fields: Any) -> dict[str, Any]:
    return {"order_id": order_id, "reason": "chef_rejected", "requested_by": "admin", **fields}


def ledger_refunds(services: Services, order_id: str) -> list[Refund]:
    with services.store.session() as session:
        return list(session.scalars(select(Refund).where(Refund.order_id == order_id)))


def submit_jobs(services: Services, refund_id: str, kind: str = "submit_refund") -> list[OutboxJob]:
    """The refund's outbox jobs of one kind (its submission by default)."""
    with services.store.session() as session:
        return list(
            session.scalars(
                select(OutboxJob).where(OutboxJob.refund_id == refund_id, OutboxJob.kind == kind)
            )
        )


def notify_jobs(services: Services, refund_id: str) -> list[str]:
    with services.store.session() as session:
        return list(
            session.scalars(
                select(OutboxJob.dedupe_key).where(
                    OutboxJob.refund_id == refund_id, OutboxJob.kind == "notify_result"
                )
            )
        )


def make_jobs_due(services: Services) -> None:
    with services.store.session() as session:
        session.execute(
            update(OutboxJob)
            .where(OutboxJob.state == OutboxState.PENDING)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


# -- amounts -----------------------------------------------------------------------------------


def test_full_refund_is_recorded_projected_and_sent_to_ridendine(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=12_345, currency="EUR")
    accept(ridendine, "re_full")

    response = post(api, admin_refund(order["id"], reason_comments="chef is ill"))

    assert response.status_code == 202, response.get_data(as_text=True)
    refund = response.get_json()["refund"]
    assert response.headers["Location"] == f"/ridendine/refunds/{refund['id']}"
    assert refund["order_id"] == order["id"]
    assert refund["ridendine_order_id"] == order["ridendine_order_id"]
    assert refund["amount_cents"] == 12_345
    assert refund["currency"] == "EUR"
    assert refund["reason"] == "chef_rejected"
    assert refund["reason_comments"] == "chef is ill"
    assert refund["requested_by"] == "admin"
    assert refund["status"] == "PENDING"
    assert refund["ridendine_refund_id"] == "re_full"
    assert refund["created_at"] and refund["updated_at"]

    (call,) = ridendine_calls(ridendine)
    assert json.loads(call.request.body) == {
        "ridendine_order_id": order["ridendine_order_id"],
        "external_order_id": order["id"],
        "amount_cents": 12_345,
        "reason": "chef_rejected",
        "requested_by": "admin",
    }
    assert call.request.headers["Authorization"] == f"Bearer {RIDENDINE_KEY}"
    assert call.request.headers["Content-Type"] == "application/json"
    assert call.request.headers["Idempotency-Key"] == refund["id"]

    item = directus_admin.get_item("refunds", refund["id"])
    assert item["status"] == "PENDING"
    assert item["amount_cents"] == 12_345
    assert item["ridendine_refund_id"] == "re_full"
    assert item["order_id"] == order["id"]
    assert [job.state for job in submit_jobs(services, refund["id"])] == ["done"]


def test_a_refund_request_costs_directus_one_read_and_one_create(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin)
    accept(ridendine, "re_once")
    counted = count_requests(services.directus)

    response = post(api, admin_refund(order["id"]))

    assert response.status_code == 202, response.get_data(as_text=True)
    refund_id = response.get_json()["refund"]["id"]
    # RideNDine is asked first, so the item is created once with its answer in it.
    assert counted == {"GET /items/orders": 1, "POST /items/refunds": 1}
    assert directus_admin.get_item("refunds", refund_id)["ridendine_refund_id"] == "re_once"
    jobs = submit_jobs(services, refund_id, kind="project_refund")
    # RideNDine's answer is projected by the request's own projection job (still leased to the
    # request when the answer is recorded): one job, done, nothing left for the worker.
    assert [job.state for job in jobs] == [OutboxState.DONE]


def test_a_refund_request_never_reads_its_refund_back_from_the_store(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    """What the request wrote it still holds (docs/performance.md): the refund and its history
    are written, then RideNDine's acceptance, without reading them again. Its statements go
    by the driver, none through SQLAlchemy's engine (`Store.transaction`)."""
    order = make_order(directus_admin)
    accept(ridendine, "re_unread")
    engine = services.store.engine
    statements: list[str] = []  # what SQLite ran, traced on its connections
    through_engine: list[str] = []

    def traced(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.set_trace_callback(lambda sql: statements.append(" ".join(sql.split())))

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        through_engine.append(statement)

    event.listen(engine, "connect", traced)
    event.listen(engine, "before_cursor_execute", seen)
    engine.dispose()  # the pool's connections are made anew, traced
    try:
        response = post(api, admin_refund(order["id"]), headers={"Idempotency-Key": "k-unread"})
    finally:
        event.remove(engine, "connect", traced)
        event.remove(engine, "before_cursor_execute", seen)
        engine.dispose()

    assert response.status_code == 202, response.get_data(as_text=True)
    assert response.get_json()["refund"]["ridendine_refund_id"] == "re_unread"
    assert through_engine == []
    reads = [statement for statement in statements if statement.startswith("SELECT")]
    assert reads, statements  # the trace saw the request's statements
    assert not [read for read in reads if "FROM refund_status_changes" in read]
    assert not [read for read in reads if read.startswith("SELECT refunds.id, refunds.order_id")]
    # RideNDine's refund_id is checked against the other refunds by the UPDATE itself.
    assert not [read for read in reads if read.startswith("SELECT refunds.id FROM refunds")]
    (accepted,) = [s for s in statements if s.startswith("UPDATE refunds SET ridendine_refund_id")]
    assert "NOT (EXISTS (SELECT * FROM refunds AS others" in accepted
    # The key looked up, then three write transactions: the refund, RideNDine's acceptance,
    # the projection done with the answer saved for the key.
    assert [s for s in statements if s in ("BEGIN IMMEDIATE", "COMMIT")] == [
        "BEGIN IMMEDIATE",
        "COMMIT",
    ] * 3
    # The key's look-up, 6 statements for the refund, 5 for the acceptance, 2 for the answer.
    assert len(statements) - 6 == 1 + 6 + 5 + 2, "\n".join(statements)


def test_a_projection_taken_by_a_worker_meanwhile_gets_ridendines_answer_projected_anyway(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    """The request's projection job, leased to it, normally projects RideNDine's answer too.
    When a worker took that job meanwhile (the request's lease ran out), the acceptance queues
    a projection of its own, which the request runs: the item still gets RideNDine's id."""
    order = make_order(directus_admin)

    def taken_by_a_worker(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        with services.store.session() as session:
            session.execute(
                update(OutboxJob)
                .where(OutboxJob.kind == "project_refund", OutboxJob.state == OutboxState.PENDING)
                .values(locked_by="worker-elsewhere")
            )
        return 200, {}, json.dumps({"refund_id": "re_lease_lost"})

    ridendine.add_callback(responses.POST, CREATE_URL, callback=taken_by_a_worker)

    response = post(api, admin_refund(order["id"]))

    assert response.status_code == 202, response.get_data(as_text=True)
    refund_id = response.get_json()["refund"]["id"]
    assert response.get_json()["refund"]["ridendine_refund_id"] == "re_lease_lost"
    item = directus_admin.get_item("refunds", refund_id)
    assert item["ridendine_refund_id"] == "re_lease_lost"
    jobs = {job.locked_by: job.state for job in submit_jobs(services, refund_id, "project_refund")}
    # The worker's job stays the worker's (it projects the same state again, harmlessly).
    assert jobs == {"worker-elsewhere": OutboxState.PENDING, None: OutboxState.DONE}


def test_a_result_recorded_while_ridendine_answers_is_kept_with_the_acceptance(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    """The acceptance is written without reading the refund back when the store still holds
    it as the request recorded it; here a result (as from a webhook) changed it meanwhile, so
    the acceptance reads it and adds to it: nothing of the result is overwritten."""
    order = make_order(directus_admin)

    def refunded_meanwhile(request: requests.PreparedRequest) -> tuple[int, dict[str, str], str]:
        with services.store.session() as session:
            refund = session.get(Refund, request.headers["Idempotency-Key"])
            assert refund is not None
            assert ledger.transition(
                refund, RefundStatus.REFUNDED, source=ledger.SOURCE_WEBHOOK, detail="result"
            )
        return 200, {}, json.dumps({"refund_id": "re_meanwhile"})

    ridendine.add_callback(responses.POST, CREATE_URL, callback=refunded_meanwhile)

    response = post(api, admin_refund(order["id"]))

    assert response.status_code == 202, response.get_data(as_text=True)
    answered = response.get_json()["refund"]
    assert answered["status"] == "REFUNDED"
    assert answered["ridendine_refund_id"] == "re_meanwhile"
    (refund,) = ledger_refunds(services, order["id"])
    assert (refund.status, refund.ridendine_refund_id) == ("REFUNDED", "re_meanwhile")
    with services.store.session() as session:
        stored = session.get(Refund, refund.id)
        assert stored is not None
        details = [change.detail for change in stored.history]
    assert details[1:] == ["result", "accepted by RideNDine (HTTP 200), refund_id re_meanwhile"]
    item = directus_admin.get_item("refunds", refund.id)
    assert (item["status"], item["ridendine_refund_id"]) == ("REFUNDED", "re_meanwhile")


def test_a_ridendine_refund_id_already_on_another_refund_flags_the_new_one_for_review(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    first_order, second_order = make_order(directus_admin), make_order(directus_admin)
    accept(ridendine, "re_twice")
    first = post(api, admin_refund(first_order["id"])).get_json()["refund"]

    response = post(api, admin_refund(second_order["id"]))

    assert response.status_code == 202, response.get_data(as_text=True)
    second = response.get_json()["refund"]
    assert first["ridendine_refund_id"] == "re_twice"
    assert second["ridendine_refund_id"] is None
    assert second["needs_review"] is True
    assert second["review_reason"] == (
        f"RideNDine answered with refund_id re_twice, already on refund {first['id']}"
    )
    with services.store.session() as session:
        refund = session.get(Refund, second["id"])
        assert refund is not None
        details = [change.detail for change in refund.history]
    assert details[-2:] == [
        f"needs review: {second['review_reason']}",
        "accepted by RideNDine (HTTP 200)",
    ]


def test_partial_refund_then_the_default_is_what_remains(
    api: FlaskClient, ridendine: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin, amount_paid_cents=10_000)
    accept(ridendine)

    first = post(api, admin_refund(order["id"], amount_cents=2_500))
    second = post(api, admin_refund(order["id"]))

    assert first.status_code == 202 and second.status_code == 202
    assert first.get_json()["refund"]["amount_cents"] == 2_500
    assert second.get_json()["refund"]["amount_cents"] == 7_500
    amounts = [json.loads(call.request.body)["amount_cents"] for call in ridendine_calls(ridendine)]
    assert amounts == [2_500, 7_500]


def test_percent_refund_is_a_share_of_what_was_paid_rounded_down(
    api: FlaskClient, ridendine: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin, amount_paid_cents=10_001)
    accept(ridendine)

    response = post(api, admin_refund(order["id"], percent=25))

    assert response.status_code == 202
    assert response.get_json()["refund"]["amount_cents"] == 2_500  # 2500.25 rounded down


def test_items_give_the_amount_when_it_is_absent(
    api: FlaskClient, ridendine: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin, amount_paid_cents=10_000)
    accept(ridendine)
    items = [
        {"external_id": "dish-1", "name": "Curry", "quantity": 2, "amount_cents": 1_800},
        {"external_id": 77, "name": "Naan", "quantity": 1, "amount_cents": 350},
    ]

    response = post(api, admin_refund(order["id"], items=items))

    assert response.status_code == 202
    refund = response.get_json()["refund"]
    assert refund["amount_cents"] == 2_150
    assert refund["items"][1]["external_id"] == "77"


def test_several_partials_up_to_the_total_then_409_with_refundable_cents(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=10_000)
    accept(ridendine)

    for amount in (3_000, 3_000, 3_000):
        assert post(api, admin_refund(order["id"], amount_cents=amount)).status_code == 202
    too_much = post(api, admin_refund(order["id"], amount_cents=1_001))
    assert assert_problem(too_much, 409, "amount_exceeds_refundable")["refundable_cents"] == 1_000

    assert post(api, admin_refund(order["id"], amount_cents=1_000)).status_code == 202
    for body in (admin_refund(order["id"], amount_cents=1), admin_refund(order["id"])):
        problem = assert_problem(post(api, body), 409, "amount_exceeds_refundable")
        assert problem["refundable_cents"] == 0
    assert sum(refund.amount_cents for refund in ledger_refunds(services, order["id"])) == 10_000
    assert len(ridendine_calls(ridendine)) == 4


def test_more_than_was_paid_at_once_is_409(
    api: FlaskClient, ridendine: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin, amount_paid_cents=5_000)

    problem = assert_problem(
        post(api, admin_refund(order["id"], amount_cents=5_001)), 409, "amount_exceeds_refundable"
    )

    assert problem["refundable_cents"] == 5_000
    assert ridendine_calls(ridendine) == []


# -- RideNDine's answers -----------------------------------------------------------------------


def test_ridendine_rejection_is_422_and_a_failed_refund_that_does_not_count(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=4_000)
    ridendine.add(
        responses.POST, CREATE_URL, status=400, json={"error": {"message": "order not captured"}}
    )

    problem = assert_problem(post(api, admin_refund(order["id"])), 422, "ridendine_rejected")

    assert "order not captured" in problem["detail"]
    refund_id = problem["refund"]["id"]
    assert problem["refund"]["status"] == "FAILED"
    shown = api.get(f"/ridendine/refunds/{refund_id}", headers=SERVICE).get_json()["refund"]
    assert shown["status"] == "FAILED"
    assert shown["failure_reason"] == "order not captured"
    assert [(h["from_status"], h["to_status"]) for h in shown["history"]] == [
        (None, "PENDING"),
        ("PENDING", "FAILED"),
    ]
    assert directus_admin.get_item("refunds", refund_id)["status"] == "FAILED"
    assert [job.state for job in submit_jobs(services, refund_id)] == ["done"]
    # Contract section 4: a refund that reached FAILED is told, once.
    assert notify_jobs(services, refund_id) == [f"notify:{refund_id}:FAILED"]

    # A FAILED refund takes nothing from what is refundable.
    ridendine.replace(responses.POST, CREATE_URL, json={"refund_id": "re_2"})
    again = post(api, admin_refund(order["id"]))
    assert again.status_code == 202
    assert again.get_json()["refund"]["amount_cents"] == 4_000


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 503, "json": {"message": "maintenance"}},
        {"body": requests.exceptions.ReadTimeout("read timed out")},
        {"body": requests.exceptions.ConnectionError("connection refused")},
        {"status": 409, "json": {"message": "a request with this key is in progress"}},
    ],
    ids=["503", "timeout", "connection-error", "409"],
)
def test_no_definite_answer_is_202_and_a_durable_retry_with_the_same_key(
    failure: dict[str, Any],
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=6_000)
    ridendine.add(responses.POST, CREATE_URL, **failure)

    response = post(api, admin_refund(order["id"], amount_cents=2_000))

    assert response.status_code == 202
    refund = response.get_json()["refund"]
    assert refund["status"] == "PENDING"
    assert refund["ridendine_refund_id"] is None
    (job,) = submit_jobs(services, refund["id"])
    assert job.state == "pending"
    assert job.attempts == 1
    assert job.locked_by is None
    assert job.next_attempt_at > utcnow()
    assert job.last_error

    # Later the worker's function runs the retry: same key, and RideNDine's id is kept.
    ridendine.replace(responses.POST, CREATE_URL, json={"refund_id": "re_later"})
    make_jobs_due(services)
    assert outbox.drain(services) >= 1
    calls = ridendine_calls(ridendine)
    assert len(calls) == 2
    assert {call.request.headers["Idempotency-Key"] for call in calls} == {refund["id"]}
    assert calls[0].request.body == calls[1].request.body
    (job,) = submit_jobs(services, refund["id"])
    assert job.state == "done"
    shown = api.get(f"/ridendine/refunds/{refund['id']}", headers=SERVICE).get_json()["refund"]
    assert shown["ridendine_refund_id"] == "re_later"
    assert shown["status"] == "PENDING"
    assert directus_admin.get_item("refunds", refund["id"])["ridendine_refund_id"] == "re_later"


def test_retry_after_from_ridendine_sets_the_next_attempt(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin)
    ridendine.add(responses.POST, CREATE_URL, status=429, headers={"Retry-After": "600"})

    response = post(api, admin_refund(order["id"]))

    assert response.status_code == 202
    (job,) = submit_jobs(services, response.get_json()["refund"]["id"])
    wait = (job.next_attempt_at - utcnow()).total_seconds()
    assert 590 < wait <= 600


def test_a_submission_that_never_gets_an_answer_ends_failed_for_review(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin, amount_paid_cents=3_000)
    ridendine.add(responses.POST, CREATE_URL, status=502)
    refund_id = post(api, admin_refund(order["id"])).get_json()["refund"]["id"]

    # The last allowed attempt fails too.
    with services.store.session() as session:
        session.execute(
            update(OutboxJob)
            .where(OutboxJob.refund_id == refund_id, OutboxJob.kind == "submit_refund")
            .values(attempts=outbox.MAX_ATTEMPTS - 1, next_attempt_at=utcnow())
        )
    outbox.drain(services, limit=5)

    (job,) = submit_jobs(services, refund_id)
    assert job.state == "dead"
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        assert refund.status == "FAILED"
        assert refund.needs_review
        assert "never gave a definite answer" in (refund.review_reason or "")
        alerts = session.scalars(
            select(OutboxJob).where(
                OutboxJob.refund_id == refund_id, OutboxJob.kind == "alert_admins"
            )
        ).all()
    assert len(alerts) == 1
    assert notify_jobs(services, refund_id) == [f"notify:{refund_id}:FAILED"]
    # The money it held is refundable again (a person checks RideNDine first).
    assert len(ridendine_calls(ridendine)) == 2  # the inline attempt and the last one


def test_directus_down_after_the_order_check_leaves_the_projection_queued(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    cooco_directus: DirectusServer,
) -> None:
    order = make_order(directus_admin)
    accept(ridendine, "re_hiccup")

    def stop_directus_after_order_read(response: requests.Response, **_: Any) -> None:
        if "/items/orders" in response.url:
            cooco_directus.stop()

    services.directus.session.hooks["response"].append(stop_directus_after_order_read)
    try:
        response = post(api, admin_refund(order["id"]))
    finally:
        services.directus.session.hooks["response"].remove(stop_directus_after_order_read)
        cooco_directus.start()

    assert response.status_code == 202
    refund_id = response.get_json()["refund"]["id"]
    assert len(ridendine_calls(ridendine)) == 1
    with services.store.session() as session:
        projections = session.scalars(
            select(OutboxJob).where(
                OutboxJob.refund_id == refund_id, OutboxJob.kind == "project_refund"
            )
        ).all()
        assert projections and all(job.state == "pending" for job in projections)

    make_jobs_due(services)
    outbox.drain(services)
    item = directus_admin.get_item("refunds", refund_id)
    assert item["ridendine_refund_id"] == "re_hiccup"


# -- Idempotency-Key ---------------------------------------------------------------------------


def test_same_key_and_body_replays_the_first_answer_and_sends_once(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin)
    accept(ridendine, "re_once")
    body = admin_refund(order["id"], amount_cents=1_000)

    first = post(api, body, {"Idempotency-Key": "key-1"})
    second = post(api, dict(reversed(list(body.items()))), {"Idempotency-Key": "key-1"})

    assert first.status_code == second.status_code == 202
    assert second.get_json() == first.get_json()
    assert second.headers["Location"] == first.headers["Location"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert len(ridendine_calls(ridendine)) == 1
    assert len(ledger_refunds(services, order["id"])) == 1

    other = post(api, {**body, "amount_cents": 1_001}, {"Idempotency-Key": "key-1"})
    assert_problem(other, 409, "idempotency_key_reused")
    assert len(ridendine_calls(ridendine)) == 1
    assert len(ledger_refunds(services, order["id"])) == 1


def test_keys_are_scoped_per_caller(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin)
    accept(ridendine)
    body = admin_refund(order["id"], amount_cents=1_000)

    first = post(api, body, {"Idempotency-Key": "shared"})
    second = post(
        api,
        body,
        {"Idempotency-Key": "shared", "Authorization": f"Bearer {OTHER_SERVICE_TOKEN}"},
    )

    assert first.status_code == second.status_code == 202
    assert first.get_json()["refund"]["id"] != second.get_json()["refund"]["id"]
    assert len(ledger_refunds(services, order["id"])) == 2


def test_a_rejection_is_replayed_too(
    api: FlaskClient, ridendine: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin)
    ridendine.add(responses.POST, CREATE_URL, status=422, json={"message": "too late"})
    body = admin_refund(order["id"])

    first = assert_problem(post(api, body, {"Idempotency-Key": "k-rej"}), 422, "ridendine_rejected")
    again = post(api, body, {"Idempotency-Key": "k-rej"})

    replay = assert_problem(again, 422, "ridendine_rejected")
    assert replay["refund"] == first["refund"]
    assert replay["detail"] == first["detail"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len(ridendine_calls(ridendine)) == 1


def test_a_key_still_in_flight_waits_then_409(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    order = make_order(directus_admin)
    accept(ridendine)
    body = admin_refund(order["id"])
    caller_scope = _service_scope(api)
    with services.store.session() as session:
        session.add(
            IdempotencyRecord(
                caller=caller_scope,
                key="in-flight",
                request_hash=refund_service._body_hash(body),
                refund_id=None,
            )
        )
    monkeypatch.setattr(refund_service, "IDEMPOTENCY_WAIT_SECONDS", 0.3)

    response = post(api, body, {"Idempotency-Key": "in-flight"})

    assert_problem(response, 409, "idempotency_key_in_progress")
    assert ridendine_calls(ridendine) == []
    assert ledger_refunds(services, order["id"]) == []


def test_a_key_recorded_after_the_look_up_replays_the_first_answer(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As if the first request recorded the key just after the second one looked it up: the
    # second finds it when it records its own (the key's primary key), before the amount
    # check, which the first request's refund of everything would fail.
    order = make_order(directus_admin)
    accept(ridendine)
    body = admin_refund(order["id"])
    first = post(api, body, {"Idempotency-Key": "raced"})
    assert first.status_code == 202
    look_up = refund_service._earlier_answer
    look_ups: list[str] = []

    def missed_once(*args: Any, **kwargs: Any) -> Any:
        look_ups.append("looked")
        return None if len(look_ups) == 1 else look_up(*args, **kwargs)

    monkeypatch.setattr(refund_service, "_earlier_answer", missed_once)

    again = post(api, body, {"Idempotency-Key": "raced"})

    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.get_json() == first.get_json()
    assert look_ups == ["looked", "looked"]
    assert len(ridendine_calls(ridendine)) == 1
    assert len(ledger_refunds(services, order["id"])) == 1


def test_a_key_whose_first_request_died_answers_from_the_ledger(
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin)
    accept(ridendine)
    body = admin_refund(order["id"])
    first = post(api, body, {"Idempotency-Key": "died"}).get_json()
    # As if the process had died after commit, before saving the answer.
    with services.store.session() as session:
        session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.key == "died")
            .values(response_status=None, created_at=utcnow() - timedelta(minutes=10))
        )

    again = post(api, body, {"Idempotency-Key": "died"})

    assert again.status_code == 202
    assert again.get_json()["refund"]["id"] == first["refund"]["id"]
    assert len(ridendine_calls(ridendine)) == 1


def _service_scope(api: FlaskClient) -> str:
    from bridge.web.auth import authenticate

    with api.application.app_context():
        return authenticate(get_services(), f"Bearer {SERVICE_TOKEN}").scope


# -- who may refund what -------------------------------------------------------------------------


@pytest.fixture
def customer(cooco_directus: DirectusServer, directus_admin: DirectusClient) -> dict[str, Any]:
    return make_directus_user(directus_admin)


def as_user(user: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {user['token']}"}


def test_customer_refunds_their_own_order_with_customer_cancel(
    api: FlaskClient,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
) -> None:
    # PREPARING: inside the refund policy, so the customer's request goes at once
    # (tests/test_refund_policy.py has the rest).
    order = make_order(
        directus_admin, customer=customer["id"], amount_paid_cents=2_000, status="PREPARING"
    )
    accept(ridendine)

    response = api.post(
        "/ridendine/refunds",
        json={"order_id": order["id"], "reason": "customer_cancel"},
        headers=as_user(customer),
    )

    assert response.status_code == 202, response.get_data(as_text=True)
    refund = response.get_json()["refund"]
    assert refund["requested_by"] == "customer"
    assert refund["requested_by_user"] == customer["id"]
    assert json.loads(ridendine_calls(ridendine)[0].request.body)["requested_by"] == "customer"
    # The customer reads it back, with its history.
    shown = api.get(f"/ridendine/refunds/{refund['id']}", headers=as_user(customer))
    assert shown.status_code == 200
    assert shown.get_json()["refund"]["history"][0]["to_status"] == "PENDING"
    listed = api.get(f"/ridendine/refunds?order_id={order['id']}", headers=as_user(customer))
    assert [r["id"] for r in listed.get_json()["refunds"]] == [refund["id"]]


@pytest.mark.parametrize(
    "body_extra",
    [{"reason": "chef_rejected"}, {"reason": "customer_cancel", "requested_by": "admin"}],
    ids=["chef_rejected", "claims-admin"],
)
def test_customer_may_not_use_other_reasons_or_claim_to_be_admin(
    body_extra: dict[str, Any],
    api: FlaskClient,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
) -> None:
    order = make_order(directus_admin, customer=customer["id"])

    response = api.post(
        "/ridendine/refunds",
        json={"order_id": order["id"], **body_extra},
        headers=as_user(customer),
    )

    assert_problem(response, 403, "forbidden")
    assert ridendine_calls(ridendine) == []


def test_customer_may_not_refund_or_see_another_customers_order(
    api: FlaskClient,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
) -> None:
    owner = make_directus_user(directus_admin)
    order = make_order(directus_admin, customer=owner["id"])
    accept(ridendine)
    theirs = post(api, admin_refund(order["id"], amount_cents=100)).get_json()["refund"]

    response = api.post(
        "/ridendine/refunds",
        json={"order_id": order["id"], "reason": "customer_cancel"},
        headers=as_user(customer),
    )

    assert_problem(response, 403, "forbidden")
    assert len(ridendine_calls(ridendine)) == 1
    hidden = api.get(f"/ridendine/refunds/{theirs['id']}", headers=as_user(customer))
    assert_problem(hidden, 404, "refund_not_found")
    listed = api.get(f"/ridendine/refunds?order_id={order['id']}", headers=as_user(customer))
    assert_problem(listed, 404, "order_not_found")
    # The owner sees it.
    assert api.get(f"/ridendine/refunds/{theirs['id']}", headers=as_user(owner)).status_code == 200


def test_admin_user_refunds_any_order_with_any_reason(
    api: FlaskClient, ridendine: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    admin = make_directus_user(directus_admin, admin=True)
    order = make_order(directus_admin, customer=make_directus_user(directus_admin)["id"])
    accept(ridendine)

    response = api.post(
        "/ridendine/refunds",
        json={"order_id": order["id"], "reason": "chef_rejected", "amount_cents": 500},
        headers=as_user(admin),
    )

    assert response.status_code == 202
    refund = response.get_json()["refund"]
    assert refund["requested_by"] == "admin"
    assert refund["requested_by_user"] == admin["id"]


def test_extension_acts_for_the_signed_in_user(
    api: FlaskClient,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
) -> None:
    """Service token + X-Directus-User-Id: the user's rules apply, requested_by is derived."""
    mine = make_order(directus_admin, customer=customer["id"])
    other = make_order(directus_admin)
    accept(ridendine)
    acting = {"X-Directus-User-Id": customer["id"]}

    ok = post(api, {"order_id": mine["id"], "reason": "customer_cancel"}, acting)
    refused = post(api, {"order_id": other["id"], "reason": "customer_cancel"}, acting)
    wrong_reason = post(api, {"order_id": mine["id"], "reason": "chef_rejected"}, acting)

    assert ok.status_code == 202
    assert ok.get_json()["refund"]["requested_by"] == "customer"
    assert ok.get_json()["refund"]["requested_by_user"] == customer["id"]
    assert_problem(refused, 403, "forbidden")
    assert_problem(wrong_reason, 403, "forbidden")


def test_service_caller_names_requested_by(
    api: FlaskClient, ridendine: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin)
    accept(ridendine)

    missing = post(api, {"order_id": order["id"], "reason": "chef_rejected"})
    given = post(
        api,
        {
            "order_id": order["id"],
            "reason": "customer_cancel",
            "requested_by": "customer",
            "requested_by_user": "customer@example.com",
            "amount_cents": 100,
        },
    )

    assert assert_problem(missing, 400, "validation_error")["errors"]["requested_by"]
    assert given.status_code == 202
    assert given.get_json()["refund"]["requested_by_user"] == "customer@example.com"


# -- the order ------------------------------------------------------------------------------------


def test_missing_order_is_404(api: FlaskClient, ridendine: responses.RequestsMock) -> None:
    response = post(api, admin_refund("no-such-order-anywhere"))
    assert_problem(response, 404, "order_not_found")
    assert ridendine_calls(ridendine) == []


@pytest.mark.parametrize(
    "order_values",
    [
        {"payment_status": "UNPAID"},
        {"payment_status": "REFUNDED"},
        {"ridendine_order_id": None},
        {"amount_paid_cents": 0},
    ],
    ids=["unpaid", "fully-refunded", "no-ridendine-order-id", "nothing-paid"],
)
def test_order_that_cannot_be_refunded_is_409(
    order_values: dict[str, Any],
    api: FlaskClient,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
) -> None:
    order = make_order(directus_admin, **order_values)

    response = post(api, admin_refund(order["id"]))

    assert_problem(response, 409, "order_not_refundable")
    assert ridendine_calls(ridendine) == []


def test_partially_refunded_order_can_be_refunded_further(
    api: FlaskClient, ridendine: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin, payment_status="PARTIALLY_REFUNDED")
    accept(ridendine)
    assert post(api, admin_refund(order["id"], amount_cents=100)).status_code == 202


def test_integer_order_id_is_taken_as_its_string(
    api: FlaskClient, ridendine: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    numeric = str(900_000_000 + int(utcnow().timestamp() * 1000) % 99_999_999)
    make_order(directus_admin, order_id=numeric)
    accept(ridendine)

    response = post(api, admin_refund(int(numeric), amount_cents=100))

    assert response.status_code == 202
    assert response.get_json()["refund"]["order_id"] == numeric


@pytest.mark.parametrize(
    "order_id",
    [
        "a/b",
        "../users/me",
        "..",
        ".",
        "%2F..%2Fusers",
        "ord%2F..%2F..%2Fusers%2Fme",
        "x" * 255,
        "x" * 10_240,
    ],
    ids=["slash", "dot-dot-path", "dot-dot", "dot", "encoded-slash", "encoded-path", "255", "10kb"],
)
def test_hostile_order_ids_never_reach_another_directus_route(
    order_id: str,
    api: FlaskClient,
    services: Services,
    ridendine: responses.RequestsMock,
) -> None:
    seen: list[str] = []

    def record(response: requests.Response, **_: Any) -> None:
        seen.append(response.request.path_url)

    services.directus.session.hooks["response"].append(record)
    try:
        response = post(api, admin_refund(order_id))
    finally:
        services.directus.session.hooks["response"].remove(record)

    assert response.status_code in (400, 404), response.get_data(as_text=True)
    assert response.get_json()["code"] in ("validation_error", "order_not_found")
    assert all(path.startswith("/items/orders?") for path in seen), seen
    assert ridendine_calls(ridendine) == []


# -- reading refunds ------------------------------------------------------------------------------


def test_list_is_newest_first_and_get_has_history(
    api: FlaskClient, ridendine: responses.RequestsMock, directus_admin: DirectusClient
) -> None:
    order = make_order(directus_admin)
    accept(ridendine, "re_a")
    ids = [
        post(api, admin_refund(order["id"], amount_cents=amount)).get_json()["refund"]["id"]
        for amount in (100, 200, 300)
    ]

    listed = api.get(f"/ridendine/refunds?order_id={order['id']}", headers=SERVICE)
    shown = api.get(f"/ridendine/refunds/{ids[0]}", headers=SERVICE)

    assert listed.status_code == 200
    assert [r["id"] for r in listed.get_json()["refunds"]] == list(reversed(ids))
    history = shown.get_json()["refund"]["history"]
    assert history[0]["to_status"] == "PENDING"
    assert "accepted by RideNDine" in history[-1]["detail"]
    missing = api.get("/ridendine/refunds/rf_missing", headers=SERVICE)
    assert_problem(missing, 404, "refund_not_found")
    assert_problem(api.get("/ridendine/refunds", headers=SERVICE), 400, "validation_error")
    assert api.get("/ridendine/refunds?order_id=none-yet", headers=SERVICE).get_json() == {
        "order_id": "none-yet",
        "refunds": [],
    }


def test_a_token_nobody_knows_is_401(api: FlaskClient, ridendine: responses.RequestsMock) -> None:
    response = api.post(
        "/ridendine/refunds",
        json=admin_refund("any-order"),
        headers={"Authorization": "Bearer not-a-service-or-directus-token"},
    )
    assert_problem(response, 401, "not_authenticated")
    assert ridendine_calls(ridendine) == []


def test_no_token_or_key_is_logged(
    api: FlaskClient,
    ridendine: responses.RequestsMock,
    directus_admin: DirectusClient,
    customer: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    order = make_order(directus_admin, customer=customer["id"], status="PREPARING")
    ridendine.add(responses.POST, CREATE_URL, status=503)

    with caplog.at_level("DEBUG"):
        api.post(
            "/ridendine/refunds",
            json={"order_id": order["id"], "reason": "customer_cancel"},
            headers=as_user(customer),
        )
        post(api, admin_refund(order["id"]))

    assert "RideNDine gave no definite answer" in caplog.text  # the logs were captured
    for secret in (customer["token"], SERVICE_TOKEN, RIDENDINE_KEY, directus_admin._token or ""):
        assert secret not in caplog.text
