"""The mailbox between the VMM service and the guest agent, driven by a simulated agent:
replies go to the request they answer, a timed-out request is withdrawn or its late
answer dropped, and a stopped agent fails its callers at once with the reason."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator

import pytest

from pyflank.abi import BF_VMCALL_SUCCESS, VmcallOpcode
from pyflank.memory import GuestPhysicalMemory
from pyflank.memory.physical import Buffer
from pyflank.platform.mailbox import (
    COMMAND_STOP,
    IN_OFFSET,
    OUT_OFFSET,
    REGISTERS_OFFSET,
    Mailbox,
    MailboxError,
    VmcallReply,
)

BASE = 0x100000
REGS = struct.Struct("<16Q")
SLOW = 0x5105


class Agent:
    """What guests/agent.s does, in Python: take a request, answer r01 = r02 + 1."""

    def __init__(self, mailbox: Mailbox, memory: GuestPhysicalMemory, delay: float) -> None:
        self.mailbox, self.memory, self.delay = mailbox, memory, delay
        self.served = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while self.mailbox.read(0, 4) != COMMAND_STOP:  # vCPU 0's WAIT
            regs = list(REGS.unpack(self.memory.read(BASE, REGS.size)))
            if regs[2] == SLOW:
                time.sleep(self.delay)
            regs[1] = regs[2] + 1
            self.memory.write(BASE, REGS.pack(*regs))
            self.served += 1
            self.mailbox.write(1, 4, 0)  # its DONE


@pytest.fixture
def mailbox() -> Iterator[tuple[Mailbox, GuestPhysicalMemory]]:
    memory = GuestPhysicalMemory(4 << 20)
    box = Mailbox(memory, BASE, 1)
    yield box, memory
    box.stop()


def _regs(r02: int) -> list[int]:
    return [0, 0, r02] + [0] * 13


def test_a_late_reply_never_reaches_the_next_caller(
    mailbox: tuple[Mailbox, GuestPhysicalMemory],
) -> None:
    box, memory = mailbox
    agent = Agent(box, memory, delay=0.6)
    with pytest.raises(MailboxError, match=r"did not answer in 0\.2 s"):
        box.vmcall(0, _regs(SLOW), timeout=0.2)
    # The agent is still on the slow request: the next one waits for it, then runs.
    reply = box.vmcall(0, _regs(41), timeout=5)
    assert reply.registers[1] == 42  # was SLOW + 1: the previous caller's reply
    assert box.vmcall(0, _regs(7), timeout=5).registers[1] == 8
    assert agent.served == 3  # nothing lost: the slow one ran, its answer was dropped


def test_a_request_the_agent_never_took_is_withdrawn(
    mailbox: tuple[Mailbox, GuestPhysicalMemory],
) -> None:
    box, memory = mailbox
    with pytest.raises(MailboxError, match="did not answer"):
        box.vmcall(0, _regs(1), timeout=0.1)  # no agent yet
    agent = Agent(box, memory, delay=0)
    assert box.vmcall(0, _regs(5), timeout=5).registers[1] == 6
    assert agent.served == 1  # the withdrawn request never ran


def test_busy_agent_times_out_the_next_caller_without_a_reply(
    mailbox: tuple[Mailbox, GuestPhysicalMemory],
) -> None:
    box, memory = mailbox
    Agent(box, memory, delay=1.0)
    with pytest.raises(MailboxError):
        box.vmcall(0, _regs(SLOW), timeout=0.1)
    with pytest.raises(MailboxError, match="still busy"):
        box.vmcall(0, _regs(3), timeout=0.2)


def test_a_stopped_vcpu_fails_its_waiting_caller_at_once(
    mailbox: tuple[Mailbox, GuestPhysicalMemory],
) -> None:
    box, _ = mailbox
    threading.Timer(0.2, box.stop_vcpu, (0, "handler error: ValueError: boom")).start()
    started = time.monotonic()
    with pytest.raises(MailboxError, match="vCPU 0 has stopped: handler error: ValueError"):
        box.vmcall(0, _regs(1), timeout=30)
    assert time.monotonic() - started < 5  # not the 30 s timeout
    with pytest.raises(MailboxError, match="has stopped: handler error"):
        box.vmcall(0, _regs(1), timeout=30)  # and every later call, at once
    assert box.stopped(0) == "handler error: ValueError: boom"


def test_concurrent_callers_each_get_their_own_reply(
    mailbox: tuple[Mailbox, GuestPhysicalMemory],
) -> None:
    box, memory = mailbox
    Agent(box, memory, delay=0)
    wrong: list[int] = []

    def caller(base: int) -> None:
        for i in range(50):
            if box.vmcall(0, _regs(base + i), timeout=10).registers[1] != base + i + 1:
                wrong.append(base + i)

    threads = [threading.Thread(target=caller, args=(k * 1000,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wrong == []


class Recording(GuestPhysicalMemory):
    """Guest RAM that lists every access the mailbox makes: (kind, offset in the slot,
    length)."""

    def __init__(self, size: int) -> None:
        super().__init__(size)
        self.accesses: list[tuple[str, int, int]] = []

    def read(self, gpa: int, length: int) -> bytes:
        self.accesses.append(("read", gpa - BASE, length))
        return super().read(gpa, length)

    def write(self, gpa: int, data: Buffer) -> None:
        self.accesses.append(("write", gpa - BASE, len(memoryview(data))))
        super().write(gpa, data)

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        self.accesses.append(("fill", gpa - BASE, length))
        super().fill(gpa, length, byte)


class DataAgent(threading.Thread):
    """A DATA handler in Python, on raw RAM: the reply is the input reversed."""

    def __init__(self, box: Mailbox, raw: memoryview) -> None:
        super().__init__(daemon=True)
        self.box, self.raw = box, raw
        self.threads: set[int] = set()

    def run(self) -> None:
        while self.box.read(0, 4) != COMMAND_STOP:
            regs = list(REGS.unpack(self.raw[BASE : BASE + REGS.size]))
            data = bytes(self.raw[regs[5] : regs[5] + regs[6]])
            self.raw[regs[8] : regs[8] + len(data)] = data[::-1]
            regs[1], regs[9] = BF_VMCALL_SUCCESS, len(data)
            self.raw[BASE : BASE + REGS.size] = REGS.pack(*regs)
            self.box.write(1, 4, 0)


def test_a_vmcall_touches_only_the_bytes_it_uses() -> None:
    """Issue 15: each vmcall zero-filled and read back the whole 128 KiB output buffer."""
    memory = Recording(4 << 20)
    box = Mailbox(memory, BASE, 1)
    agent = DataAgent(box, memory.view)
    agent.start()
    try:
        registers = [int(VmcallOpcode.DATA), 0, 0, 0, 1] + [0] * 11
        memory.accesses.clear()
        reply = box.vmcall(0, registers, b"hello", timeout=5)
        assert reply.out == b"olleh"
        assert memory.accesses == [
            ("write", REGISTERS_OFFSET, REGS.size),  # r00-r15, in
            ("write", IN_OFFSET, 5),  # the input the vmcall carries
            ("read", REGISTERS_OFFSET, REGS.size),  # r00-r15, out
            ("read", OUT_OFFSET, 5),  # the output the handler reported, no more
        ]
        memory.accesses.clear()
        box.vmcall(0, [int(VmcallOpcode.VERSIONS)] + [0] * 15, timeout=5)
        assert memory.accesses == [
            ("write", REGISTERS_OFFSET, REGS.size),
            ("read", REGISTERS_OFFSET, REGS.size),  # no buffers for a vmcall without data
        ]
    finally:
        box.stop()


def test_the_answer_is_delivered_on_the_vcpu_thread_and_exactly_once(
    mailbox: tuple[Mailbox, GuestPhysicalMemory],
) -> None:
    """No thread wakes up between the agent's answer and its caller's callback."""
    box, memory = mailbox
    agent = Agent(box, memory, delay=0)
    answered: list[tuple[int, int]] = []
    done = threading.Event()

    def on_done(reply: VmcallReply | None, error: str) -> None:
        assert reply is not None, error
        answered.append((threading.get_ident(), reply.registers[1]))
        if len(answered) == 20:
            done.set()

    for i in range(20):
        box.submit(0, _regs(i), b"", on_done)  # queued behind each other, none waited for
    assert done.wait(10)
    assert answered == [(agent.thread.ident, i + 1) for i in range(20)]  # in turn, once each


def test_a_queued_request_is_cancelled_without_reaching_the_agent(
    mailbox: tuple[Mailbox, GuestPhysicalMemory],
) -> None:
    box, memory = mailbox
    outcomes: list[str] = []
    first = box.submit(0, _regs(1), b"", lambda reply, error: outcomes.append(error or "ok"))
    queued = box.submit(0, _regs(2), b"", lambda reply, error: outcomes.append(error or "ok"))
    assert box.cancel(queued, 0.5)
    assert not box.cancel(queued, 0.5)  # settled once
    assert outcomes == ["the agent on vCPU 0 is still busy with an earlier vmcall after 0.5 s"]
    agent = Agent(box, memory, delay=0)
    deadline = time.monotonic() + 5
    while len(outcomes) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert outcomes[1] == "ok" and first.settled and agent.served == 1


def test_reading_done_answers_and_waits_for_the_next_request_in_one_exit(
    mailbox: tuple[Mailbox, GuestPhysicalMemory],
) -> None:
    """What guests/agent.s does: one port read posts the answer and takes the next."""
    box, memory = mailbox
    served: list[int] = []

    def agent() -> None:
        command = box.read(0, 4)  # the first WAIT
        while command != COMMAND_STOP:
            regs = list(REGS.unpack(memory.read(BASE, REGS.size)))
            regs[1] = regs[2] + 1
            memory.write(BASE, REGS.pack(*regs))
            served.append(regs[2])
            command = box.read(1, 4)  # DONE, and the WAIT for the next

    thread = threading.Thread(target=agent, daemon=True)
    thread.start()
    assert [box.vmcall(0, _regs(i), timeout=5).registers[1] for i in range(5)] == [1, 2, 3, 4, 5]
    box.stop()
    thread.join(5)
    assert not thread.is_alive() and served == [0, 1, 2, 3, 4]
