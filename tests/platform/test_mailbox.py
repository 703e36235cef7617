"""The mailbox between the VMM service and the guest agent, driven by a simulated agent:
replies go to the request they answer, a timed-out request is withdrawn or its late
answer dropped, and a stopped agent fails its callers at once with the reason."""

from __future__ import annotations

import struct
import threading
import time
from collections.abc import Iterator

import pytest

from pyflank.memory import GuestPhysicalMemory
from pyflank.platform.mailbox import COMMAND_STOP, Mailbox, MailboxError

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
