"""The mailbox device between the VMM service and the guest agent.

Each vCPU has a slot in guest memory: the vmcall registers r00-r15, then a
32-page input buffer and a 32-page output buffer, and a pair of ports (offsets
``WAIT`` = 2 * vcpuid, ``DONE`` = WAIT + 1 on the bus; the service places them
at ``BASE_PORT``).  The agent reads its
``WAIT`` port, which blocks (on the vCPU's own thread) until the service
posts a request, runs the vmcall with the slot's registers and buffers, stores
the registers back and writes its ``DONE`` port.  A read of ``WAIT`` that
returns 0 tells the agent to stop.
"""

from __future__ import annotations

import struct
import threading
from dataclasses import dataclass
from typing import Final

from pyflank.abi import SLOTS, VMCALL_IN_BUFFER_SIZE, VMCALL_OUT_BUFFER_SIZE
from pyflank.memory import GuestPhysicalMemory

BASE_PORT: Final = 0x0510
COMMAND_STOP: Final = 0
COMMAND_VMCALL: Final = 1

REGISTERS_OFFSET: Final = 0x0
IN_OFFSET: Final = 0x1000
OUT_OFFSET: Final = IN_OFFSET + VMCALL_IN_BUFFER_SIZE
SLOT_SIZE: Final = OUT_OFFSET + VMCALL_OUT_BUFFER_SIZE
_REGISTERS = struct.Struct(f"<{len(SLOTS)}Q")  # slot i at 8 i, as VMCALL_LOAD_SLOTS reads it


class MailboxError(Exception):
    """A request the mailbox cannot carry (bad vCPU, stopped agent, timeout)."""


@dataclass(frozen=True)
class VmcallReply:
    registers: tuple[int, ...]  # r00-r15 after the vmcall
    out: bytes  # the output buffer, whole; the handler's r09 says how much is meaningful


class _Slot:
    def __init__(self) -> None:
        self.lock = threading.Lock()  # one request at a time per vCPU
        self.request = threading.Event()
        self.done = threading.Event()
        self.stopping = False


class Mailbox:
    """Port I/O device; ``vmcall`` is called from service threads."""

    def __init__(self, memory: GuestPhysicalMemory, base: int, vcpus: int) -> None:
        if base % 0x1000 or not memory.contains(base, SLOT_SIZE * vcpus):
            raise ValueError(f"mailbox slots at {base:#x} do not fit in guest RAM")
        self.memory = memory
        self.base = base
        self._slots = [_Slot() for _ in range(vcpus)]

    def slot_address(self, vcpuid: int) -> int:
        return self.base + vcpuid * SLOT_SIZE

    # -- the service side -------------------------------------------------------
    def vmcall(
        self, vcpuid: int, registers: list[int], data: bytes = b"", timeout: float = 30.0
    ) -> VmcallReply:
        """Have vCPU ``vcpuid``'s agent execute a vmcall; DATA buffers are the slot's."""
        if not 0 <= vcpuid < len(self._slots):
            raise MailboxError(f"no vCPU {vcpuid} (the VMM runs {len(self._slots)})")
        if len(registers) != len(SLOTS) or len(data) > VMCALL_IN_BUFFER_SIZE:
            raise MailboxError("a vmcall carries 16 registers and at most 32 pages of data")
        slot, address = self._slots[vcpuid], self.slot_address(vcpuid)
        with slot.lock:
            if slot.stopping:
                raise MailboxError(f"the agent on vCPU {vcpuid} has stopped")
            self.memory.write(address + REGISTERS_OFFSET, _REGISTERS.pack(*registers))
            self.memory.write(address + IN_OFFSET, data)
            self.memory.fill(address + OUT_OFFSET, VMCALL_OUT_BUFFER_SIZE)
            slot.done.clear()
            slot.request.set()
            if not slot.done.wait(timeout):
                raise MailboxError(f"the agent on vCPU {vcpuid} did not answer in {timeout} s")
            values = _REGISTERS.unpack(self.memory.read(address, _REGISTERS.size))
            out = self.memory.read(address + OUT_OFFSET, VMCALL_OUT_BUFFER_SIZE)
        return VmcallReply(values, out)

    def stop(self) -> None:
        """Release every agent: its next WAIT returns the stop command."""
        for slot in self._slots:
            slot.stopping = True
            slot.request.set()

    # -- the guest side (port I/O on the vCPU's thread) -------------------------
    @property
    def port_count(self) -> int:
        """Ports the device manager places from ``BASE_PORT``: WAIT and DONE per vCPU."""
        return 2 * len(self._slots)

    def read(self, offset: int, size: int) -> int:
        vcpuid, done = divmod(offset, 2)
        if done:
            return (1 << (8 * size)) - 1
        slot = self._slots[vcpuid]
        if not slot.stopping:
            slot.request.wait()
            slot.request.clear()
        return COMMAND_STOP if slot.stopping else COMMAND_VMCALL

    def write(self, offset: int, size: int, value: int) -> None:
        vcpuid, done = divmod(offset, 2)
        if done:
            self._slots[vcpuid].done.set()
