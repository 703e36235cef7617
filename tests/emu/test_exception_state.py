"""Exceptions the guest handles itself leave nothing behind in the engine: the next fault
is delivered as what it is, and the next exit reports its own RIP."""

from __future__ import annotations

import pytest
from emu_helpers import kvm_gap, run1
from small_kernel import kernel_source

from pyflank.backends.base import StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.msrs import IA32_EFER


def test_three_general_protection_faults_in_a_row_are_each_a_gp() -> None:
    # Loading a selector beyond the GDT limit is #GP; the guest's handler steps over it.
    source = kernel_source(
        """
        xor r12, r12
        xor r13, r13
        mov eax, 0x1238
        mov ds, eax
        mov ds, eax
        mov ds, eax
        hlt
        """,
        gates={13: ("on_gp", 0, 0), 8: ("on_df", 0, 0)},
        extra="""
    on_gp:
        inc r12
        add rsp, 8
        add qword ptr [rsp], 2
        iretq
    on_df:
        inc r13
        hlt
        """,
    )
    _, result = run1(source)
    assert result.reason is StopReason.GUEST_HLT, result.message
    assert (result.state.r12, result.state.r13) == (3, 0)


@pytest.mark.parametrize(("instruction", "vector"), [("int3", 3), ("int 0x21", 0x21), ("int1", 1)])
def test_the_exit_after_a_software_interrupt_reports_its_own_rip(
    instruction: str, vector: int
) -> None:
    kvm_gap("emulator")  # INT n, INT3, INT1
    source = kernel_source(
        f"""
        xor r12, r12
        {instruction}
        mov r9, 1
        mov ecx, {IA32_EFER:#x}
        lea r11, [rip + at_rdmsr]
    at_rdmsr:
        rdmsr
        mov r10, rax
        hlt
        """,
        gates={vector: ("on_event", 0, 0)},
        extra="""
    on_event:
        inc r12
        iretq
        """,
    )
    _, result = run1(source)
    s = result.state
    assert result.reason is StopReason.GUEST_HLT, result.message
    assert result.trace == [(ExitReason.RDMSR, s.r11)]
    assert (s.r12, s.r09) == (1, 1)
    assert s.r10 == result.vmcs.read(f.GUEST_IA32_EFER) & 0xFFFF_FFFF
