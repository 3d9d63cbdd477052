"""gunicorn's `gthread` worker, made safe from slow clients.

gthread hands a connection to a thread as soon as its first byte arrives; the thread then reads
the request blocking. A client that trickles its headers or body (slowloris) holds a thread for
as long as it likes: measured here, 40 such clients left `refund-bridge serve` (2 workers of 4
threads) answering nothing at all (tests/attacks/test_http.py).

This worker reads each request in its event loop, without blocking, until the whole of it is
in: the head, and the body as far as Content-Length says (or a chunked body's last chunk), at
most `MAX_BUFFERED_BYTES`. Only then does a thread take the connection, with the bytes given
back to gunicorn's parser. A request not complete within `REQUEST_READ_SECONDS` is dropped. A
slow client costs a socket and a small buffer, never a thread.
"""

from __future__ import annotations

import contextlib
import re
import selectors
import sys
import time
from functools import partial
from typing import Any

from gunicorn.workers.gthread import ThreadWorker

# The app refuses bodies over 64 KiB; a head fits in far less.
MAX_BUFFERED_BYTES = 64 * 1024 + 16 * 1024
REQUEST_READ_SECONDS = 10.0
_CONTENT_LENGTH = re.compile(rb"(?im)^content-length:[ \t]*([0-9]{1,12})[ \t]*\r?$")
_CHUNKED = re.compile(rb"(?im)^transfer-encoding:.*chunked")
_EXPECT_CONTINUE = re.compile(rb"(?im)^expect:[ \t]*100-continue")
_HEAD_END = b"\r\n\r\n"


class _Incoming:
    """A connection whose request is being read by the event loop."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.data = bytearray()
        self.deadline = time.monotonic() + REQUEST_READ_SECONDS
        self.continued = False

    def complete(self) -> bool:
        """Whether the request is all here (or is beyond what waiting for would help)."""
        if len(self.data) >= MAX_BUFFERED_BYTES:
            return True
        end = self.data.find(_HEAD_END)
        if end < 0:
            return False
        head, body = bytes(self.data[:end]), self.data[end + len(_HEAD_END) :]
        if _CHUNKED.search(head):
            return body.endswith(b"0\r\n\r\n")
        found = _CONTENT_LENGTH.search(head)
        length = int(found.group(1)) if found else 0
        if length + len(head) > MAX_BUFFERED_BYTES:
            return True  # the app answers 413 from the header alone
        return len(body) >= length

    def wants_continue(self) -> bool:
        end = self.data.find(_HEAD_END)
        return (
            not self.continued
            and end >= 0
            and _EXPECT_CONTINUE.search(bytes(self.data[:end])) is not None
        )


SWITCH_INTERVAL_SECONDS = 0.0005


class BufferingThreadWorker(ThreadWorker):
    """gthread whose threads are only ever given whole requests (see the module docstring)."""

    def init_process(self) -> None:
        self._incoming: dict[int, _Incoming] = {}
        # Hand the GIL over sooner (5 ms by default): a thread holding the store's write lock
        # needs it back after every database call, and under load a busy thread kept it for
        # the whole interval while the other process waited for the lock (docs/performance.md).
        sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
        super().init_process()

    def enqueue_req(self, conn: Any) -> None:
        buffered = conn.parser is not None and conn.parser.unreader.buf.getvalue()
        if getattr(conn, "bridge_request_read", False) or buffered or self.cfg.is_ssl:
            conn.bridge_request_read = False
            super().enqueue_req(conn)
            return
        incoming = _Incoming(conn)
        conn.sock.setblocking(False)
        self._incoming[id(conn)] = incoming
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._read, incoming))

    def _read(self, incoming: _Incoming, _sock: Any) -> None:
        conn = incoming.conn
        try:
            chunk = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:  # the client went away
            self._drop(incoming)
            return
        incoming.data += chunk
        if incoming.wants_continue():
            incoming.continued = True
            try:
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                self._drop(incoming)
                return
        if not incoming.complete():
            return
        self._forget(incoming)
        conn.init()  # the parser, on a blocking socket (plain HTTP: no I/O here)
        conn.parser.unreader.unread(bytes(incoming.data))
        conn.data_ready = True
        conn.bridge_request_read = True
        self.enqueue_req(conn)

    def _forget(self, incoming: _Incoming) -> None:
        self._incoming.pop(id(incoming.conn), None)
        with contextlib.suppress(OSError, KeyError, ValueError):
            self.poller.unregister(incoming.conn.sock)

    def _drop(self, incoming: _Incoming) -> None:
        self._forget(incoming)
        self.nr_conns -= 1
        incoming.conn.close()

    def murder_pending(self) -> None:
        """gthread's sweep of idle connections, plus the requests that took too long."""
        super().murder_pending()
        now = time.monotonic()
        for incoming in [i for i in self._incoming.values() if i.deadline <= now]:
            self._drop(incoming)
