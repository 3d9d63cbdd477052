"""Liveness and readiness."""

from __future__ import annotations

from pathlib import Path

from flask.testing import FlaskClient

from bridge import create_app
from bridge.config import Settings


def test_healthz_answers_without_dependencies(client: FlaskClient) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}


def test_readyz_is_503_when_directus_is_down(client: FlaskClient) -> None:
    response = client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["checks"] == {"store": "ok", "directus": "unavailable"}


def test_readyz_is_200_with_real_directus(
    directus_settings: Settings, tmp_path: Path, directus: object
) -> None:
    app = create_app(
        {
            "BRIDGE_SETTINGS": directus_settings,
            "DATABASE_URL": f"sqlite:///{tmp_path / 'b.sqlite3'}",
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )
    response = app.test_client().get("/readyz")
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["checks"] == {"store": "ok", "directus": "ok"}
