"""The mailbox device between the VMM service and the guest agent.

Each vCPU has a slot in guest memory: the vmcall registers r00-r15, then a 32-page input
buffer and a 32-page output buffer, and a pair of ports (offsets ``WAIT`` = 2 * vcpuid,
``DONE`` = WAIT + 1 on the bus; the service places them at ``BASE_PORT``).  The agent
reads its ``WAIT`` port, which blocks (on the vCPU's own thread) until a request is
posted, runs the vmcall with the slot's registers and buffers, stores the registers back
and reads its ``DONE`` port: that posts the answer and waits for the next request, one
exit for both (a write of ``DONE`` posts the answer alone).  A wait that returns 0 tells
the agent to stop.

A vmcall touches only the guest memory it uses: its registers and its input bytes on the
way in; the registers and the output the handler reported (``reply_size`` of a DATA
vmcall that did not fail) on the way back.  The rest of the buffers is left as it was.

Requests are asynchronous (``submit``): each is answered exactly once, by a call of its
``done`` function from the thread that settles it -- the vCPU's own when the agent
answers, so that no other thread has to wake up in between -- and ``vmcall`` is the
blocking form.  Requests to one vCPU run one at a time, in turn; the next one is posted
by the vCPU thread as it finishes the last, and its agent takes it without waiting.

An answer goes to the request the agent took, never to whoever asks next: a request
that is cancelled before the agent takes it is withdrawn, and one cancelled while the
agent runs it loses its answer, which nobody else receives.
"""

from __future__ import annotations

import _thread
import logging
import struct
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pyflank.abi import (
    BF_VMCALL_FAILURE,
    DATA,
    OPCODE_SLOT,
    SLOTS,
    STATUS_SLOT,
    VMCALL_IN_BUFFER_SIZE,
    VMCALL_OUT_BUFFER_SIZE,
    VmcallOpcode,
)
from pyflank.memory import GuestPhysicalMemory

log = logging.getLogger("pyflank.platform.mailbox")

BASE_PORT: Final = 0x0510
COMMAND_STOP: Final = 0
COMMAND_VMCALL: Final = 1

REGISTERS_OFFSET: Final = 0x0
IN_OFFSET: Final = 0x1000
OUT_OFFSET: Final = IN_OFFSET + VMCALL_IN_BUFFER_SIZE
SLOT_SIZE: Final = OUT_OFFSET + VMCALL_OUT_BUFFER_SIZE
_REGISTERS = struct.Struct(f"<{len(SLOTS)}Q")  # slot i at 8 i, as VMCALL_LOAD_SLOTS reads it
_OPCODE, _STATUS = SLOTS.index(OPCODE_SLOT), SLOTS.index(STATUS_SLOT)
_IN_ADDR, _IN_SIZE = DATA.index("in_addr"), DATA.index("in_size")
_OUT_ADDR, _OUT_SIZE = DATA.index("out_addr"), DATA.index("out_size")
_REPLY_SIZE = DATA.index("reply_size")


class MailboxError(Exception):
    """A request the mailbox cannot carry (bad vCPU, stopped agent, timeout)."""


@dataclass(frozen=True)
class VmcallReply:
    registers: tuple[int, ...]  # r00-r15 after the vmcall
    out: bytes  # the output the handler reported (a DATA vmcall that did not fail), else b""


Done = Callable[[VmcallReply | None, str], None]  # (the reply, or None and why not)

_QUEUED, _POSTED, _TAKEN, _SETTLED = range(4)


class Ticket:
    """One request, from ``submit`` until it is settled (answered, failed or cancelled)."""

    __slots__ = ("data", "done", "out_size", "registers", "state", "vcpuid")

    def __init__(
        self, vcpuid: int, registers: list[int], data: bytes, out_size: int, done: Done
    ) -> None:
        self.vcpuid = vcpuid
        self.registers = registers
        self.data = data
        self.out_size = out_size
        self.done = done
        self.state = _QUEUED

    @property
    def settled(self) -> bool:
        return self.state == _SETTLED


class _Slot:
    """One vCPU's mailbox.  The slot's memory belongs to the request the agent has taken
    until it answers, so the next one waits in ``queue`` even if its predecessor was
    cancelled."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # A binary signal for the agent's WAIT: locked while there is nothing new to see.
        self.news = _thread.allocate_lock()
        self.news.acquire()
        self.queue: deque[Ticket] = deque()
        self.posted: Ticket | None = None  # in memory, waiting for the agent's WAIT
        self.taken: Ticket | None = None  # the agent runs it: the slot is the agent's
        self.stopped: str | None = None  # why the agent will answer no more

    def tell_agent(self) -> None:
        """Wake the agent's WAIT (called with ``lock`` held)."""
        if self.news.locked():
            self.news.release()


