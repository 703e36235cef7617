"""The service's log: a text stream that stops growing at a size limit.

The service's stderr is its log file; a client that sends garbage in a loop must not be
able to fill the disk with it.  Past ``limit`` characters one line says so, then writes
are counted and dropped.
"""

from __future__ import annotations

import threading
from typing import TextIO

DEFAULT_LIMIT = 1 << 20


class BoundedStream:
    """Wraps ``target`` (a text stream); at most ``limit`` characters reach it."""

    def __init__(self, target: TextIO, limit: int = DEFAULT_LIMIT) -> None:
        self.target = target
        self.limit = limit
        self.written = 0
        self.dropped = 0
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            if self.written + len(text) > self.limit:
                if not self.dropped:
                    self.target.write(f"\n[log limit of {self.limit} characters reached: "
                                      "later messages are dropped]\n")  # fmt: skip
                    self.target.flush()
                self.dropped += 1
                return len(text)
            self.written += len(text)
            self.target.write(text)
            return len(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return False
