"""The real servers the tests use: Directus (with its static token) and the SMTP sink."""

from __future__ import annotations

import smtplib
import uuid
from email.message import EmailMessage

import pytest
import requests

from devstack.directus import DirectusServer
from devstack.smtp import SmtpSink
from directus_client import DirectusClient, InvalidCredentialsError


def test_directus_answers_ping(directus: DirectusServer) -> None:
    assert requests.get(f"{directus.url}/server/ping", timeout=5).text == "pong"


def test_static_token_authenticates(directus: DirectusServer) -> None:
    me = DirectusClient(directus.url, directus.admin_token).me(fields=["email"])
    assert me["email"] == "admin@example.com"
    with pytest.raises(InvalidCredentialsError):
        DirectusClient(directus.url, "wrong-token").me()


def test_collection_created_and_read_back(directus_admin: DirectusClient) -> None:
    name = f"t_{uuid.uuid4().hex[:10]}"
    directus_admin.create_collection(
        {
            "collection": name,
            "meta": {"icon": "box"},
            "schema": {},
            "fields": [
                {
                    "field": "id",
                    "type": "integer",
                    "schema": {"is_primary_key": True, "has_auto_increment": True},
                    "meta": {"hidden": True},
                },
                {"field": "label", "type": "string"},
            ],
        }
    )
    created = directus_admin.create_item(name, {"label": "hello"})
    assert directus_admin.get_item(name, created["id"])["label"] == "hello"
    assert name in {c["collection"] for c in directus_admin.list_collections()}


def test_smtp_sink_keeps_messages(smtp_sink: SmtpSink) -> None:
    marker = uuid.uuid4().hex
    message = EmailMessage()
    message["From"] = "a@example.com"
    message["To"] = "b@example.com"
    message["Subject"] = f"hello {marker}"
    message.set_content("body")
    with smtplib.SMTP("127.0.0.1", smtp_sink.port, timeout=10) as smtp:
        smtp.send_message(message)
    [received] = smtp_sink.wait_for(marker, 1)
    assert received.rcpt_to == ("b@example.com",)
