"""The port space a handler's I/O reaches: the machine's devices, as the physical CPU's
ports were Bareflank's (``x64::portio``)."""

from __future__ import annotations

from typing import Protocol


class PortSpace(Protocol):
    """Ports 0-0xFFFF; sizes are 1, 2 or 4 bytes; unclaimed ports read all ones."""

    def io_read(self, port: int, size: int) -> int: ...
    def io_write(self, port: int, size: int, value: int) -> None: ...
