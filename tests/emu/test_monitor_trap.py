"""The monitor trap flag (exit 37): one instruction per entry, events first, and a guest that
cannot tell it is being stepped."""

from __future__ import annotations

import pytest
from emu_helpers import kvm_gap, run1, with_idt
from small_kernel import KERNEL_CS, user_pages
from test_syscall import _kernel, _sysenter_kernel

from pyflank.backends.base import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.platform.assemble import assemble
from pyflank.vmm import VcpuResult, Vm

START = 0x100000
TF = 1 << 8


class Stepper(ExitHandlerIntelX64):
    """Turns the monitor trap flag on and keeps it on, recording where each MTF exit is."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[int] = []
        self.exits: list[int] = []

    def setup(self, vmcs: Vmcs) -> None:
        self.monitor_trap_flag(True)

    def handle_exit(self, reason: int) -> None:
        self.exits.append(reason)
        super().handle_exit(reason)

    def handle_monitor_trap_flag(self) -> None:
        self.steps.append(self.m_state_save.rip)
        if len(self.steps) > 100_000:
            self.halt()


def _boundaries(source: str) -> list[int]:
    """The address of each instruction of a straight-line ``source`` after the first."""
    addresses, at = [], START
    for line in source.strip().splitlines():
        at += len(assemble(line, at))
        addresses.append(at)
    return addresses


def test_every_instruction_ends_in_an_mtf_exit() -> None:
    kvm_gap("monitor_trap_flag")
    body = "mov rax, 1\n add rax, rax\n xchg rax, rbx\n lea rcx, [rbx + 4]\n nop"
    handler = Stepper()
    _, result = run1(body + "\n hlt", lambda: handler)
    assert result.reason is StopReason.GUEST_HLT, result.message
    assert handler.steps == _boundaries(body)
    assert (result.state.rbx, result.state.rcx) == (2, 6)


def test_an_exiting_instruction_has_no_mtf_exit_of_its_own() -> None:
    kvm_gap("monitor_trap_flag")
    handler = Stepper()
    _, result = run1("nop\n xor eax, eax\n cpuid\n nop\n hlt", lambda: handler)
    assert result.reason is StopReason.GUEST_HLT, result.message
    mtf, cpuid = int(ExitReason.MONITOR_TRAP_FLAG), int(ExitReason.CPUID)
    assert handler.exits == [mtf, mtf, cpuid, mtf]  # HLT then ends the run
    assert handler.steps == [START + 1, START + 3, START + 6]


def test_a_fault_is_delivered_and_the_mtf_exit_comes_before_its_handler_runs() -> None:
    kvm_gap("monitor_trap_flag")
    handler = Stepper()
    vm, result = run1(with_idt("    ud2\n    hlt"), lambda: handler)
    assert result.state.r12 == 6  # #UD, through the guest's IDT
    ud2 = next(step for step in handler.steps if vm.memory.read(step, 2) == b"\x0f\x0b")
    after = handler.steps[handler.steps.index(ud2) + 1]
    assert vm.memory.read(after, 7) == assemble("mov r12, 6", after)  # the #UD handler


class Injecting(Stepper):
    """At the MTF exit after ``mov r9, 0x77``, injects #UD: the next MTF exit is at its
    handler, before anything of it ran."""

    def handle_monitor_trap_flag(self) -> None:
        super().handle_monitor_trap_flag()
        if self.m_state_save.r09 == 0x77 and not hasattr(self, "injected"):
            self.injected = len(self.steps)
            self.inject_exception(6)


def test_an_injected_event_is_delivered_and_then_the_mtf_exit_comes() -> None:
    kvm_gap("monitor_trap_flag")
    handler = Injecting()
    vm, result = run1(with_idt("    mov r9, 0x77\n    nop\n    nop\n    hlt"), lambda: handler)
    assert result.state.r12 == 6
    landing = handler.steps[handler.injected]
    assert vm.memory.read(landing, 7) == assemble("mov r12, 6", landing)  # nothing ran yet


def test_rep_string_instructions_step_one_iteration_at_a_time() -> None:
    kvm_gap("monitor_trap_flag")
    source = f"mov rsi, {START:#x}\n mov rdi, 0x300000\n mov rcx, 4\n rep movsb\n hlt"
    handler = Stepper()
    vm, _result = run1(source, lambda: handler)
    rep = START + len(assemble("mov rsi, 0x100000\n mov rdi, 0x300000\n mov rcx, 4", START))
    assert handler.steps.count(rep) == 4  # three iterations back at the REP, then past it
    assert vm.memory.read(0x300000, 4) == vm.memory.read(START, 4)


def _both(source: str, **kwargs: object) -> tuple[VcpuResult, VcpuResult, Vm, Vm]:
    plain_vm, plain = run1(source, **kwargs)  # type: ignore[arg-type]
    handler = Stepper()
    stepped_vm, stepped = run1(source, lambda: handler, **kwargs)  # type: ignore[arg-type]
    assert handler.steps, "nothing was stepped"
    stepped_vm.steps = handler.steps  # type: ignore[attr-defined]
    return plain, stepped, plain_vm, stepped_vm


PROGRAMS = {
    "flags": """
        mov rax, 0x1234
        pushfq
        pop rbx
        or rbx, 0x400
        push rbx
        popfq
        pushfq
        pop rcx
        cld
        pushfq
        pop rdx
        hlt
    """,
    "exceptions": with_idt("    mov rax, 5\n    xor ecx, ecx\n    div rcx\n    hlt"),
    "software interrupt": with_idt("    int 3\n    hlt"),
}


@pytest.mark.parametrize("name", sorted(PROGRAMS))
def test_a_stepped_guest_sees_what_an_unstepped_one_does(name: str) -> None:
    kvm_gap("monitor_trap_flag")
    plain, stepped, plain_vm, stepped_vm = _both(PROGRAMS[name])
    assert stepped.reason is plain.reason, stepped.message
    assert repr(stepped.state) == repr(plain.state)
    if name == "flags":
        assert stepped.state.rcx & TF == 0 and stepped.state.rdx & TF == 0  # PUSHF: no step
    assert stepped_vm.memory.read(0, 0x90000) == plain_vm.memory.read(0, 0x90000)  # the stacks


@pytest.mark.parametrize("kernel", ["syscall", "sysenter"])
def test_fast_system_calls_are_stepped_like_any_instruction(kernel: str) -> None:
    kvm_gap("monitor_trap_flag")
    source = _kernel() if kernel == "syscall" else _sysenter_kernel(KERNEL_CS)
    plain, stepped, _, vm = _both(source, setup=user_pages)
    assert stepped.reason is plain.reason is StopReason.GUEST_HLT, stepped.message
    assert repr(stepped.state) == repr(plain.state)
    assert stepped.vmcs.read(f.GUEST_CS_SELECTOR) == plain.vmcs.read(f.GUEST_CS_SELECTOR)
    if kernel == "syscall":  # SYSRET lands in ring 3 at RBX: the MTF exit is there, then one
        back = stepped.state.rbx  # past its first instruction
        steps = vm.steps  # type: ignore[attr-defined]
        assert steps[steps.index(back) + 1] == back + len(assemble("mov rdi, cs", back))


def test_a_guest_single_stepping_itself_still_gets_its_own_debug_exceptions() -> None:
    kvm_gap("monitor_trap_flag")
    source = with_idt("""
    pushfq
    or qword ptr [rsp], 0x100
    popfq
    nop
    hlt
    """)
    plain, stepped, _, _ = _both(source)
    assert plain.state.r12 == 1  # #DB after the NOP (the trap after POPF's successor)
    assert repr(stepped.state) == repr(plain.state)
