"""Directus in-app notifications: a refund that needs review tells every admin in the
Directus app too, linked to the refund's item page, once, even when the job is retried."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bridge import create_app
from bridge.directus.in_app import JOB_NOTIFY_IN_APP, notify_admins_in_app
from bridge.directus.review import flag_for_review
from bridge.jobs import outbox
from bridge.services import Services
from bridge.store.models import OutboxState, Refund
from devstack.directus import DirectusServer
from directus_client import DirectusClient
from tests.support.helpers import make_order, make_settings, make_user
from tests.support.webhook_helpers import jobs, make_pending_refund, wait_for_jobs_done


def make_services(directus: DirectusServer, database_url: str, token: str) -> Services:
    settings = make_settings(directus.url, token)
    app = create_app(
        {"BRIDGE_SETTINGS": settings, "DATABASE_URL": database_url, "AUTO_MIGRATE": True}
    )
    services: Services = app.extensions["bridge.services"]
    return services


@pytest.fixture
def services(cooco_directus: DirectusServer, database_url: str) -> Iterator[Services]:
    services = make_services(cooco_directus, database_url, cooco_directus.admin_token)
    yield services
    services.directus.close()


def notifications(client: DirectusClient, refund_id: str) -> list[dict[str, Any]]:
    return client.list_system(
        "notifications",
        filter={"item": {"_eq": refund_id}},
        fields=["recipient", "subject", "message", "collection", "item"],
    )


def test_a_refund_needing_review_notifies_each_admin_in_the_app_once(
    services: Services, directus_admin: DirectusClient
) -> None:
    other_admin = make_user(directus_admin, admin=True)
    not_admin = make_user(directus_admin)
    refund_id = make_pending_refund(services, make_order(directus_admin, amount_paid_cents=1500))
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        assert flag_for_review(session, refund, "amount differs", source="webhook")
    wait_for_jobs_done(services)
    assert [j.state for j in jobs(services, JOB_NOTIFY_IN_APP)] == [OutboxState.DONE]

    admins = {user["id"] for user in directus_admin.admin_users()}
    assert other_admin["id"] in admins and not_admin["id"] not in admins
    found = notifications(directus_admin, refund_id)
    assert sorted(n["recipient"] for n in found) == sorted(admins)  # one each, no one else
    for notification in found:
        assert notification["collection"] == "refunds"  # the app links it to the item page
        assert notification["item"] == refund_id
        assert notification["subject"].startswith(f"Refund {refund_id} on order ")
        assert "needs review" in notification["subject"]
        assert "(15.00 EUR requested" in notification["message"]
        assert "amount differs" in notification["message"]

    # The job run again (a retry after a timeout): no admin is told twice.
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        session.expunge(refund)
    subject = found[0]["subject"]
    assert notify_admins_in_app(services, refund, subject, "again") == 0
    assert len(notifications(directus_admin, refund_id)) == len(admins)
    # The same flag again changes nothing and tells no one.
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        assert not flag_for_review(session, refund, "amount differs", source="webhook")
    assert len(jobs(services, JOB_NOTIFY_IN_APP)) == 1


def test_a_directus_that_refuses_is_retried(
    cooco_directus: DirectusServer, directus_admin: DirectusClient, database_url: str
) -> None:
    services = make_services(cooco_directus, database_url, "not-a-valid-token-000")
    refund_id = make_pending_refund(services, make_order(directus_admin))
    with services.store.session() as session:
        refund = session.get(Refund, refund_id)
        assert refund is not None
        flag_for_review(session, refund, "needs a look", source="webhook", project=False)
    outbox.drain(services)
    [job] = jobs(services, JOB_NOTIFY_IN_APP)
    assert job.state == OutboxState.PENDING and job.attempts == 1
    assert "Directus in-app notification: InvalidCredentialsError" in (job.last_error or "")
    assert notifications(directus_admin, refund_id) == []
    services.directus.close()
