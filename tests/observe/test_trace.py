"""ExitTrace on a real guest: one JSON line per exit with the exit's facts and what the
handler changed; instruction counts on the software CPU, null on KVM."""

from __future__ import annotations

import io
import json
from pathlib import Path

from observe_helpers import (
    FIRST_OUT,
    FIRST_RDMSR,
    INSTRUCTIONS_PER_ROUND,
    rdmsrs,
    rounds_vm,
)

from pyflank.backends.base import StopReason
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.observe import ExitStatistics, ExitTrace, read_trace
from pyflank.observe.format import REGISTERS
from pyflank.vmm import Vm

PAT = 0x0007_0406_0007_0406  # the boot state's IA32_PAT


def lines(path: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_one_line_per_exit_with_what_the_handler_changed(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    [result] = rounds_vm(backend, observers=[ExitTrace(path)]).run(timeout=10)
    header, vcpu, *exits, stop = lines(path)
    assert header["type"] == "header" and header["format"] == "pyflank-exit-trace"
    assert header["backend"] == backend and header["memory_size"] == 16 << 20
    assert vcpu["type"] == "vcpu" and str(vcpu["handler"]).endswith("observe_helpers.PortExits")
    assert stop == {"type": "stop", "vcpu": 0, "reason": "guest hlt",
                    "message": result.message, "exits": 5}  # fmt: skip
    assert [e["reason"] for e in exits] == [31, 31, 31, 30, 30]
    assert [e["name"] for e in exits] == ["rdmsr"] * 3 + ["io_instruction"] * 2
    assert [e["exit"] for e in exits] == list(range(5))
    rdmsr, out = exits[0], exits[3]
    assert rdmsr["rip"] == hex(FIRST_RDMSR) and rdmsr["qualification"] == "0x0"
    assert rdmsr["handler"] == {
        "rip": hex(FIRST_RDMSR + 2),
        "regs": {"rax": hex(PAT & 0xFFFF_FFFF), "rdx": hex(PAT >> 32)},
    }
    # OUT 0x80, AL: size 1, out, immediate port (bit 6), port 0x80 in bits 31:16.
    assert out["rip"] == hex(FIRST_OUT) and out["qualification"] == hex(0x80 << 16 | 1 << 6)
    assert out["handler"] == {"rip": hex(FIRST_OUT + 2)}
    # What the handler was given: the registers and the VMCS fields that changed.
    assert set(rdmsr["regs"]) == set(REGISTERS)  # type: ignore[arg-type]
    assert rdmsr["regs"]["rcx"] == "0x277"  # type: ignore[index]
    assert rdmsr["vmcs"]["guest_ia32_pat"] == hex(PAT)  # type: ignore[index]
    assert exits[1]["vmcs"] == {"guest_rip": hex(FIRST_RDMSR + 2)}  # only RIP moved
    assert exits[3]["vmcs"]["exit_reason"] == "0x1e"  # type: ignore[index]
    assert all(e["handler_ns"] > 0 for e in exits)  # type: ignore[operator]
    assert [e["ns"] for e in exits] == sorted(e["ns"] for e in exits)  # type: ignore[type-var]


def expected_counts(vcpu: int) -> list[int]:
    """Instructions begun at each exit of ``vcpu``: lea, then per round mov, rdmsr x3,
    out x2, dec, jnz (the exiting instruction included)."""
    return [
        1 + INSTRUCTIONS_PER_ROUND * round_ + offset
        for round_ in range(vcpu + 1)
        for offset in (2, 3, 4, 5, 6)
    ]


def test_instruction_counts(backend: str, tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    rounds_vm(backend, vcpus=2, observers=[ExitTrace(path)]).run(timeout=10)
    trace = read_trace(path)
    for vcpu in (0, 1):
        counts = [e.instructions for e in trace.exits if e.vcpu == vcpu]
        if backend == "kvm":  # GAPS["instruction_count"]: the count is null
            assert counts == [None] * len(expected_counts(vcpu))
        else:
            assert counts == expected_counts(vcpu)


def test_a_light_trace_and_an_open_file(backend: str) -> None:
    out = io.StringIO()
    stats = ExitStatistics()
    trace = ExitTrace(out, replayable=False, instructions=False)
    vm = rounds_vm(backend, vcpus=2, observers=[trace, stats])
    vm.run(timeout=10)
    assert not out.closed
    parsed = read_trace(io.StringIO(out.getvalue()))
    assert not parsed.replayable
    assert len(parsed.exits) == stats.exits() == trace.lines - 5  # header, 2 vcpu, 2 stop
    assert {e.instructions for e in parsed.exits} == {None}
    first = json.loads(out.getvalue().splitlines()[2])
    assert "regs" not in first and "vmcs" not in first and "handler" in first
    # Lines of the two vCPUs interleave; each vCPU's are in order.
    for vcpu in (0, 1):
        assert [e.exit for e in parsed.exits if e.vcpu == vcpu] == list(range(5 * (vcpu + 1)))
    reasons = [e.reason for e in parsed.exits if e.vcpu == 1]
    assert reasons.count(ExitReason.RDMSR) == rdmsrs(1)


def test_the_pc_platform_run_is_traced_to_its_power_off(backend: str, tmp_path: Path) -> None:
    path, stats = tmp_path / "pc.jsonl", ExitStatistics()
    vm = Vm(platform="pc", backend=backend, observers=[ExitTrace(path), stats])
    vm.load_asm("mov ecx, 0x277\nrdmsr\nmov al, 3\nout 0xf4, al\nhlt")
    [result] = vm.run(timeout=10)
    assert result.reason is StopReason.POWER_OFF, result.message
    trace = read_trace(path)
    assert [e.reason for e in trace.exits] == [ExitReason.RDMSR]  # the OUT is the device's
    assert trace.vcpus[0].stop == "power off" and stats.exits() == 1
