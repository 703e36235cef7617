"""The bus a KVM vCPU sends port I/O to when no device bus is given: an empty one."""

from __future__ import annotations


class NoDevices:
    """An empty bus: reads float high (all ones), writes go nowhere."""

    def io_read(self, port: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def io_write(self, port: int, size: int, value: int) -> None:
        pass
