"""The outside parties an app talks to, built once per app from its settings."""

from __future__ import annotations

from flask import Flask, current_app

from bridge.config import Settings
from directus_client import DirectusClient


def make_directus(settings: Settings) -> DirectusClient:
    return DirectusClient(
        settings.directus_url,
        settings.directus_token,
        read_timeout=settings.directus_timeout_seconds,
    )


def get_settings() -> Settings:
    settings: Settings = current_app.config["BRIDGE_SETTINGS"]
    return settings


def get_directus() -> DirectusClient:
    client: DirectusClient = current_app.extensions["bridge.directus"]
    return client


def init_app(app: Flask) -> None:
    app.extensions["bridge.directus"] = make_directus(app.config["BRIDGE_SETTINGS"])
