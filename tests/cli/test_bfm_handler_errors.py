"""A handler that raises under bfm: the vmcall that triggered it fails at once with the
exception and the handler frame, status reports the vCPU's state, later vmcalls fail at
once with the reason, dump shows the traceback, stop cleans up (issue 12 item 3, issue 11
defect 4).  On every backend."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from bfm_helpers import Bfm

EXTENSION = """
from pyflank.exit_handler import ExitHandlerIntelX64

class Fragile(ExitHandlerIntelX64):
    def handle_vmcall_data_string_unformatted(self, istr: str) -> str:
        if istr == "crash":
            raise SystemExit("asked to crash")  # not an Exception: escapes handle_vmcall
        return istr

    def handle_vmcall_event(self, regs) -> None:
        self.halt()  # the agent's vCPU stops: nothing will answer any more
"""


@pytest.fixture
def fragile(backend: str, tmp_path: Path) -> Iterator[Bfm]:
    (tmp_path / "fragile.py").write_text(EXTENSION)
    bfm = Bfm(tmp_path / "run")
    started = bfm("quick", str(tmp_path / "fragile.py"), "--backend", backend, "--vcpus", "2")
    assert started.code == 0, started
    yield bfm
    bfm("stop")


@pytest.mark.parametrize(("text", "raised"), [("crash", "SystemExit: asked to crash")])
def test_a_crashing_handler_fails_its_vmcall_at_once_with_the_report(
    fragile: Bfm, text: str, raised: str
) -> None:
    assert fragile("vmcall", "string", "unformatted", "fine").out == "received from vmm: fine"
    started = time.monotonic()
    reason = fragile.fails("vmcall", "string", "unformatted", text)
    assert time.monotonic() - started < 10  # not the 30 s the service waits for an answer
    assert "vCPU 0 has stopped: handler error" in reason
    assert raised in reason
    assert "raised at handle_vmcall_data_string_unformatted (fragile.py:" in reason
    status = fragile("status").out.splitlines()
    assert status[0] == "VMM_CORRUPT"
    assert status[1].startswith("vcpu 0: stopped (handler error): the exit handler raised")
    assert len(status) == 2  # vCPU 1 still runs
    assert "vcpu 1: running" in fragile("status", "-v").out
    again = fragile.fails("vmcall", "versions", "1")  # at once, with the reason
    assert "VMM_CORRUPT" in again and raised in again
    ring = fragile("dump").out
    assert "Traceback (most recent call last)" in ring and raised in ring
    assert "cleaned up" in fragile("stop").out
    assert fragile("status").out == "VMM_LOADED"
    assert raised in fragile("dump").out  # as in Bareflank, the ring outlives the run
    assert fragile("start").code == 0  # and the VMM starts afresh
    assert fragile("vmcall", "versions", "1").code == 0


def test_a_vcpu_whose_agent_stopped_is_not_running(fragile: Bfm) -> None:
    """A dead guest agent used to leave the VMM VMM_RUNNING, every vmcall hanging 30 s."""
    reason = fragile.fails("vmcall", "event", "1")
    assert "vCPU 0 has stopped: halted" in reason
    status = fragile("status").out.splitlines()
    assert status[0] == "VMM_CORRUPT"
    assert status[1].startswith("vcpu 0: stopped (halted)")
