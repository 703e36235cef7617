"""Break on exit: the vCPU stops at the chosen exit, before the handler sees it, with the
guest state and the exit's information there."""

from __future__ import annotations

from pathlib import Path

import pytest
from observe_helpers import FIRST_OUT, FIRST_RDMSR, CountingPortExits, rounds_vm

from pyflank.backends.base import StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.observe import BreakOnExit, ExitStatistics, ExitTrace, read_trace


def test_break_on_a_reason_before_the_handler_sees_it(backend: str) -> None:
    breaks, stats = BreakOnExit(reasons=[ExitReason.IO_INSTRUCTION]), ExitStatistics()
    vm = rounds_vm(backend, CountingPortExits, observers=[breaks, stats])
    [result] = vm.run(timeout=10)
    assert result.reason is StopReason.BREAK
    assert result.message == (
        f"break on exit 30 (io_instruction) at RIP {FIRST_OUT:#x}: exit 3 of vCPU 0"
    )
    assert result.state.rip == FIRST_OUT  # the state at the exit, not past it
    assert result.state.rcx == 0x277
    assert result.vmcs.read(f.VM_EXIT_REASON) == ExitReason.IO_INSTRUCTION
    assert result.vmcs.read(f.EXIT_QUALIFICATION) == 0x80 << 16 | 1 << 6
    handler = vm.vcpus[0].handler
    assert isinstance(handler, CountingPortExits)
    assert handler.counts == {ExitReason.RDMSR: 3}  # the broken exit never reached it
    assert result.exits == stats.exits() == 3  # an observer after the break does not see it
    assert [(h.vcpu, h.exit, h.reason, h.rip) for h in breaks.hits] == [
        (0, 3, ExitReason.IO_INSTRUCTION, FIRST_OUT)
    ]
    assert "vcpu stopped (break)" in result.debug_ring


def test_break_on_a_rip_after_skipping_and_on_some_vcpus(backend: str) -> None:
    second_rdmsr = FIRST_RDMSR + 2
    breaks = BreakOnExit(rips=[second_rdmsr], skip=1, vcpus=[1])
    results = rounds_vm(backend, vcpus=2, observers=[breaks]).run(timeout=10)
    assert results[0].reason is StopReason.GUEST_HLT  # not watched
    assert results[1].reason is StopReason.BREAK
    assert results[1].state.rip == second_rdmsr
    assert results[1].exits == 5 + 1  # round 0, then the first RDMSR of round 1
    assert [(h.vcpu, h.exit) for h in breaks.hits] == [(1, 6)]


def test_break_on_a_condition_with_the_trace_before_it(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    breaks = BreakOnExit(when=lambda record: record.info.reason == ExitReason.RDMSR, skip=2)
    [result] = rounds_vm(backend, observers=[ExitTrace(path), breaks]).run(timeout=10)
    assert result.reason is StopReason.BREAK and result.state.rip == FIRST_RDMSR + 4
    trace = read_trace(path)
    assert len(trace.exits) == 2  # the trace saw the exit break, but no handler ran on it
    assert trace.vcpus[0].stop == "break" and trace.vcpus[0].message == result.message


def test_a_break_needs_something_to_break_on() -> None:
    with pytest.raises(ValueError, match="needs exit reasons, RIPs or a condition"):
        BreakOnExit()
    with pytest.raises(ValueError, match=r"not basic exit reasons: \[65536\]"):
        BreakOnExit(reasons=[0x10000])
    with pytest.raises(ValueError, match="skip must be 0 or more"):
        BreakOnExit(reasons=[10], skip=-1)
