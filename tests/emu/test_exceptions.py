"""Guest exceptions: delivered through the guest IDT, or VM exits per the exception bitmap."""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest
from emu_helpers import Recorder, kvm_gap, run1, with_idt
from small_kernel import kernel_source, user_pages

from pyflank.backends.base import StopReason
from pyflank.backends.emu.register_probe import FORCE_API
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.qualifications import InterruptionInformation, InterruptionType
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.processor.delivery import PF_FETCH, PF_PRESENT, PF_USER
from pyflank.vmm import Vm

UNMAPPED = 0x70_0000_0000  # beyond the identity map
SUPERVISOR_PAGE = 0x600000


def _bitmap(bits: int, mask: int = 0, match: int = 0) -> Callable[[Vmcs], None]:
    def change(vmcs: Vmcs) -> None:
        vmcs.write(f.EXCEPTION_BITMAP, bits)
        vmcs.write(f.PAGE_FAULT_ERROR_CODE_MASK, mask)
        vmcs.write(f.PAGE_FAULT_ERROR_CODE_MATCH, match)

    return change


def test_page_fault_delivers_error_code_and_cr2() -> None:
    source = with_idt(f"    mov rax, {UNMAPPED:#x}\n mov qword ptr [rax], 1\n hlt")
    source = source.replace("idt_common:\n", "idt_common:\n    mov r11, cr2\n", 1)
    _, result = run1(source)
    s = result.state
    assert s.r12 == 14
    assert s.r14 == 0b10  # not present, write, supervisor
    assert s.r11 == UNMAPPED


def test_software_interrupt_frame_points_past_int() -> None:
    kvm_gap("emulator")  # INT n
    _, result = run1(with_idt("    int 0x1f\n mov r10, 1\n hlt"))
    s = result.state
    assert s.r12 == 0x1F
    assert s.r14 == 2**64 - 1  # no error code for INT n
    assert s.r15 == 0x100005 + 2


def test_divide_error_frame_points_at_the_div() -> None:
    _, result = run1(with_idt("    xor ecx, ecx\n div ecx\n hlt"))
    assert (result.state.r12, result.state.r15) == (0, 0x100007)


def test_exception_bitmap_makes_ud_an_exit() -> None:
    kvm_gap("exceptions")
    handler = Recorder()
    _, result = run1("nop\n ud2\n hlt", lambda: handler, configure=_bitmap(1 << 6))
    assert result.reason is StopReason.HALTED  # the seed does not handle exception exits
    [record] = handler.records
    assert record.reason == ExitReason.EXCEPTION_OR_NMI
    assert record.rip == 0x100001
    info = InterruptionInformation.decode(record.interruption)
    assert (info.vector, info.type, info.valid, info.error_code_valid) == (
        6, InterruptionType.HARDWARE_EXCEPTION, True, False,
    )  # fmt: skip


def test_int3_exit_is_a_software_exception_with_a_length() -> None:
    kvm_gap("exceptions")
    handler = Recorder()
    run1("int3\n hlt", lambda: handler, configure=_bitmap(1 << 3))
    [record] = handler.records
    info = InterruptionInformation.decode(record.interruption)
    assert (info.vector, info.type) == (3, InterruptionType.SOFTWARE_EXCEPTION)
    assert (record.rip, record.length) == (0x100000, 1)


def test_page_fault_exits_follow_the_error_code_mask_and_match() -> None:
    kvm_gap("exceptions")
    source = f"mov rax, {UNMAPPED:#x}\n mov qword ptr [rax], 1\n hlt"
    # Bit 14 set, mask/match on W=1: a write fault exits ...
    handler = Recorder()
    run1(source, lambda: handler, configure=_bitmap(1 << 14, mask=2, match=2))
    assert [r.reason for r in handler.records] == [ExitReason.EXCEPTION_OR_NMI]
    assert handler.records[0].qualification == UNMAPPED
    # ... and with match on W=0 it does not: it is delivered (and triple-faults here).
    handler = Recorder()
    _, result = run1(source, lambda: handler, configure=_bitmap(1 << 14, mask=2, match=0))
    assert [r.reason for r in handler.records] == [ExitReason.TRIPLE_FAULT]
    assert result.reason is StopReason.SHUTDOWN


def test_a_fault_during_delivery_with_its_bit_set_exits_with_idt_vectoring() -> None:
    kvm_gap("exceptions")
    handler = Recorder()

    class Vectoring(Recorder):
        def dispatch(self) -> None:
            self.vectoring = self.m_vmcs.read(f.IDT_VECTORING_INFORMATION_FIELD)
            super().dispatch()

    handler = Vectoring()
    # Limit-0 IDT: delivering #BP raises #GP, and #GP is in the bitmap.
    run1("int3\n hlt", lambda: handler, configure=_bitmap(1 << 13))
    [record] = handler.records
    gp = InterruptionInformation.decode(record.interruption)
    original = InterruptionInformation.decode(handler.vectoring)
    assert (gp.vector, gp.error_code_valid) == (13, True)
    assert (original.vector, original.type, original.valid) == (
        3, InterruptionType.SOFTWARE_EXCEPTION, True,
    )  # fmt: skip


@pytest.mark.skipif(
    os.environ.get(FORCE_API) == "api", reason="through unicorn's API: no error codes but #PF's"
)
def test_general_protection_pushes_the_selector_as_its_error_code() -> None:
    # A selector beyond the GDT limit: #GP(selector).
    _, result = run1(with_idt("    mov eax, 0x1238\n mov ds, eax\n hlt"))
    assert (result.state.r12, result.state.r14) == (13, 0x1238)


def test_a_user_mode_page_fault_reports_user_and_fetch() -> None:
    kvm_gap("emulator")  # IRETQ to ring 3
    # Ring 3 jumps to a supervisor page: #PF(P, U, I/D), CR2 = the target.
    source = kernel_source(
        "    jmp enter_user\n",
        user=f"    mov rax, {SUPERVISOR_PAGE:#x}\n    jmp rax\n",
        gates={14: ("on_pf", 0, 0)},
        extra="on_pf:\n    pop r14\n    mov r11, cr2\n    hlt\n",
    )

    def setup(vm: Vm) -> None:
        user_pages(vm)
        vm.page_tables.protect(SUPERVISOR_PAGE, 0x200000, writable=True, user=False)

    _, result = run1(source, setup=setup)
    assert (result.state.r14, result.state.r11) == (
        PF_PRESENT | PF_USER | PF_FETCH,
        SUPERVISOR_PAGE,
    )
