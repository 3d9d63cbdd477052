"""Fixtures, built on each other as in Flask's tutorial: settings -> app -> client / runner.

One real Directus per test session (started on first use), one SMTP sink, and a throwaway
PostgreSQL cluster for the tests that ask for it. Tests make their own orders with unique ids
instead of resetting databases.
"""

from __future__ import annotations

import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient

from bridge import create_app
from bridge.config import Settings
from bridge.directus.schema import apply_schema, create_demo_orders
from bridge.jobs import registry
from devstack.directus import DirectusServer, link_extension
from devstack.net import free_port
from devstack.postgres import PostgresCluster
from devstack.sandbox import SandboxProcess
from devstack.smtp import SmtpSink
from directus_client import DirectusClient
from tests.support.helpers import (
    FLOW_SECRET,
    RIDENDINE_KEY,
    SERVICE_TOKEN,
    WEBHOOK_SECRET,
    make_settings,
)

# Every process registers the outbox's job kinds at start (create_app, the worker, the commands);
# tests that run jobs without one of them need the same.
registry.register_all()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the real servers they use, so they can be selected (-m directus)."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "directus" in names:
            item.add_marker(pytest.mark.directus)
        if "postgres" in names:
            item.add_marker(pytest.mark.postgres)


# -- real servers, one per session ----------------------------------------------------------


@pytest.fixture(scope="session")
def smtp_sink() -> Iterator[SmtpSink]:
    sink = SmtpSink()
    sink.start()
    yield sink
    sink.stop()


@pytest.fixture(scope="session")
def directus_extensions_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder Directus loads extensions from (the repo's extension is linked in)."""
    folder = tmp_path_factory.mktemp("directus-extensions")
    link_extension(folder)
    return folder


@pytest.fixture(scope="session")
def directus_bridge_port() -> int:
    """The port the session Directus's `ridendine` extension forwards to (its BRIDGE_URL, with
    BRIDGE_SERVICE_TOKEN = SERVICE_TOKEN): a test runs its bridge, or a receiver, there."""
    return free_port()


@pytest.fixture(scope="session")
def directus(
    tmp_path_factory: pytest.TempPathFactory,
    smtp_sink: SmtpSink,
    directus_extensions_dir: Path,
    directus_bridge_port: int,
) -> Iterator[DirectusServer]:
    server = DirectusServer(
        data_dir=tmp_path_factory.mktemp("directus"),
        smtp_port=smtp_sink.port,
        extensions_dir=directus_extensions_dir,
        extra_env={
            "REFUND_BRIDGE_FLOW_SECRET": FLOW_SECRET,
            "BRIDGE_URL": f"http://127.0.0.1:{directus_bridge_port}",
            "BRIDGE_SERVICE_TOKEN": SERVICE_TOKEN,
            # Flows may call the bridge on 127.0.0.1 (the "request refund" Flow in
            # tests/system/test_end_to_end.py); Directus refuses every local address by default.
            "IMPORT_IP_DENY_LIST": "169.254.169.254",
        },
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def directus_admin(directus: DirectusServer) -> Iterator[DirectusClient]:
    """A client with the admin's static token. The admin gets no e-mail for Directus's in-app
    notifications (their "Email notifications" off, as make_user's users): the tests count the
    bridge's own e-mails in the SMTP sink."""
    client = DirectusClient(directus.url, directus.admin_token)
    client.request("PATCH", "/users/me", json_body={"email_notifications": False})
    yield client
    client.close()


@pytest.fixture(scope="session")
def cooco_directus(directus: DirectusServer, directus_admin: DirectusClient) -> DirectusServer:
    """The session's Directus with COOCO's side in place: a demo `orders` collection and the
    bridge's `refunds` schema."""
    create_demo_orders(directus_admin)
    apply_schema(directus_admin)
    return directus


@pytest.fixture(scope="session")
def ridendine_sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SandboxProcess]:
    """The RideNDine sandbox (`refund-bridge sandbox`) in its own process, one per session,
    with the tests' key and webhook secret; webhooks go nowhere until a test says where
    (`.control.update_settings(bridge_webhook_url=...)` or a per-order `.control.set_rule`).
    Tests that change its settings call `.control.reset()` when done."""
    process = SandboxProcess(
        api_key=RIDENDINE_KEY,
        webhook_secret=WEBHOOK_SECRET,
        delay_seconds=0.2,
        extra_env={
            "RIDENDINE_SANDBOX_RETRY_BASE_SECONDS": "0.2",
            "RIDENDINE_SANDBOX_RETRY_MAX_SECONDS": "2",
        },
        log_path=tmp_path_factory.mktemp("ridendine-sandbox") / "sandbox.log",
    )
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    # Outside pytest's private temp tree: the cluster runs as the `postgres` user.
    base = Path(tempfile.mkdtemp(prefix="refund-bridge-pg-"))
    cluster = PostgresCluster(base_dir=base)
    cluster.start()
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_url(postgres: PostgresCluster) -> str:
    """A fresh database in the session's cluster."""
    return postgres.create_database("t_" + uuid.uuid4().hex[:12])


# -- the app --------------------------------------------------------------------------------


@pytest.fixture
def settings() -> Settings:
    """Settings for tests that need no real Directus (its URL leads nowhere)."""
    return make_settings("http://127.0.0.1:9", "directus-token-unused")


@pytest.fixture
def directus_settings(directus: DirectusServer) -> Settings:
    """Settings pointing at the session's real Directus with the admin token."""
    return make_settings(directus.url, directus.admin_token)


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bridge.sqlite3'}"


@pytest.fixture
def app(settings: Settings, database_url: str) -> Flask:
    return create_app(
        {
            "BRIDGE_SETTINGS": settings,
            "DATABASE_URL": database_url,
            "AUTO_MIGRATE": True,
            "TESTING": True,
        }
    )


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


# -- the Directus side: an empty second Directus, and the project's Flows ------------------


@pytest.fixture(scope="session")
def spare_directus(
    tmp_path_factory: pytest.TempPathFactory, smtp_sink: SmtpSink
) -> Iterator[DirectusServer]:
    """A second Directus, started on first use, with nothing of COOCO's nor of the bridge in
    it (no orders, no refunds): Directus as COOCO has it before setting the bridge up. Its
    Flows may call servers on 127.0.0.1 (Directus refuses loopback by default)."""
    server = DirectusServer(
        data_dir=tmp_path_factory.mktemp("spare-directus"),
        smtp_port=smtp_sink.port,
        extra_env={"IMPORT_IP_DENY_LIST": "169.254.169.254"},
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def refund_flows(cooco_directus: DirectusServer, directus_admin: DirectusClient) -> dict[str, str]:
    """The project's Flows synced into the session Directus with the test settings (flow
    secret FLOW_SECRET, service token SERVICE_TOKEN): {flow key: flow id}."""
    from bridge.cli.directus import flow_params
    from flows.sync import ping_refund_result, sync_flows

    settings = make_settings(cooco_directus.url, cooco_directus.admin_token)
    results = sync_flows(directus_admin, flow_params(settings))
    flow_ids = {result.key: str(result.flow_id) for result in results}
    # Directus reloads its Flows in the background after a change: wait until it has.
    ping_refund_result(directus_admin, FLOW_SECRET, flow_ids["refund-result"])
    return flow_ids
