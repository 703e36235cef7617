"""Port I/O that does not exit to the handler goes to the platform's devices through this."""

from __future__ import annotations

from typing import Protocol


class PortIo(Protocol):
    """A bus of port-mapped devices (COM1, ...); sizes are 1, 2 or 4 bytes."""

    def io_read(self, port: int, size: int) -> int: ...
    def io_write(self, port: int, size: int, value: int) -> None: ...


class NoDevices:
    """An empty bus: reads float high (all ones), writes go nowhere."""

    def io_read(self, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        pass
