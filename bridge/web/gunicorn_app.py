"""gunicorn configured in code: `refund-bridge serve` (the app of wsgi.py) and
`refund-bridge sandbox` (the RideNDine sandbox, bridge/cli/sandbox.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gunicorn import glogging
from gunicorn.app.base import BaseApplication


class AppWritesAccessLines(glogging.Logger):
    """gunicorn's logger without its access log: the app writes the access lines
    (bridge/logs.py). gunicorn's own would build every request's log atoms for a logger that has
    no handler (a `logconfig_dict` turns it on): 5 % of a webhook's CPU (docs/performance.md)."""

    def access(self, resp: Any, req: Any, environ: Any, request_time: Any) -> None:
        return


class Server(BaseApplication):
    """gunicorn with `options` (its settings' names), serving what `build_app` returns: called
    in each worker after the fork, so that no app (nor its threads) exists in the master."""

    def __init__(self, options: dict[str, Any], build_app: Callable[[], Any]) -> None:
        self.options = options
        self.build_app = build_app
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return self.build_app()


def _bridge_app() -> Any:
    # As `gunicorn wsgi:app` would.
    from wsgi import app

    return app


def _child_exit(_server: Any, worker: Any) -> None:
    from bridge import metrics

    metrics.mark_process_dead(worker.pid)


def run(
    *, bind: str, workers: int, threads: int, log_level: str, secrets: tuple[str, ...] = ()
) -> None:
    from bridge import metrics

    # The workers share their metrics through files in this directory (bridge/metrics.py):
    # made before they are forked, removed when the server stops.
    with metrics.multiprocess_dir():
        _run(bind=bind, workers=workers, threads=threads, log_level=log_level, secrets=secrets)


def _run(
    *, bind: str, workers: int, threads: int, log_level: str, secrets: tuple[str, ...] = ()
) -> None:
    from bridge.logs import gunicorn_logconfig

    Server(
        {
            "child_exit": _child_exit,
            "bind": bind,
            "workers": workers,
            "threads": threads,
            # gthread that gives its threads only whole requests (slow clients cost no thread).
            "worker_class": "bridge.web.gunicorn_worker.BufferingThreadWorker",
            "loglevel": log_level.lower(),
            "timeout": 30,
            "graceful_timeout": 20,
            "keepalive": 5,
            "accesslog": None,
            "logger_class": AppWritesAccessLines,
            # gunicorn's own lines as JSON too; the app writes the access lines.
            "logconfig_dict": gunicorn_logconfig(log_level, secrets),
        },
        _bridge_app,
    ).run()
