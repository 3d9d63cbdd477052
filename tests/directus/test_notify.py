"""Notifications (contract section 4): the "refund result" Flow provisioned by `flows sync`,
triggered once per result, retried when the trigger fails or the Flow refuses, and admin
alerts through the same Flow."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask

from bridge import create_app
from bridge.directus.alerts import enqueue_admin_alert
from bridge.ledger.money import format_amount
from bridge.services import Services
from bridge.store.models import OutboxState, Refund
from bridge.webhooks.apply import apply_result
from devstack.directus import DirectusServer
from devstack.net import wait_until
from devstack.smtp import SmtpSink
from directus_client import DirectusClient, ForbiddenError
from tests.support.helpers import make_order, make_settings, make_user, unique_id
from tests.support.webhook_helpers import (
    drain,
    jobs,
    make_due,
    make_pending_refund,
    sync_result_flow,
    wait_for_jobs_done,
)

QUIET_SECONDS = 1.5


@pytest.mark.parametrize(
    ("cents", "currency", "text"),
    [
        (5000, "EUR", "50.00 EUR"),
        (5, "eur", "0.05 EUR"),
        (123456789, "USD", "1234567.89 USD"),
        (500, "JPY", "500 JPY"),
        (1234, "KWD", "1.234 KWD"),
        (-250, "EUR", "-2.50 EUR"),
    ],
)
def test_amounts_are_shown_in_the_currency_s_minor_units(
    cents: int, currency: str, text: str
) -> None:
    assert format_amount(cents, currency) == text


def make_app(directus: DirectusServer, database_url: str, **overrides: Any) -> Flask:
    settings = make_settings(directus.url, directus.admin_token, **overrides)
    return create_app(
        {"BRIDGE_SETTINGS": settings, "DATABASE_URL": database_url, "AUTO_MIGRATE": True}
    )


@pytest.fixture
def services(
    cooco_directus: DirectusServer, directus_admin: DirectusClient, database_url: str
) -> Iterator[Services]:
    sync_result_flow(directus_admin)
    services: Services = make_app(cooco_directus, database_url).extensions["bridge.services"]
    yield services
    services.directus.close()


def refunded(services: Services, directus_admin: DirectusClient, **order: Any) -> dict[str, Any]:
    customer = make_user(directus_admin)
    made = make_order(directus_admin, customer=customer["id"], **order)
    refund_id = make_pending_refund(services, made)
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        apply_result(
            session, refund, "REFUNDED", amount_cents=refund.amount_cents, source="webhook"
        )
    return {"order": made, "refund_id": refund_id, "customer": customer}


def notify_job(services: Services) -> Any:
    [job] = jobs(services, "notify_result")
    return job


def settle(sink: SmtpSink, needle: str, expected: int) -> list[Any]:
    if expected:
        sink.wait_for(needle, expected, timeout=30)
    time.sleep(QUIET_SECONDS)
    found = sink.matching(needle)
    assert len(found) == expected, [(m.rcpt_to, m.subject) for m in found]
    return found


def test_a_failed_trigger_is_retried_until_the_flow_answers(
    services: Services, directus_admin: DirectusClient, smtp_sink: SmtpSink
) -> None:
    made = refunded(services, directus_admin)
    # A stale Flow id (the Flow was deleted and synced again): the trigger fails.
    services.extras["flow_id:refund-result"] = "00000000-0000-4000-8000-000000000000"
    drain(services)
    job = notify_job(services)
    assert job.state == OutboxState.PENDING
    assert job.attempts == 1
    assert "could not be triggered" in (job.last_error or "")
    assert "flow_id:refund-result" not in services.extras  # looked up again next time
    settle(smtp_sink, made["order"]["id"], 0)

    make_due(services)
    drain(services)
    assert notify_job(services).state == OutboxState.DONE
    mails = settle(smtp_sink, made["order"]["id"], 2)  # the customer and the admins
    assert sorted(m.rcpt_to for m in mails) == sorted(
        [(made["customer"]["email"],), ("admins@example.com",)]
    )


def test_the_flow_refusing_the_secret_is_a_retry_not_a_success(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    database_url: str,
    smtp_sink: SmtpSink,
) -> None:
    sync_result_flow(directus_admin)
    app = make_app(cooco_directus, database_url, flow_secret="not-the-flow-secret-0123456789")
    services: Services = app.extensions["bridge.services"]
    made = refunded(services, directus_admin)
    drain(services)
    job = notify_job(services)
    assert job.state == OutboxState.PENDING
    assert "refused" in (job.last_error or "")
    assert "not-the-flow-secret" not in (job.last_error or "")
    settle(smtp_sink, made["order"]["id"], 0)


def test_without_a_flow_secret_nothing_is_sent_and_the_job_waits(
    cooco_directus: DirectusServer, directus_admin: DirectusClient, database_url: str
) -> None:
    app = make_app(cooco_directus, database_url, flow_secret=None)
    services: Services = app.extensions["bridge.services"]
    refunded(services, directus_admin)
    drain(services)
    job = notify_job(services)
    assert job.state == OutboxState.PENDING
    assert "BRIDGE_FLOW_SECRET" in (job.last_error or "")


def test_admin_alerts_go_to_the_configured_admins(services: Services, smtp_sink: SmtpSink) -> None:
    subject = f"alert {unique_id('subject')}"
    with services.store.session() as session:
        enqueue_admin_alert(session, dedupe_key=subject, subject=subject, message="line one")
        enqueue_admin_alert(session, dedupe_key=subject, subject=subject, message="again")
    wait_for_jobs_done(services)
    [mail] = settle(smtp_sink, subject, 1)
    assert mail.rcpt_to == ("admins@example.com",)
    assert "line one" in mail.text()


def test_without_configured_admins_the_directus_admins_are_told(
    cooco_directus: DirectusServer,
    directus_admin: DirectusClient,
    database_url: str,
    smtp_sink: SmtpSink,
) -> None:
    sync_result_flow(directus_admin)
    admin = make_user(directus_admin, admin=True)
    app = make_app(cooco_directus, database_url, admin_emails=())
    services: Services = app.extensions["bridge.services"]
    subject = f"alert {unique_id('subject')}"
    with services.store.session() as session:
        enqueue_admin_alert(session, dedupe_key=subject, subject=subject, message="hello")
    wait_for_jobs_done(services)
    [mail] = settle(smtp_sink, subject, 1)
    assert admin["email"] in mail.rcpt_to
    assert "admin@example.com" in mail.rcpt_to  # the bootstrap admin


def test_a_superseded_failed_result_is_not_announced(
    services: Services, directus_admin: DirectusClient, smtp_sink: SmtpSink
) -> None:
    customer = make_user(directus_admin)
    order = make_order(directus_admin, customer=customer["id"])
    refund_id = make_pending_refund(services, order)
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        apply_result(session, refund, "FAILED", amount_cents=None, source="webhook")
        apply_result(session, refund, "REFUNDED", amount_cents=None, source="webhook")
    wait_for_jobs_done(services)
    assert [j.state for j in jobs(services, "notify_result")] == ["done", "done"]
    mails = settle(smtp_sink, order["id"], 3)  # REFUNDED to customer and admins, one alert
    customer_mails = [m for m in mails if customer["email"] in m.rcpt_to]
    assert len(customer_mails) == 1
    assert "did not go through" not in customer_mails[0].subject


def test_a_flow_answer_without_ok_is_a_retry_not_a_success(
    services: Services, directus_admin: DirectusClient, smtp_sink: SmtpSink
) -> None:
    # A Flow stopped at an operation this Directus does not know (the extension bundle that
    # provides `refund-bridge-mail` is not installed) answers 200 with nothing in it.
    flow = directus_admin.create_flow(
        {
            "name": unique_id("flow-without-mail"),
            "status": "active",
            "trigger": "webhook",
            "accountability": None,
            "options": {"method": "POST", "async": False, "return": "$last"},
        }
    )
    operation = directus_admin.create_operation(
        {
            "flow": flow["id"],
            "key": "mail",
            "type": "no-such-operation",
            "position_x": 19,
            "position_y": 1,
            "options": {},
        }
    )
    directus_admin.update_flow(flow["id"], {"operation": operation["id"]})
    try:

        def loaded() -> bool:  # Directus loads a new Flow in the background
            try:
                directus_admin.trigger_flow(str(flow["id"]), {})
            except ForbiddenError:
                return False
            return True

        wait_until(loaded, timeout=10, interval=0.2, what="Directus to load the Flow")
        made = refunded(services, directus_admin)
        services.extras["flow_id:refund-result"] = str(flow["id"])
        drain(services)
        job = notify_job(services)
        assert job.state == OutboxState.PENDING
        assert "did not confirm" in (job.last_error or "")
        settle(smtp_sink, made["order"]["id"], 0)
    finally:
        directus_admin.delete_flow(flow["id"])
