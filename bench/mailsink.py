"""An SMTP sink that only counts, in a process of its own (so that tens of thousands of
e-mails cost the benchmark's load generator neither memory nor its GIL).

    python -m bench.mailsink PORT COUNT_FILE

Every accepted message increments a counter; the counter is written to COUNT_FILE (atomically)
twice a second and on SIGTERM, which stops the sink.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller


class CountingHandler:
    def __init__(self) -> None:
        self.count = 0
        self.lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        with self.lock:
            self.count += 1
        return "250 Message accepted for delivery"


def write_count(path: Path, count: int) -> None:
    partial = path.with_suffix(".part")
    partial.write_text(str(count))
    os.replace(partial, path)


def main(argv: list[str]) -> int:
    port, path = int(argv[0]), Path(argv[1])
    handler = CountingHandler()
    controller = Controller(handler, hostname="127.0.0.1", port=port)
    controller.start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    write_count(path, 0)
    while not stop.wait(0.5):
        write_count(path, handler.count)
    controller.stop()
    write_count(path, handler.count)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
