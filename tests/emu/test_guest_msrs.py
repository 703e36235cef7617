"""RDMSR/WRMSR: exits for every MSR by default, MSR bitmaps, what the guest reads back."""

from __future__ import annotations

from collections.abc import Callable

from emu_helpers import Proc, Recorder, controls, kvm_gap, run, run1, with_idt

from pyflank.backends.base import StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.cpu import DEFAULT_MSRS, VMX_CAPABILITY_MSRS
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.msrs import (
    IA32_APIC_BASE,
    IA32_EFER,
    IA32_PAT,
    IA32_SYSENTER_EIP,
    IA32_SYSENTER_ESP,
    IA32_VMX_BASIC,
)
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.vmm import Vm


def _read(msr: int, into: str) -> str:
    return f"mov ecx, {msr:#x}\n rdmsr\n shl rdx, 32\n or rax, rdx\n mov {into}, rax\n"


def _wrmsr(msr: int, value: int) -> str:
    low, high = value & 0xFFFF_FFFF, value >> 32
    return f"mov ecx, {msr:#x}\n mov eax, {low:#x}\n mov edx, {high:#x}\n wrmsr\n"


def test_efer_write_lands_in_the_vmcs_and_reads_back() -> None:
    source = (
        _read(IA32_EFER, "r12")
        + f"mov ecx, {IA32_EFER:#x}\n rdmsr\n or eax, 1\n wrmsr\n"
        + _read(IA32_EFER, "r13")
        + "hlt"
    )
    _, result = run1(source)
    assert result.state.r12 & 1 == 0
    assert result.state.r13 == result.state.r12 | 1  # SCE now set, as the guest sees it
    assert result.vmcs.read(f.GUEST_IA32_EFER) == result.state.r13
    assert [reason for reason, _ in result.trace or []] == [31, 31, 32, 31]


def test_pat_is_vmcs_backed() -> None:
    value = 0x0007_0406_0007_0401
    source = _wrmsr(IA32_PAT, value) + _read(IA32_PAT, "r12") + "hlt"
    _, result = run1(source)
    assert result.state.r12 == value
    assert result.vmcs.read(f.GUEST_IA32_PAT) == value


def test_zero_read_msrs_read_zero_and_ignore_writes() -> None:
    source = "".join(_read(msr, reg) for msr, reg in ((0x31, "r8"), (0x1AE, "r9"), (0x602, "r10")))
    source += "mov ecx, 0x39\n mov eax, 5\n xor edx, edx\n wrmsr\n" + _read(0x39, "r11") + "hlt"
    _, result = run1(source)
    s = result.state
    assert (s.r08, s.r09, s.r10, s.r11) == (0, 0, 0, 0)
    assert result.reason is StopReason.GUEST_HLT


def test_model_msrs() -> None:
    source = _read(IA32_APIC_BASE, "r8") + _read(IA32_VMX_BASIC, "r9") + "hlt"
    _, result = run1(source)
    assert result.state.r08 == DEFAULT_MSRS[IA32_APIC_BASE]
    assert result.state.r09 == VMX_CAPABILITY_MSRS[IA32_VMX_BASIC]


def test_unknown_msr_is_a_gp_in_the_guest_idt() -> None:
    _, result = run1(with_idt("    mov ecx, 0xdeadbeef\n rdmsr\n mov r11, 1\n hlt"))
    s = result.state
    assert result.reason is StopReason.GUEST_HLT
    assert s.r12 == 13  # #GP
    assert s.r14 == 0  # error code 0
    assert s.r11 != 1  # the RDMSR never completed
    assert result.trace and result.trace[-1][0] == ExitReason.RDMSR
    rdmsr_rip = result.trace[-1][1]
    assert s.r15 == rdmsr_rip  # the #GP frame points at the faulting RDMSR
    assert s.r13 == 0x08


def test_wrmsr_to_a_read_only_msr_is_a_gp() -> None:
    _, result = run1(
        with_idt(f"    mov ecx, {IA32_VMX_BASIC:#x}\n xor eax, eax\n xor edx, edx\n wrmsr\n hlt")
    )
    assert result.state.r12 == 13


def _use_msr_bitmap(address: int) -> Callable[[Vmcs], None]:
    def change(vmcs: Vmcs) -> None:
        controls(Proc.USE_MSR_BITMAPS)(vmcs)
        vmcs.write(f.ADDRESS_OF_MSR_BITMAPS, address)

    return change


def test_msr_bitmaps_choose_which_accesses_exit() -> None:
    kvm_gap("msr_bitmaps")
    bitmap = 0x200000
    handler = Recorder()

    def setup(vm: Vm) -> None:
        vm.memory.fill(bitmap, 4096)
        # exit on RDMSR of IA32_PAT (low range) and WRMSR of IA32_EFER (high range)
        vm.memory.write_u8(bitmap + (IA32_PAT >> 3), 1 << (IA32_PAT & 7))
        efer = IA32_EFER - 0xC000_0000
        vm.memory.write_u8(bitmap + 3072 + (efer >> 3), 1 << (efer & 7))

    source = (
        _read(IA32_PAT, "r8")  # exits
        + _read(IA32_EFER, "r9")  # passes through to the processor's own EFER
        + f"mov ecx, {IA32_EFER:#x}\n mov rax, r9\n mov rdx, r9\n shr rdx, 32\n wrmsr\n"  # exits
        + _read(0xC000_0103, "r10")  # TSC_AUX, passes through
        + "hlt"
    )
    _, [result] = run(source, lambda: handler, configure=_use_msr_bitmap(bitmap), setup=setup)
    assert [r.reason for r in handler.records] == [ExitReason.RDMSR, ExitReason.WRMSR]
    assert result.state.r08 == handler.m_cpu.rdmsr(IA32_PAT)
    assert result.state.r09 & 0xD00 == 0xD00  # LME, LMA, NXE from the CPU itself
    assert result.reason is StopReason.GUEST_HLT


def test_noncanonical_vmcs_backed_wrmsr_is_a_gp_with_the_vmcs_unchanged() -> None:
    source = with_idt("    " + _wrmsr(IA32_SYSENTER_ESP, 1 << 60) + " mov r11, 1\n hlt")
    _, result = run1(source)
    assert result.reason is StopReason.GUEST_HLT  # not a failed VM entry
    assert result.state.r12 == 13 and result.state.r14 == 0  # #GP(0)
    assert result.state.r11 != 1  # the WRMSR never completed
    assert result.trace and result.trace[-1][0] == ExitReason.WRMSR
    assert result.vmcs.read(f.GUEST_IA32_SYSENTER_ESP) == 0


def test_wrmsr_let_through_by_the_msr_bitmap_also_faults() -> None:
    kvm_gap("msr_bitmaps")
    bitmap = 0x200000

    def setup(vm: Vm) -> None:
        vm.memory.fill(bitmap, 4096)  # no MSR access exits

    source = with_idt(
        "    " + _wrmsr(IA32_SYSENTER_EIP, 0x1000) + _wrmsr(IA32_SYSENTER_EIP, 1 << 60)
        + " mov r11, 1\n hlt"
    )  # fmt: skip
    _, [result] = run(source, configure=_use_msr_bitmap(bitmap), setup=setup)
    assert result.reason is StopReason.GUEST_HLT
    assert result.state.r12 == 13 and result.state.r14 == 0 and result.state.r11 != 1
    assert not [r for r, _ in result.trace or [] if r in (ExitReason.RDMSR, ExitReason.WRMSR)]
    assert result.vmcs.read(f.GUEST_IA32_SYSENTER_EIP) == 0x1000  # the first write only
