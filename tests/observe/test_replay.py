"""A trace recorded on a real guest replays into a handler with no CPU: the same handler
decides the same at every exit; a changed one is caught at its first different decision."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import replay_handlers as handlers
from observe_helpers import PortExits, rounds_vm

from pyflank.abi import BF_VMCALL_SUCCESS
from pyflank.backends.base import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.observe import ExitTrace, Trace, TraceError, read_trace, replay
from pyflank.vmm import Vm

HANDLERS = Path(handlers.__file__)


def record(backend: str, path: Path, **trace: bool) -> Trace:
    vm = Vm(handlers.Commands, backend=backend, observers=[ExitTrace(path, **trace)])
    vm.load_asm(handlers.GUEST)
    [result] = vm.run(timeout=10)
    assert result.reason is StopReason.GUEST_HLT, result.message
    assert result.state.r15 == BF_VMCALL_SUCCESS
    assert vm.memory.read(result.state.r11, result.state.r12) == b'{"result":42}'
    return read_trace(path)


@pytest.fixture
def recorded(backend: str, tmp_path: Path) -> Trace:
    return record(backend, tmp_path / "run.jsonl")


def exit_of(trace: Trace, reason: int, nth: int = 0) -> int:
    """The index of the ``nth`` exit of ``reason``."""
    return [e.exit for e in trace.exits if e.reason == reason][nth]


def test_the_same_handler_decides_the_same(recorded: Trace) -> None:
    vmcall = next(e for e in recorded.exits if e.reason == ExitReason.VMCALL)
    assert vmcall.memory and vmcall.decided.memory  # page walks and buffers were recorded
    tsc = [e for e in recorded.exits if e.reason == ExitReason.RDMSR][-1]
    assert [c[0] for c in tsc.cpu] == ["rdmsr"]  # the CPU's answer, kept for the replay
    result = replay(recorded, handlers.Commands)
    assert result.matched, result.describe()
    assert result.exits == len(recorded.exits)
    assert result.notes == []
    assert result.describe() == (
        f"replayed {len(recorded.exits)} exits: every decision matches the recording"
    )


def test_a_different_reply_is_caught_in_guest_memory(recorded: Trace) -> None:
    result = replay(recorded, handlers.AddsOneMore)
    divergence = result.divergence
    assert divergence is not None
    vmcall = exit_of(recorded, ExitReason.VMCALL)
    assert divergence.exit.exit == vmcall and result.exits == vmcall
    assert divergence.what.startswith("guest memory at 0x")
    assert (divergence.recorded, divergence.replayed) == (hex(ord("2")), hex(ord("3")))


def test_a_different_register_is_caught_at_its_exit(recorded: Trace) -> None:
    result = replay(recorded, handlers.LiesAboutPatTheSecondTime)
    divergence = result.divergence
    assert divergence is not None
    second_pat = exit_of(recorded, ExitReason.RDMSR, 1)
    assert divergence.exit.exit == second_pat
    assert divergence.what == "rax"
    assert int(divergence.replayed, 16) == int(divergence.recorded, 16) ^ 1
    line = divergence.exit.line
    assert divergence.describe() == (
        f"vCPU 0, exit {second_pat} (rdmsr at RIP {divergence.exit.rip:#x}, trace line {line}): "
        f"rax: the recording has {divergence.recorded}, the replay {divergence.replayed}"
    )
    assert result.describe().startswith(f"replayed {second_pat} exits, then diverged at vCPU 0")


def test_a_halt_and_a_vmcs_write_are_caught(recorded: Trace) -> None:
    tsc = exit_of(recorded, ExitReason.RDMSR, 2)
    halted = replay(recorded, handlers.HaltsAtTheTsc).divergence
    assert halted is not None and halted.exit.exit == tsc
    assert (halted.what, halted.recorded, halted.replayed) == (
        "state", "the guest resumed", "the vCPU halted",
    )  # fmt: skip
    injected = replay(recorded, handlers.InjectsAtTheTsc).divergence
    assert injected is not None and injected.exit.exit == tsc
    assert injected.what == "rip"  # the recorded handler stepped over the RDMSR
    assert injected.recorded == hex(recorded.exits[tsc].rip + 2)


def test_a_trace_without_what_the_handler_was_given_cannot_replay(
    backend: str, tmp_path: Path
) -> None:
    light = record(backend, tmp_path / "light.jsonl", replayable=False)
    with pytest.raises(TraceError, match="not replayable"):
        replay(light, handlers.Commands)


def test_a_broken_trace_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"type": "header", "format": "something else"}\n')
    with pytest.raises(TraceError, match="trace line 1: not a pyflank-exit-trace"):
        read_trace(path)
    header = {"type": "header", "format": "pyflank-exit-trace", "version": 1}
    path.write_text(json.dumps(header) + '\n{"type": "exit", "vcpu": 0}\n')
    with pytest.raises(TraceError, match="trace line 2: missing 'exit'"):
        read_trace(path)
    path.write_text(json.dumps(header) + "\nnot json\n")
    with pytest.raises(TraceError, match="trace line 2: Expecting value"):
        read_trace(path)
    path.write_text("")
    with pytest.raises(TraceError, match="empty trace"):
        read_trace(path)


def observe(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pyflank.observe", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_replay_and_stats_from_the_command_line(recorded: Trace, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    same = observe("replay", str(path), "--handler", f"{HANDLERS}:Commands")
    assert same.returncode == 0, same.stderr
    assert "every decision matches the recording" in same.stdout
    changed = observe("replay", str(path), "--handler", f"{HANDLERS}:AddsOneMore")
    assert changed.returncode == 1
    assert "then diverged at vCPU 0" in changed.stdout and "guest memory at" in changed.stdout
    stats = observe("stats", str(path))
    assert stats.returncode == 0, stats.stderr
    assert stats.stdout.startswith(f"vCPU 0 (stopped: guest hlt): {len(recorded.exits)} exits")
    figures = json.loads(observe("stats", str(path), "--json").stdout)
    rdmsr = figures["vcpus"]["0"]["reasons"][str(int(ExitReason.RDMSR))]
    assert rdmsr["count"] == 3
    missing = observe("replay", str(tmp_path / "none.jsonl"), "--handler", "x.py")
    assert missing.returncode == 2 and missing.stderr.startswith("pyflank.observe: ")
    no_handler = observe("replay", str(path), "--handler", str(tmp_path / "nothing.py"))
    assert no_handler.returncode == 2 and "no such extension file" in no_handler.stderr


def test_every_vcpu_replays_into_its_own_handler(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "smp.jsonl"
    rounds_vm(backend, vcpus=2, observers=[ExitTrace(path)]).run(timeout=10)
    trace = read_trace(path)
    assert {e.vcpu for e in trace.exits} == {0, 1}
    result = replay(trace, PortExits)
    assert result.matched and result.exits == 15, result.describe()
    # The seed does not ask for I/O exits, nor knows what to do with them.
    seed = replay(trace, ExitHandlerIntelX64).divergence
    assert seed is not None and seed.exit.reason == ExitReason.IO_INSTRUCTION
    assert seed.what == "state" and seed.replayed == "the vCPU halted"
