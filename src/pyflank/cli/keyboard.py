"""Typing into the guest: bfm's standard input forwarded to COM1 as it arrives.

On a terminal, input is taken a key at a time without local echo (the guest's shell
echoes, as over a serial line); Ctrl-C still interrupts bfm, which then reports how the
run ended.  From a pipe, the bytes go on as they come, and the end of the input is the
end of typing, not of the run.  The terminal's mode is put back however the run ends.
"""

from __future__ import annotations

import os
import termios
import threading
import tty
from collections.abc import Callable
from types import TracebackType
from typing import Any

_CHUNK = 4096


class Keyboard:
    """``with Keyboard(fd, feed):`` forwards ``fd`` to ``feed`` until the block ends."""

    def __init__(self, fd: int, feed: Callable[[bytes], None]) -> None:
        self.fd = fd
        self.feed = feed
        self._saved: list[Any] | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Keyboard:
        if os.isatty(self.fd):
            self._saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)  # one key at a time, no local echo, signals kept
        self._thread = threading.Thread(target=self._forward, daemon=True, name="keyboard")
        self._thread.start()
        return self

    def _forward(self) -> None:
        while True:
            try:
                data = os.read(self.fd, _CHUNK)
            except OSError:
                return
            if not data:
                return
            self.feed(data)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)
            self._saved = None
