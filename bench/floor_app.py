"""The floor of webhook ingest (docs/performance.md, scenario "floor"): the least a Python
service can do for a refund-status webhook, to measure the bridge against in the same run.

Flask; the Standard Webhooks HMAC check (the same `standardwebhooks` library as the bridge);
`json.loads`; one SQLite `INSERT` in WAL mode (synchronous=NORMAL, as the bridge's store), in
autocommit, on a connection per thread. Run under gunicorn with the bridge's settings
(2 workers x 4 gthread threads): `gunicorn -k gthread -w 2 --threads 4 bench.floor_app:app`,
with FLOOR_WEBHOOK_SECRET and FLOOR_DATABASE set.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from typing import Any

from flask import Flask, request
from standardwebhooks.webhooks import Webhook

SCHEMA = (
    "CREATE TABLE IF NOT EXISTS events (id INTEGER PRIMARY KEY, webhook_id TEXT NOT NULL UNIQUE,"
    " refund_id TEXT NOT NULL, status TEXT NOT NULL, body BLOB NOT NULL)"
)

app = Flask(__name__)
_webhook = Webhook(os.environ.get("FLOOR_WEBHOOK_SECRET", "whsec_" + "MDEyMzQ1Njc4OQ=="))
_local = threading.local()


def connect(path: str) -> sqlite3.Connection:
    connection = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("PRAGMA synchronous=NORMAL")
    return connection


def _connection() -> sqlite3.Connection:
    connection: sqlite3.Connection | None = getattr(_local, "connection", None)
    if connection is None:
        connection = connect(os.environ["FLOOR_DATABASE"])
        _local.connection = connection
    return connection


@app.post("/ridendine/webhooks/refund-status")
def refund_status() -> tuple[dict[str, Any], int]:
    body = request.get_data()
    try:
        _webhook.verify(body, dict(request.headers))
    except Exception:
        return {"error": "not authenticated"}, 401
    payload = json.loads(body)
    try:
        _connection().execute(
            "INSERT INTO events (webhook_id, refund_id, status, body) VALUES (?, ?, ?, ?)",
            (request.headers["webhook-id"], payload["refund_id"], payload["status"], body),
        )
    except sqlite3.IntegrityError:
        return {"status": "duplicate"}, 200
    return {"status": "accepted"}, 200


@app.get("/healthz")
def healthz() -> tuple[dict[str, Any], int]:
    return {"status": "ok"}, 200
