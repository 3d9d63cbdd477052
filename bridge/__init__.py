"""refund-bridge: the service between COOCO's Directus and RideNDine's refunds."""

from __future__ import annotations

from typing import Any

from flask import Flask

from bridge.config import Settings, load_settings


def create_app(test_config: dict[str, Any] | None = None) -> Flask:
    """Build the Flask app. Settings come from the environment unless `test_config` gives
    `BRIDGE_SETTINGS` (a `Settings`); other keys of `test_config` override Flask config."""
    app = Flask(__name__, instance_relative_config=True)
    test_config = dict(test_config or {})
    settings: Settings = test_config.pop("BRIDGE_SETTINGS", None) or load_settings()
    app.config.update(
        BRIDGE_SETTINGS=settings,
        DATABASE_URL=settings.database_url,
        # Contract section 3: webhook bodies over 64 KiB are refused with 413.
        MAX_CONTENT_LENGTH=64 * 1024,
        AUTO_MIGRATE=False,
    )
    app.config.update(test_config)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    from bridge import errors, logs, services
    from bridge.jobs import registry
    from bridge.store import db
    from bridge.web.health import bp as health_bp

    logs.init_app(app)
    errors.init_app(app)
    db.init_app(app)
    services.init_app(app)
    registry.register_all()  # requests run their first job inline (submission, webhook)
    app.register_blueprint(health_bp)
    from bridge import metrics
    from bridge.ops.stats import bp as stats_bp

    metrics.init_app(app)  # times every request; serves /metrics
    app.register_blueprint(stats_bp)
    from bridge.refunds import bp as refunds_bp

    app.register_blueprint(refunds_bp)
    from bridge.webhooks import bp as webhooks_bp

    app.register_blueprint(webhooks_bp)
    from bridge.openapi import bp as openapi_bp

    app.register_blueprint(openapi_bp)  # GET /ridendine/openapi.json
    if settings.trusted_proxies > 0:
        # X-Forwarded-* are believed only from that many proxies in front (docs/configuration.md).
        from werkzeug.middleware.proxy_fix import ProxyFix

        hops = settings.trusted_proxies
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops, x_port=hops, x_prefix=hops
        )
    return app
