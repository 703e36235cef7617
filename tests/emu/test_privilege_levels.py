"""Guests with a ring 3: LTR, IRETQ to ring 3, events that change privilege level (TSS
stack switch, IST), and VM entries that load guest state while the guest is in ring 3."""

from __future__ import annotations

from emu_helpers import Recorder, kvm_gap, run1
from small_kernel import KERNEL_CS, TSS_SELECTOR, USER_CS, USER_SS, kernel_source, user_pages

from pyflank.backends.base import StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason

_RFLAGS_CF = 1
_TSS_BUSY_PRESENT = 0x8B
_EXTERNAL_INTERRUPT = 0  # VM-entry interruption type
_VALID = 1 << 31
# Kernel side of the ring-3 tests: INT 0x80 from ring 3 ends the test with HLT in ring 0.
_FINISH = "on_finish:\n    mov rbx, [rsp + 8]\n    hlt\n"


def _ring3(user: str, gates: dict[int, tuple[str, int, int]] | None = None, extra: str = "") -> str:
    return kernel_source(
        "    jmp enter_user\n",
        user=user,
        gates={0x80: ("on_finish", 3, 0), **(gates or {})},
        extra=_FINISH + extra,
    )


class ChangesRflags(Recorder):
    """Sets RFLAGS.CF in the VMCS at every RDMSR/CPUID exit: a guest-state change."""

    def handle_exit(self, reason: int) -> None:
        if reason in (ExitReason.RDMSR, ExitReason.CPUID):
            vmcs = self.m_vmcs
            vmcs.write(f.GUEST_RFLAGS, vmcs.read(f.GUEST_RFLAGS) | _RFLAGS_CF)
        super().handle_exit(reason)


def test_ltr_makes_the_task_register_busy_and_a_full_entry_accepts_it() -> None:
    source = kernel_source("    clc\n    mov ecx, 0x39\n    rdmsr\n    setc r8b\n    hlt\n")
    _, result = run1(source, ChangesRflags)
    assert result.reason is StopReason.GUEST_HLT, result.debug_ring
    assert result.state.r08 == 1  # the entry loaded the handler's RFLAGS
    assert result.vmcs.read(f.GUEST_TR_SELECTOR) == TSS_SELECTOR
    assert result.vmcs.read(f.GUEST_TR_ACCESS_RIGHTS) == _TSS_BUSY_PRESENT


def test_iretq_to_ring_3_and_int_back_to_ring_0() -> None:
    kvm_gap("emulator")  # INT n
    _, result = run1(_ring3("    mov r9, 3\n    int 0x80\n"), setup=user_pages)
    assert result.reason is StopReason.GUEST_HLT, result.debug_ring
    assert (result.state.r09, result.state.rbx) == (3, USER_CS)
    assert result.vmcs.read(f.GUEST_CS_SELECTOR) == KERNEL_CS


def test_an_exception_in_ring_3_switches_to_the_tss_stack_and_returns() -> None:
    kvm_gap("emulator")  # INT n
    on_ud = """
    on_ud:
        mov r12, [rsp + 8]
        mov r13, [rsp + 32]
        lea r14, [rip + kstack_top]
        sub r14, rsp
        add qword ptr [rsp], 2
        iretq
    """
    user = "    ud2\n    mov r9, 7\n    int 0x80\n"
    _, result = run1(_ring3(user, {6: ("on_ud", 0, 0)}, on_ud), setup=user_pages)
    s = result.state
    assert result.reason is StopReason.GUEST_HLT, result.debug_ring
    assert (s.r12, s.r13, s.r09) == (USER_CS, USER_SS, 7)
    assert s.r14 == 5 * 8  # the five-word frame at the top of TSS.RSP0


def test_an_ist_gate_switches_to_the_ist_stack() -> None:
    kvm_gap("emulator")  # INT n
    on_ud = """
    on_ud:
        lea r14, [rip + ist_stack_top]
        sub r14, rsp
        add qword ptr [rsp], 2
        iretq
    """
    _, result = run1(
        _ring3("    ud2\n    int 0x80\n", {6: ("on_ud", 0, 1)}, on_ud), setup=user_pages
    )
    assert result.reason is StopReason.GUEST_HLT, result.debug_ring
    assert result.state.r14 == 5 * 8


def test_a_guest_state_change_while_the_guest_is_in_ring_3() -> None:
    kvm_gap("cpuid")
    user = "    clc\n    cpuid\n    setc r8b\n    int 0x80\n"
    _, result = run1(_ring3(user), ChangesRflags, setup=user_pages)
    assert result.reason is StopReason.GUEST_HLT, result.debug_ring
    assert (result.state.r08, result.state.rbx) == (1, USER_CS)


class InjectsInRing3(Recorder):
    """Injects external interrupt 0x40 at the first CPUID exit taken in ring 3."""

    def handle_cpuid(self) -> None:
        if self.m_vmcs.read(f.GUEST_CS_SELECTOR) & 3 == 3 and not hasattr(self, "injected"):
            self.injected = True
            info = 0x40 | _EXTERNAL_INTERRUPT << 8 | _VALID
            self.m_vmcs.write(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD, info)
        super().handle_cpuid()


def test_an_event_injected_while_the_guest_is_in_ring_3() -> None:
    kvm_gap("cpuid")
    on_interrupt = """
    on_interrupt:
        mov r12, [rsp + 8]
        mov r13, [rsp]
        mov r14, [rsp + 32]
        iretq
    """
    user = "    cpuid\n    lea r11, [rip + 0]\n    mov r9, 1\n    int 0x80\n"
    source = _ring3(user, {0x40: ("on_interrupt", 0, 0)}, on_interrupt)
    _, result = run1(source, InjectsInRing3, setup=user_pages)
    s = result.state
    assert result.reason is StopReason.GUEST_HLT, result.debug_ring
    assert (s.r12, s.r14, s.r09) == (USER_CS, USER_SS, 1)
    assert s.r13 == s.r11 - 7  # the frame holds the RIP after CPUID (lea r11 is 7 bytes)
