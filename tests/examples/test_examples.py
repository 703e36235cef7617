"""Each example extension, run on a real guest."""

import json
from pathlib import Path

from example_modules import EXAMPLES, example
from pyflank.abi import BF_VMCALL_SUCCESS
from pyflank.backends.base import StopReason
from pyflank.vmm import Vm

__all__ = ["EXAMPLES", "example"]


def run(handler: type, source: str) -> tuple[Vm, object]:
    vm = Vm(handler)
    vm.load_asm('.include "pyflank.inc"\n' + source + "\n    PYFLANK_RUNTIME\n")
    [result] = vm.run(timeout=10)
    return vm, result


def test_cpuid_masking() -> None:
    masking = example("cpuid_masking")
    _, result = run(
        masking.CpuidMasking,
        """
        xor eax, eax
        cpuid
        mov r8, rbx
        mov r9, rdx
        mov r10, rcx
        mov eax, 1
        cpuid
        mov r11, rcx
        mov eax, 0x40000000
        cpuid
        mov r12, rbx
        hlt
        """,
    )
    s = result.state
    vendor = b"".join(r.to_bytes(4, "little") for r in (s.r08, s.r09, s.r10))
    assert result.reason is StopReason.GUEST_HLT
    assert vendor == b"FlankVirtual"
    assert not s.r11 & (1 << 31)
    assert s.r12.to_bytes(4, "little") == b"PyFl"  # only leaf 0 and 1 are masked


def test_msr_audit() -> None:
    audit = example("msr_audit")
    _, result = run(
        audit.MsrAudit,
        """
        mov ecx, 0xC0000080
        rdmsr
        mov r8, rax
        mov ecx, 0xC0000082
        mov eax, 0x12345678
        xor edx, edx
        wrmsr
        rdmsr
        mov r9, rax
        hlt
        """,
    )
    ring = result.debug_ring
    assert result.reason is StopReason.GUEST_HLT
    assert f"rdmsr IA32_EFER = {result.state.r08:#x}" in ring
    assert "wrmsr IA32_LSTAR = 0x12345678" in ring
    assert result.state.r09 == 0x12345678


def test_json_commands() -> None:
    commands = example("json_commands")
    request = json.dumps({"cmd": "add", "args": [1, 2, 39]}).encode()
    vm, result = run(
        commands.JsonCommands,
        f"""
        PYFLANK_INIT
        lea r13, [rip + request]
        lea r14, [rip + reply]
        VMCALL_DATA VMCALL_DATA_JSON, r13, {len(request)}, r14, 64
        hlt
    request: .byte {", ".join(str(b) for b in request)}
    reply: .fill 64, 1, 0
        """,
    )
    s = result.state
    assert result.reason is StopReason.GUEST_HLT
    assert s.rdx == BF_VMCALL_SUCCESS
    assert vm.memory.read(s.r11, s.r12) == b'{"result":42}'


def test_observe_run(tmp_path: Path, capsys: object) -> None:
    observe = example("observe_run")
    observe.main(tmp_path)
    out = capsys.readouterr().out  # type: ignore[attr-defined]
    assert out.startswith("halted: 2318 exits")
    assert "replayed 2318 exits: every decision matches the recording" in out
    assert (tmp_path / "exits.png").read_bytes().startswith(b"\x89PNG")
    assert len((tmp_path / "exits.jsonl").read_text().splitlines()) == 2318 + 3