class Mailbox:
    """Port I/O device; ``submit``, ``cancel`` and ``vmcall`` are called from service
    threads, ``read`` and ``write`` from the vCPUs'."""

    def __init__(self, memory: GuestPhysicalMemory, base: int, vcpus: int) -> None:
        if base % 0x1000 or not memory.contains(base, SLOT_SIZE * vcpus):
            raise ValueError(f"mailbox slots at {base:#x} do not fit in guest RAM")
        self.memory = memory
        self.base = base
        self._slots = [_Slot() for _ in range(vcpus)]

    def slot_address(self, vcpuid: int) -> int:
        return self.base + vcpuid * SLOT_SIZE

    # -- the service side -------------------------------------------------------------
    def submit(
        self,
        vcpuid: int,
        registers: list[int],
        data: bytes,
        done: Done,
        out_size: int = VMCALL_OUT_BUFFER_SIZE,
    ) -> Ticket:
        """Have vCPU ``vcpuid``'s agent execute a vmcall; ``done`` receives the answer.

        A DATA vmcall's buffers are the slot's: its in/out addresses and sizes are filled
        in here (``out_size`` bytes of output at most).  ``MailboxError`` at once for a
        request no agent could carry; a stopped agent fails it through ``done``.
        """
        if not 0 <= vcpuid < len(self._slots):
            raise MailboxError(f"no vCPU {vcpuid} (the VMM runs {len(self._slots)})")
        if len(registers) != len(SLOTS) or len(data) > VMCALL_IN_BUFFER_SIZE:
            raise MailboxError("a vmcall carries 16 registers and at most 32 pages of data")
        if not 0 <= out_size <= VMCALL_OUT_BUFFER_SIZE:
            raise MailboxError("a vmcall's output is at most 32 pages")
        registers = list(registers)
        if registers[_OPCODE] == VmcallOpcode.DATA:
            address = self.slot_address(vcpuid)
            registers[_IN_ADDR], registers[_IN_SIZE] = address + IN_OFFSET, len(data)
            registers[_OUT_ADDR], registers[_OUT_SIZE] = address + OUT_OFFSET, out_size
        ticket = Ticket(vcpuid, registers, data, out_size, done)
        slot = self._slots[vcpuid]
        with slot.lock:
            failed = slot.stopped
            if failed is None:
                if slot.posted is None and slot.taken is None and not slot.queue:
                    self._post(slot, ticket)
                else:
                    slot.queue.append(ticket)
            else:
                ticket.state = _SETTLED
        if failed is not None:
            self._settle(ticket, None, f"vCPU {vcpuid} has stopped: {failed}")
        return ticket

    def cancel(self, ticket: Ticket, after: float) -> bool:
        """Give up on ``ticket`` (its caller waited ``after`` seconds); whether it was
        still unsettled.  Its ``done`` then hears why."""
        slot = self._slots[ticket.vcpuid]
        with slot.lock:
            state = ticket.state
            if state == _SETTLED:
                return False
            ticket.state = _SETTLED
            if state == _QUEUED:
                slot.queue.remove(ticket)
                why = "is still busy with an earlier vmcall after"
            else:
                why = "did not answer in"
                if state == _POSTED:  # withdrawn: the agent never sees it
                    slot.posted = None
                    self._post_next(slot)
            # _TAKEN: the agent's answer, when it comes, is dropped (write() sees it settled)
        self._settle(ticket, None, f"the agent on vCPU {ticket.vcpuid} {why} {after} s")
        return True

    def vmcall(
        self,
        vcpuid: int,
        registers: list[int],
        data: bytes = b"",
        timeout: float = 30.0,
        out_size: int = VMCALL_OUT_BUFFER_SIZE,
    ) -> VmcallReply:
        """``submit``, waiting up to ``timeout`` seconds for the answer (then ``cancel``)."""
        answered = _thread.allocate_lock()
        answered.acquire()
        outcome: list[tuple[VmcallReply | None, str]] = []

        def done(reply: VmcallReply | None, error: str) -> None:
            outcome.append((reply, error))
            answered.release()

        ticket = self.submit(vcpuid, registers, data, done, out_size)
        if not answered.acquire(timeout=max(0.0, timeout)):
            self.cancel(ticket, timeout)
            answered.acquire()  # settled by now, by cancel or by whoever beat it to it
        reply, error = outcome[0]
        if reply is None:
            raise MailboxError(error)
        return reply

    def stop_vcpu(self, vcpuid: int, reason: str) -> None:
        """The agent on ``vcpuid`` will answer no more: fail its callers with ``reason``."""
        slot = self._slots[vcpuid]
        with slot.lock:
            if slot.stopped is None:
                slot.stopped = reason
            failed = [*slot.queue, slot.posted, slot.taken]
            slot.queue.clear()
            slot.posted = None  # slot.taken stays: a DONE still to come finds it settled
            unsettled = [t for t in failed if t is not None and t.state != _SETTLED]
            for ticket in unsettled:
                ticket.state = _SETTLED
            slot.tell_agent()
            text = f"vCPU {vcpuid} has stopped: {slot.stopped}"
        for ticket in unsettled:
            self._settle(ticket, None, text)

    def stop(self, reason: str = "the VMM is stopping") -> None:
        """Release every agent: its next WAIT returns the stop command."""
        for vcpuid in range(len(self._slots)):
            self.stop_vcpu(vcpuid, reason)

    def stopped(self, vcpuid: int) -> str | None:
        """Why the agent on ``vcpuid`` stopped answering (None while it answers)."""
        return self._slots[vcpuid].stopped

    # -- moving requests through a slot (with its lock held) ----------------------------
    def _post(self, slot: _Slot, ticket: Ticket) -> None:
        address = self.slot_address(ticket.vcpuid)
        self.memory.write(address + REGISTERS_OFFSET, _REGISTERS.pack(*ticket.registers))
        if ticket.data:
            self.memory.write(address + IN_OFFSET, ticket.data)
        ticket.state = _POSTED
        slot.posted = ticket
        slot.tell_agent()

    def _post_next(self, slot: _Slot) -> None:
        if slot.queue and slot.stopped is None:
            self._post(slot, slot.queue.popleft())

    def _answer(self, ticket: Ticket) -> VmcallReply:
        address = self.slot_address(ticket.vcpuid)
        values = _REGISTERS.unpack(self.memory.read(address + REGISTERS_OFFSET, _REGISTERS.size))
        out = b""
        if values[_OPCODE] == VmcallOpcode.DATA and values[_STATUS] != BF_VMCALL_FAILURE:
            used = min(values[_REPLY_SIZE], ticket.out_size)
            out = self.memory.read(address + OUT_OFFSET, used) if used else b""
        return VmcallReply(values, out)

    @staticmethod
    def _settle(ticket: Ticket, reply: VmcallReply | None, error: str) -> None:
        try:
            ticket.done(reply, error)
        except Exception:  # a caller's bug must not stop the vCPU answering
            log.exception("a vmcall's done callback failed")

    # -- the guest side (port I/O on the vCPU's thread) -------------------------------
    @property
    def port_count(self) -> int:
        """Ports the device manager places from ``BASE_PORT``: WAIT and DONE per vCPU."""
        return 2 * len(self._slots)

    def read(self, offset: int, size: int) -> int:
        vcpuid, done = divmod(offset, 2)
        if done:
            self._answered(vcpuid)
        slot = self._slots[vcpuid]
        while True:
            with slot.lock:
                if slot.stopped is not None:
                    return COMMAND_STOP
                ticket = slot.posted
                if ticket is not None:
                    slot.posted, slot.taken = None, ticket
                    ticket.state = _TAKEN
                    return COMMAND_VMCALL
            slot.news.acquire()  # until a request is posted or the agent is stopped

    def write(self, offset: int, size: int, value: int) -> None:
        vcpuid, done = divmod(offset, 2)
        if done:
            self._answered(vcpuid)

    def _answered(self, vcpuid: int) -> None:
        """The agent on ``vcpuid`` posted its answer: settle the request it took."""
        slot = self._slots[vcpuid]
        with slot.lock:
            ticket, slot.taken = slot.taken, None
            if ticket is None:
                return  # a DONE nobody asked for (a confused guest): nothing to answer
            answered = ticket.state == _TAKEN
            if answered:  # read before the slot is free for the next request
                reply = self._answer(ticket)
                ticket.state = _SETTLED
            self._post_next(slot)
        if answered:
            self._settle(ticket, reply, "")
