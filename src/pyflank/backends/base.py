"""What every backend shares with the vCPU layer: why a vCPU stopped, and the port bus."""

from __future__ import annotations

from enum import Enum
from typing import Protocol


class StopReason(Enum):
    HALTED = "halted"  # the exit handler halted the vCPU (halt(), an unhandled exit, ...)
    PROMOTED = "promoted"  # the handler left VMX operation (VMXOFF)
    GUEST_HLT = "guest hlt"  # HLT that does not exit: nothing would wake the vCPU
    SHUTDOWN = "shutdown"  # triple fault, and the handler did not resume the guest
    TIMEOUT = "timeout"
    STOPPED = "stopped"  # stopped from outside (another vCPU finished with an error, ...)
    ERROR = "error"  # the backend could not go on (unsupported control, emulator error)


class PortIo(Protocol):
    """Port-mapped devices (COM1, ...); sizes are 1, 2 or 4 bytes."""

    def io_read(self, port: int, size: int) -> int: ...
    def io_write(self, port: int, size: int, value: int) -> None: ...
