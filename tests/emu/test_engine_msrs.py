"""The MSRs a guest instruction uses without an exit (LSTAR & co., TSC_AUX) are the
processor's own: what the handler's physical CPU writes is what the guest's instructions
and MSR reads see, and a write the MSR bitmaps let through is what the handler reads."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from emu_helpers import Proc, Proc2, controls, kvm_gap, run1, with_idt

from pyflank.backends.base import StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.msrs import IA32_KERNEL_GS_BASE, IA32_LSTAR, IA32_STAR, IA32_TSC_AUX
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.vmm import Vm

BITMAP = 0x200000
ENTRY = 0x100000


def _read(msr: int, into: str) -> str:
    return f"mov ecx, {msr:#x}\n rdmsr\n shl rdx, 32\n or rax, rdx\n mov {into}, rax\n"


def _write(msr: int, value: int) -> str:
    low, high = value & 0xFFFF_FFFF, value >> 32
    return f"mov ecx, {msr:#x}\n mov eax, {low:#x}\n mov edx, {high:#x}\n wrmsr\n"


def _bitmap(*exiting: tuple[int, bool]) -> tuple[Callable[[Vm], None], Callable[[Vmcs], None]]:
    """MSR bitmaps in which only the (msr, is write) accesses given exit."""

    def setup(vm: Vm) -> None:
        vm.memory.fill(BITMAP, 4096)
        for msr, write in exiting:
            offset = (2048 if write else 0) + (1024 if msr >= 0xC000_0000 else 0)
            index = msr & 0x1FFF
            at = BITMAP + offset + (index >> 3)
            vm.memory.write_u8(at, vm.memory.read_u8(at) | 1 << (index & 7))

    def configure(vmcs: Vmcs) -> None:
        controls(Proc.USE_MSR_BITMAPS)(vmcs)
        vmcs.write(f.ADDRESS_OF_MSR_BITMAPS, BITMAP)

    return setup, configure


def test_a_wrmsr_the_handler_carries_out_reaches_the_processor() -> None:
    kvm_gap("msr_bitmaps")
    lstar, star = 0xFFFF_8000_1234_5678, 0x0023_0010_0000_0000
    setup, configure = _bitmap((IA32_LSTAR, True), (IA32_STAR, True))
    source = _write(IA32_LSTAR, lstar) + _write(IA32_STAR, star)
    source += _read(IA32_LSTAR, "r8") + _read(IA32_STAR, "r9") + "hlt"  # reads do not exit
    _, result = run1(source, setup=setup, configure=configure)
    assert result.reason is StopReason.GUEST_HLT
    assert [reason for reason, _ in result.trace or []] == [ExitReason.WRMSR] * 2
    assert (result.state.r08, result.state.r09) == (lstar, star)


def test_a_wrmsr_that_does_not_exit_is_what_the_handler_reads() -> None:
    kvm_gap("msr_bitmaps")
    setup, configure = _bitmap((IA32_KERNEL_GS_BASE, False), (IA32_TSC_AUX, False))
    source = _write(IA32_KERNEL_GS_BASE, 0x280000) + _write(IA32_TSC_AUX, 7)
    source += _read(IA32_KERNEL_GS_BASE, "r8") + _read(IA32_TSC_AUX, "r9") + "hlt"
    _, result = run1(source, setup=setup, configure=configure)
    assert [reason for reason, _ in result.trace or []] == [ExitReason.RDMSR] * 2
    assert (result.state.r08, result.state.r09) == (0x280000, 7)


# KVM takes any value the VMM writes (KVM_SET_MSRS is host-initiated): only the software CPU.
@pytest.mark.parametrize("backend", ["emu"], indirect=True)
@pytest.mark.parametrize(
    ("msr", "value"), [(IA32_LSTAR, 0x0000_8000_0000_0000), (IA32_TSC_AUX, 1 << 32)]
)
def test_a_wrmsr_the_processor_refuses_is_a_gp(msr: int, value: int, backend: str) -> None:
    _, result = run1(with_idt("    " + _write(msr, value) + " hlt"))
    assert result.state.r12 == 13


def test_a_linux_like_guest_uses_rdtscp_and_its_tsc_aux() -> None:
    """As Linux does: RDTSCP where CPUID says the processor has it, with TSC_AUX set by
    WRMSR (an exit the seed carries out); the boot controls enable RDTSCP."""
    kvm_gap("rdtscp")
    source = f"""
        mov r8, -1
        mov eax, 0x80000001
        cpuid
        bt edx, 27
        jnc done
        {_write(IA32_TSC_AUX, 5)}
        rdtscp
        mov r8, rcx
    done:
        hlt
    """
    # RDTSCP without a machine reads the host's TSC: no second run gives the same.
    _, result = run1(source, configure=controls(secondary=Proc2.ENABLE_RDTSCP), differential=False)
    assert result.reason is StopReason.GUEST_HLT
    assert result.state.r08 == 5
