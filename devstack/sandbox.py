"""The RideNDine sandbox as a subprocess (`refund-bridge sandbox`), for tests, `make dev` and
benchmarks, with a small client for its /_sandbox/ control endpoints.

    sandbox = SandboxProcess(api_key=..., webhook_secret=..., bridge_webhook_url=...)
    sandbox.start()              # waits until /_sandbox/health answers
    sandbox.url                  # the bridge's BRIDGE_RIDENDINE_API_URL
    sandbox.control.requests(idempotency_key=refund_id)
    sandbox.stop()               # SIGTERM by PID, then SIGKILL
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from devstack.directus import REPO
from devstack.net import free_port, wait_until


class SandboxControl:
    """A client for the sandbox's /_sandbox/ endpoints (docs/sandbox.md)."""

    def __init__(self, url: str, timeout: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.session = requests.Session()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.session.request(
            method, f"{self.url}/_sandbox/{path}", timeout=self.timeout, **kwargs
        )
        response.raise_for_status()
        return response.json()

    def healthy(self) -> bool:
        try:
            return bool(self._call("GET", "health")["status"] == "ok")
        except requests.RequestException:
            return False

    def settings(self) -> dict[str, Any]:
        return dict(self._call("GET", "settings"))

    def update_settings(self, **changes: Any) -> dict[str, Any]:
        return dict(self._call("PATCH", "settings", json=changes)["behaviour"])

    def set_rule(self, external_order_id: str, **behaviour: Any) -> None:
        self._call("POST", "rules", json={"external_order_id": external_order_id, **behaviour})

    def requests(self, **filters: str) -> list[dict[str, Any]]:
        return list(self._call("GET", "requests", params=filters)["requests"])

    def deliveries(self, **filters: str) -> list[dict[str, Any]]:
        return list(self._call("GET", "deliveries", params=filters)["deliveries"])

    def refunds(self, **filters: str) -> list[dict[str, Any]]:
        return list(self._call("GET", "refunds", params=filters)["refunds"])

    def send_event(self, **event: Any) -> dict[str, Any]:
        return dict(self._call("POST", "events", json=event))

    def reset(self) -> None:
        self._call("POST", "reset")

    def wait_for_deliveries(
        self, count: int, timeout: float = 20.0, state: str = "delivered", **filters: str
    ) -> list[dict[str, Any]]:
        """Wait until at least `count` webhooks matching `filters` reached `state`."""
        found: list[dict[str, Any]] = []

        def enough() -> bool:
            nonlocal found
            found = self.deliveries(state=state, **filters)
            return len(found) >= count

        wait_until(enough, timeout=timeout, interval=0.1, what=f"{count} {state} webhook(s)")
        return found

    def close(self) -> None:
        self.session.close()


@dataclass
class SandboxProcess:
    """`refund-bridge sandbox` in a subprocess of its own, listening on 127.0.0.1."""

    api_key: str
    webhook_secret: str | None = None
    webhook_bearer_token: str | None = None
    port: int = 0
    bridge_webhook_url: str | None = None
    scenario: str = "succeed"
    delay_seconds: float = 1.0
    extra_env: dict[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    _control: SandboxControl | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def control(self) -> SandboxControl:
        if self._control is None:
            self._control = SandboxControl(self.url)
        return self._control

    def env(self) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "RIDENDINE_SANDBOX_API_KEY": self.api_key,
        }
        if self.webhook_secret:
            env["RIDENDINE_SANDBOX_WEBHOOK_SECRET"] = self.webhook_secret
        if self.webhook_bearer_token:
            env["RIDENDINE_SANDBOX_WEBHOOK_BEARER_TOKEN"] = self.webhook_bearer_token
        env.update(self.extra_env)
        return env

    def command(self) -> list[str]:
        command = [
            sys.executable,
            "-m",
            "bridge.cli",
            "sandbox",
            "--port",
            str(self.port),
            "--scenario",
            self.scenario,
            "--delay",
            str(self.delay_seconds),
        ]
        if self.bridge_webhook_url:
            command += ["--bridge-webhook-url", self.bridge_webhook_url]
        return command

    def start(self, timeout: float = 30.0) -> None:
        """Start the sandbox and wait until it answers /_sandbox/health."""
        if not self.port:
            self.port = free_port()
        output: Any = subprocess.DEVNULL
        if self.log_path is not None:
            output = open(self.log_path, "ab")  # noqa: SIM115 - closed below, kept by the child
        try:
            self.process = subprocess.Popen(
                self.command(),
                cwd=REPO,
                env=self.env(),
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            if self.log_path is not None:
                output.close()

        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the sandbox exited with {self.process.returncode}")
            return self.control.healthy()

        wait_until(ready, timeout=timeout, interval=0.1, what="the sandbox to answer")

    def stop(self, timeout: float = 15.0) -> None:
        """Stop it by PID (SIGTERM, then SIGKILL)."""
        process, self.process = self.process, None
        if self._control is not None:
            self._control.close()
            self._control = None
        if process is None or process.poll() is not None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)

    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class ReceivedRequest:
    method: str
    path: str
    headers: dict[str, str]  # names lower-cased
    body: bytes


@dataclass
class ScriptedAnswer:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=lambda: {"Content-Type": "application/json"})


class Receiver:
    """A tiny HTTP server on 127.0.0.1 that records every request and answers from a script
    (then `default`): the bridge's stand-in in the sandbox's and the extension's tests."""

    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.received: list[ReceivedRequest] = []
        self.script: list[ScriptedAnswer] = []
        self.default = ScriptedAnswer()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def answer(self, *answers: ScriptedAnswer) -> None:
        with self._lock:
            self.script.extend(answers)

    def _next_answer(self, request: ReceivedRequest) -> ScriptedAnswer:
        with self._lock:
            self.received.append(request)
            return self.script.pop(0) if self.script else self.default

    def requests(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self.received)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedRequest]:
        wait_until(
            lambda: len(self.requests()) >= count,
            timeout=timeout,
            interval=0.02,
            what=f"{count} request(s) at the receiver",
        )
        return self.requests()

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {name.lower(): value for name, value in self.headers.items()}
                answer = receiver._next_answer(
                    ReceivedRequest(self.command, self.path, headers, body)
                )
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                # No keep-alive: a client's pooled connection must not outlive stop().
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
