"""The mailbox device between the VMM service and the guest agent.

Each vCPU has a slot in guest memory: the vmcall registers r00-r15, then a
32-page input buffer and a 32-page output buffer, and a pair of ports (offsets
``WAIT`` = 2 * vcpuid, ``DONE`` = WAIT + 1 on the bus; the service places them
at ``BASE_PORT``).  The agent reads its
``WAIT`` port, which blocks (on the vCPU's own thread) until the service
posts a request, runs the vmcall with the slot's registers and buffers, stores
the registers back and writes its ``DONE`` port.  A read of ``WAIT`` that
returns 0 tells the agent to stop.

An answer goes to the request the agent took, never to whoever asks next: a caller
that stopped waiting loses its own reply and nobody else's.
"""

from __future__ import annotations

import struct
import threading
import time
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


@dataclass(eq=False)
class _Request:
    """One vmcall; the agent's answer is matched to the request it took, by identity."""

    reply: VmcallReply | None = None
    cancelled: bool = False  # its caller gave up: the agent's answer is dropped


class _Slot:
    """One vCPU's mailbox.  A request is posted, then taken by the agent, then answered;
    the slot's memory belongs to the agent from taking to answering, so the next request
    waits for the answer even when its predecessor's caller stopped waiting."""

    def __init__(self) -> None:
        self.changed = threading.Condition()
        self.posted: _Request | None = None  # waiting for the agent's WAIT
        self.taken: _Request | None = None  # the agent runs it: the slot is the agent's
        self.stopped: str | None = None  # why the agent will answer no more

    def idle(self) -> bool:
        return self.posted is None and self.taken is None


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
        """Have vCPU ``vcpuid``'s agent execute a vmcall; DATA buffers are the slot's.

        Requests to one vCPU run one at a time, in turn.  A request that times out is
        withdrawn if the agent has not taken it yet; if it has, its answer, when it comes,
        is dropped, and the next request waits for it rather than receive it.
        """
        if not 0 <= vcpuid < len(self._slots):
            raise MailboxError(f"no vCPU {vcpuid} (the VMM runs {len(self._slots)})")
        if len(registers) != len(SLOTS) or len(data) > VMCALL_IN_BUFFER_SIZE:
            raise MailboxError("a vmcall carries 16 registers and at most 32 pages of data")
        slot, address = self._slots[vcpuid], self.slot_address(vcpuid)
        deadline = time.monotonic() + timeout
        with slot.changed:
            if not slot.changed.wait_for(lambda: slot.idle() or slot.stopped, timeout):
                raise MailboxError(
                    f"the agent on vCPU {vcpuid} is still busy with an earlier vmcall "
                    f"after {timeout} s"
                )
            self._raise_if_stopped(slot, vcpuid)
            self.memory.write(address + REGISTERS_OFFSET, _REGISTERS.pack(*registers))
            self.memory.write(address + IN_OFFSET, data)
            self.memory.fill(address + OUT_OFFSET, VMCALL_OUT_BUFFER_SIZE)
            request = slot.posted = _Request()
            slot.changed.notify_all()
            remaining = max(0.0, deadline - time.monotonic())
            slot.changed.wait_for(lambda: request.reply is not None or slot.stopped, remaining)
            if request.reply is not None:
                return request.reply
            if slot.posted is request:
                slot.posted = None  # withdrawn: the agent never sees it
            request.cancelled = True
            self._raise_if_stopped(slot, vcpuid)
            raise MailboxError(f"the agent on vCPU {vcpuid} did not answer in {timeout} s")

    @staticmethod
    def _raise_if_stopped(slot: _Slot, vcpuid: int) -> None:
        if slot.stopped is not None:
            raise MailboxError(f"vCPU {vcpuid} has stopped: {slot.stopped}")

    def stop_vcpu(self, vcpuid: int, reason: str) -> None:
        """The agent on ``vcpuid`` will answer no more: fail its callers with ``reason``."""
        slot = self._slots[vcpuid]
        with slot.changed:
            if slot.stopped is None:
                slot.stopped = reason
            slot.changed.notify_all()

    def stop(self, reason: str = "the VMM is stopping") -> None:
        """Release every agent: its next WAIT returns the stop command."""
        for vcpuid in range(len(self._slots)):
            self.stop_vcpu(vcpuid, reason)

    def stopped(self, vcpuid: int) -> str | None:
        """Why the agent on ``vcpuid`` stopped answering (None while it answers)."""
        return self._slots[vcpuid].stopped

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
        with slot.changed:
            slot.changed.wait_for(lambda: slot.posted is not None or slot.stopped)
            if slot.stopped is not None:
                return COMMAND_STOP
            slot.taken, slot.posted = slot.posted, None
        return COMMAND_VMCALL

    def write(self, offset: int, size: int, value: int) -> None:
        vcpuid, done = divmod(offset, 2)
        if not done:
            return
        slot, address = self._slots[vcpuid], self.slot_address(vcpuid)
        with slot.changed:
            request, slot.taken = slot.taken, None
            if request is None:
                return  # a DONE nobody asked for (a confused guest): nothing to answer
            if not request.cancelled:  # read before the slot is free for the next request
                values = _REGISTERS.unpack(self.memory.read(address, _REGISTERS.size))
                out = self.memory.read(address + OUT_OFFSET, VMCALL_OUT_BUFFER_SIZE)
                request.reply = VmcallReply(values, out)
            slot.changed.notify_all()
