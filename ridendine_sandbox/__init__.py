"""A RideNDine sandbox: a small stand-in for the delivery and payment partner, for end-to-end
tests, `make dev` and benchmarks. It answers POST /refunds/create as the contract describes
(section 2) and later posts the signed result webhook (section 3), following a scenario.

It imports nothing of the bridge: it plays the outside party.
"""

from __future__ import annotations

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from ridendine_sandbox.config import (
    SCENARIOS,
    Behaviour,
    SandboxConfig,
    SandboxConfigError,
    config_from_env,
)
from ridendine_sandbox.sandbox import Sandbox, error_body

__all__ = [
    "SCENARIOS",
    "Behaviour",
    "Sandbox",
    "SandboxConfig",
    "SandboxConfigError",
    "config_from_env",
    "create_app",
    "get_sandbox",
]

MAX_BODY_BYTES = 64 * 1024


def create_app(config: SandboxConfig) -> Flask:
    """The sandbox's Flask app. Its `Sandbox` is `get_sandbox(app)`; call its `close()` when
    done (it stops the webhook threads, which start on the first webhook)."""
    from ridendine_sandbox import api, control

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.extensions["ridendine_sandbox"] = Sandbox(config)
    app.register_blueprint(api.bp)
    app.register_blueprint(control.bp)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        code = (exc.name or "error").lower().replace(" ", "_")
        return api.json_response(status, error_body(code, exc.description or exc.name))

    return app


def get_sandbox(app: Flask) -> Sandbox:
    sandbox: Sandbox = app.extensions["ridendine_sandbox"]
    return sandbox
