"""The outside parties and the store, built once per process from the settings.

`Services` is Flask-free so that the worker and the commands use the same objects as the web
app; the app keeps one in `app.extensions`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from flask import Flask, current_app

from bridge.config import Settings
from bridge.store.db import Store
from bridge.store.db import database_url as store_url
from directus_client import DirectusClient

if TYPE_CHECKING:
    from bridge.refunds.ridendine import RideNDineClient


def make_directus(settings: Settings) -> DirectusClient:
    from bridge.metrics import instrument_session

    client = DirectusClient(
        settings.directus_url,
        settings.directus_token,
        read_timeout=settings.directus_timeout_seconds,
    )
    instrument_session(client.session, "directus")  # latency and errors in /metrics
    return client


@dataclass
class Services:
    settings: Settings
    store: Store
    directus: DirectusClient
    # Filled lazily by the features that need them (RideNDine client, Stripe client, caches).
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def ridendine(self) -> RideNDineClient:
        client = self.extras.get("ridendine")
        if client is None:
            from bridge.refunds.ridendine import RideNDineClient

            client = RideNDineClient(
                self.settings.ridendine_api_url,
                self.settings.ridendine_api_key,
                read_timeout=self.settings.ridendine_timeout_seconds,
            )
            from bridge.metrics import instrument_session

            instrument_session(client.session, "ridendine")  # latency and errors in /metrics
            self.extras["ridendine"] = client
        return client

    def close(self) -> None:
        self.directus.close()
        self.store.dispose()


def build_services(settings: Settings, database_url: str | None = None) -> Services:
    """Services for a process outside Flask (worker, commands)."""
    url = database_url or store_url(settings.database_url)
    return Services(settings=settings, store=Store(url), directus=make_directus(settings))


def get_services() -> Services:
    services: Services = current_app.extensions["bridge.services"]
    return services


def get_settings() -> Settings:
    settings: Settings = current_app.config["BRIDGE_SETTINGS"]
    return settings


def get_directus() -> DirectusClient:
    return get_services().directus


def init_app(app: Flask) -> None:
    app.extensions["bridge.services"] = Services(
        settings=app.config["BRIDGE_SETTINGS"],
        store=app.extensions["bridge.store"],
        directus=make_directus(app.config["BRIDGE_SETTINGS"]),
    )
