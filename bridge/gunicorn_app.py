"""`refund-bridge serve`: gunicorn running the app of wsgi.py, configured from the command."""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication


class BridgeServer(BaseApplication):
    def __init__(self, options: dict[str, Any]) -> None:
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        # Built in each worker (after fork), as `gunicorn wsgi:app` would.
        from wsgi import app

        return app


def run(*, bind: str, workers: int, threads: int, log_level: str) -> None:
    BridgeServer(
        {
            "bind": bind,
            "workers": workers,
            "threads": threads,
            "worker_class": "gthread",
            "loglevel": log_level.lower(),
            "timeout": 30,
            "graceful_timeout": 20,
            "keepalive": 5,
            "accesslog": None,
        }
    ).run()
