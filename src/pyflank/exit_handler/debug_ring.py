"""A bounded per-vCPU text log, as Bareflank's debug ring (read by ``bfm dump``)."""

from __future__ import annotations

import threading
from collections import deque

DEFAULT_DEBUG_RING_SIZE = 32 * 1024


class DebugRing:
    """Whole lines, oldest dropped first once ``capacity`` characters are held.

    Each write is one or more complete lines appended under a lock, so text
    from concurrent writers never interleaves mid-line.
    """

    def __init__(self, capacity: int = DEFAULT_DEBUG_RING_SIZE) -> None:
        if capacity <= 0:
            raise ValueError("debug ring capacity must be positive")
        self.capacity = capacity
        self._lines: deque[str] = deque()
        self._size = 0
        self._lock = threading.Lock()
        self.dropped = 0

    def write(self, text: str) -> None:
        """Append ``text``, line by line, dropping the oldest lines past the capacity."""
        lines = [line + "\n" for line in text.splitlines()] or ["\n"]
        with self._lock:
            for line in lines:
                if len(line) > self.capacity:
                    line = line[-self.capacity :]
                self._lines.append(line)
                self._size += len(line)
            while self._size > self.capacity:
                self._size -= len(self._lines.popleft())
                self.dropped += 1

    def read(self) -> str:
        """The ring's text, oldest line first."""
        with self._lock:
            return "".join(self._lines)

    def clear(self) -> None:
        """Drop every line."""
        with self._lock:
            self._lines.clear()
            self._size = 0

    def __len__(self) -> int:
        return self._size
