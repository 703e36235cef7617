"""How a guest ends the run: power-off and reset requests, and QEMU's isa-debug-exit port.

Devices record the request in the platform's ``MachineControl``; the run loop reads it
after the I/O that made it and stops the vCPUs (nothing calls back up).  The first
request stands: a guest cannot turn a power-off into a reset.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from pyflank.platform.devices.bus import all_ones


class MachineEvent(Enum):
    POWER_OFF = "power off"
    RESET = "reset"


@dataclass(frozen=True)
class MachineRequest:
    event: MachineEvent
    source: str  # the device that carried it
    exit_status: int | None = None  # what a VMM process should exit with, when given


class MachineControl:
    def __init__(self) -> None:
        self.request: MachineRequest | None = None

    def power_off(self, source: str, exit_status: int | None = None) -> None:
        if self.request is None:
            self.request = MachineRequest(MachineEvent.POWER_OFF, source, exit_status)

    def reset(self, source: str) -> None:
        if self.request is None:
            self.request = MachineRequest(MachineEvent.RESET, source)


class DebugExit:
    """A write of V powers off with exit status ((V << 1) | 1) mod 256: the convention of
    QEMU's ``-device isa-debug-exit`` (usually at port 0xF4)."""

    def __init__(self, machine: MachineControl) -> None:
        self.machine = machine

    def read(self, offset: int, size: int) -> int:
        return all_ones(size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.machine.power_off("isa-debug-exit", (value << 1 | 1) & 0xFF)
