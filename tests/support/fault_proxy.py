"""A TCP proxy in front of a real server (Directus), with faults switched at run time.

    proxy = FaultProxy("127.0.0.1", directus.port).start()
    proxy.url                  # what the bridge is given as BRIDGE_DIRECTUS_URL
    proxy.mode = "slow"        # answers held `delay` seconds (beyond the bridge's timeouts)
    proxy.mode = "error500"    # every request answered 500 by the proxy itself
    proxy.mode = "refuse"      # connections closed at once (as if nothing listened)
    proxy.mode = "pass"        # bytes relayed both ways
    proxy.requests             # request lines seen ("GET /items/orders?...")
    proxy.stop()

Only 127.0.0.1. Each connection runs in its own daemon thread; `stop()` closes the listener and
every open connection.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections import Counter

from devstack.net import free_port

MODES = ("pass", "slow", "error500", "refuse")
_REQUEST_LINE = re.compile(rb"^(GET|POST|PATCH|PUT|DELETE|SEARCH|HEAD|OPTIONS) (\S+) HTTP/1\.[01]")
ERROR_BODY = (
    b'{"errors":[{"message":"An unexpected error occurred.",'
    b'"extensions":{"code":"INTERNAL_SERVER_ERROR"}}]}'
)


class FaultProxy:
    def __init__(self, upstream_host: str, upstream_port: int, *, delay: float = 3.0) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = free_port()
        self.delay = delay
        self.mode = "pass"
        self.requests: list[str] = []
        self.faults: Counter[str] = Counter()  # connections or requests hit by each fault
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        listener.settimeout(0.2)
        self._listener = listener
        threading.Thread(target=self._accept_loop, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
        self.drop_connections()

    def drop_connections(self) -> None:
        """Close every open connection (a client's pooled connection to "Directus" with it)."""
        with self._lock:
            sockets, self._sockets = set(self._sockets), set()
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def set_mode(self, mode: str) -> None:
        assert mode in MODES, mode
        self.mode = mode
        self.drop_connections()  # the next request meets the new behaviour

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _record(self, chunk: bytes) -> bool:
        found = _REQUEST_LINE.match(chunk)
        if found:
            line = f"{found.group(1).decode()} {found.group(2).decode('latin-1')}"
            with self._lock:
                self.requests.append(line)
        return found is not None

    def _serve(self, client: socket.socket) -> None:
        mode = self.mode
        try:
            if mode == "refuse":
                self.faults["refuse"] += 1
                return
            if mode == "error500":
                self._answer_500(client)
                return
            upstream = socket.create_connection(self.upstream, timeout=10)
            self._track(upstream)
            threading.Thread(
                target=self._pipe, args=(upstream, client, mode == "slow"), daemon=True
            ).start()
            self._pipe(client, upstream, False, record=True)
        except OSError:
            pass
        finally:
            if mode in ("refuse", "error500"):
                client.close()

    def _answer_500(self, client: socket.socket) -> None:
        client.settimeout(10)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = client.recv(65536)
            if not chunk:
                return
            data += chunk
        self._record(data)
        self.faults["error500"] += 1
        client.sendall(
            b"HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(ERROR_BODY)).encode() + b"\r\n"
            b"Connection: close\r\n\r\n" + ERROR_BODY
        )

    def _pipe(
        self, source: socket.socket, target: socket.socket, slow: bool, *, record: bool = False
    ) -> None:
        try:
            while True:
                chunk = source.recv(65536)
                if not chunk:
                    break
                if record:
                    self._record(chunk)
                if slow:
                    self.faults["slow"] += 1
                    time.sleep(self.delay)
                target.sendall(chunk)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
