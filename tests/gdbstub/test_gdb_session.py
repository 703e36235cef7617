"""The real gdb against the stub on a small guest: breakpoints, single steps, registers and
memory, a watchpoint, a break on a VM exit that continues into the handler, the end."""

from __future__ import annotations

import re
from pathlib import Path

from gdb_helpers import LOAD, instruction_addresses

from gdb_support import debug
from pyflank.intel_x64.cpu import ModelCpu
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.registers import CR0_PE, CR0_PG, EFER_LMA
from pyflank.observe import BreakOnExit
from pyflank.processor import StopReason
from pyflank.vmm import Vm

PROGRAM = """
    mov rax, 1
    mov rbx, 2
    inc rax
    mov qword ptr [rip + data], rax
    cpuid
    add rbx, rax
    mov qword ptr [rip + data], rbx
    hlt
data:
    .quad 0
"""
MOV_RAX, MOV_RBX, INC, STORE, CPUID, ADD, STORE_AGAIN, HLT, DATA = instruction_addresses(PROGRAM)[
    :9
]
MAX_LEAF, GENU, _, _ = ModelCpu().cpuid(0, 0)  # CPUID leaf 0 on the model CPU: EBX "Genu"


def registers(transcript: str, name: str) -> list[int]:
    """Every value ``info registers NAME`` or ``p/x $NAME`` printed, in order."""
    values = re.findall(rf"^{name}\s+(0x[0-9a-f]+)", transcript, re.MULTILINE)
    return [int(v, 16) for v in values]


def test_a_gdb_session_breaks_steps_reads_watches_and_stops_on_an_exit(gdb_binary: str) -> None:
    vm = Vm(gdb=0, observers=[BreakOnExit(reasons=[ExitReason.CPUID])])
    vm.load_asm(PROGRAM)
    session = debug(
        gdb_binary,
        vm,
        [
            "info registers rip",
            f"break *{INC:#x}",
            "continue",
            "info registers rax rip",
            "stepi",
            "info registers rip",
            f"x/gx {DATA:#x}",
            "p/x $cr0",
            "p/x $efer",
            "delete",
            f"watch *(long *){DATA:#x}",
            "continue",
            "info registers rip",
            "delete",
            "set $rax = 0",
            "continue",
            "info registers rax rip",
            "stepi",
            "info registers rax rbx rip",
            "x/gx 0xdead00000000",
            "continue",
        ],
    )
    text = session.transcript
    assert f"Breakpoint 1, {INC:#018x} in ?? ()" in text, text
    assert registers(text, "rip") == [LOAD, INC, STORE, CPUID, CPUID, ADD], text
    assert registers(text, "rax")[:2] == [1, 0], text
    assert f"{DATA:#x}:\t0x0000000000000000" in text  # before the store
    cr0, efer = (int(v, 16) for v in re.findall(r"^\$[12] = (0x[0-9a-f]+)", text, re.M))
    assert cr0 & CR0_PG and cr0 & CR0_PE and efer & EFER_LMA, text
    assert "Hardware watchpoint 2" in text and "Old value = 0\nNew value = 2" in text, text
    assert f"break on exit 10 (cpuid) at RIP {CPUID:#x}" in text, text
    # Continuing from the exit ran the handler on it: CPUID leaf 0 of the model CPU.
    assert registers(text, "rbx")[-1] == GENU, text
    assert "Cannot access memory at address 0xdead00000000" in text, text
    assert "exited normally" in text and "vCPU 0: guest hlt" in text, text
    [result] = session.results
    assert result.reason is StopReason.GUEST_HLT
    assert result.exits == 1  # the handler saw the CPUID once
    assert vm.memory.read_u64(DATA) == GENU + MAX_LEAF  # RBX + RAX after leaf 0


def test_registers_and_memory_written_from_gdb_reach_the_guest(gdb_binary: str) -> None:
    vm = Vm(gdb=0)
    vm.load_asm(PROGRAM)
    session = debug(
        gdb_binary,
        vm,
        [
            f"break *{ADD:#x}",
            "continue",
            "set $rax = 0x1000",
            "set $rbx = 0x234",
            f"set var *(long *){DATA:#x} = 77",
            f"x/gx {DATA:#x}",
            "delete",
            "continue",
        ],
    )
    assert f"{DATA:#x}:\t0x000000000000004d" in session.transcript, session.transcript
    [result] = session.results
    assert result.reason is StopReason.GUEST_HLT
    assert vm.memory.read_u64(DATA) == 0x1234  # the guest's own store, with gdb's registers


# Each vCPU passes a breakpoint once, then spins: both are there when gdb looks.
THREADS = """
    mov rax, rdi
    inc rax
spin:
    pause
    jmp spin
"""
_, THREADS_INC, THREADS_SPIN = instruction_addresses(THREADS)[:3]


def test_each_vcpu_is_a_gdb_thread(gdb_binary: str) -> None:
    vm = Vm(gdb=0, vcpus=2)
    vm.load_asm(THREADS)
    session = debug(
        gdb_binary,
        vm,
        [
            "info threads",
            f"break *{THREADS_INC:#x}",
            "continue",
            "p/x $rdi",
            "continue",
            "p/x $rdi",
            "delete",
            "thread 1",
            "p/x $rdi",
            "thread 2",
            "p/x $rdi",
            "stepi",
            "info threads",
            "kill",
        ],
    )
    text = session.transcript
    assert re.search(r"1\s+Thread 1 \(vCPU 0, stopped \(engine\)\)", text), text
    assert re.search(r"2\s+Thread 2 \(vCPU 1, stopped \(engine\)\)", text), text
    assert len(re.findall(r"Thread \d hit Breakpoint 1", text)) == 2, text
    rdi = [int(v, 16) for v in re.findall(r"^\$\d+ = (0x[0-9a-f]+)", text, re.MULTILINE)]
    assert sorted(rdi[:2]) == [0, 1] and rdi[2:] == [0, 1], text  # RDI is the vCPU id
    assert [r.reason for r in session.results] == [StopReason.STOPPED] * 2  # gdb killed them


def test_gdb_saves_a_snapshot_where_it_stopped(gdb_binary: str, tmp_path: Path) -> None:
    vm = Vm(gdb=0)
    vm.load_asm(PROGRAM)
    snapshot = tmp_path / "at_add.pfs"
    session = debug(
        gdb_binary, vm, [f"break *{ADD:#x}", "continue", f"monitor snapshot {snapshot}",
                         "delete", "continue"],
    )  # fmt: skip
    assert f"saved {snapshot}" in session.transcript, session.transcript
    [original] = session.results
    again = Vm.restore(snapshot)
    [restored] = again.run(timeout=30)
    assert restored.reason is original.reason is StopReason.GUEST_HLT
    assert restored.state.as_dict() == original.state.as_dict()
    assert again.memory.read(LOAD, 0x1000) == vm.memory.read(LOAD, 0x1000)
