"""RDMSR and WRMSR: VMCS-backed MSRs, zero-read MSRs, the CPU model, #GP as on hardware."""

import pytest

from pyflank.exit_handler.exit_handler_intel_x64 import ZERO_READ_MSRS
from pyflank.intel_x64 import checks, msrs
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.cpu import ModelCpu
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.msrs import VMCS_BACKED_MSRS
from pyflank.intel_x64.qualifications import InterruptionInformation, InterruptionType
from pyflank.testing import HARNESS_RIP, ExitHarness

KERNEL_ADDRESS = 0xFFFF_8000_1234_5678
NONCANONICAL = 0x0000_8000_0000_0000
# A value each VMCS-backed MSR accepts, and what the VMCS field then holds.
ACCEPTED = {
    msrs.IA32_DEBUGCTL: 0x1,  # LBR
    msrs.IA32_PAT: 0x0007_0406_0007_0401,
    msrs.IA32_EFER: 0xD01,
    msrs.IA32_PERF_GLOBAL_CTRL: 0,  # the model CPU enumerates no counters
    msrs.IA32_SYSENTER_CS: 0x1122_3344_0000_0010,  # a 32-bit field: the high half is dropped
    msrs.IA32_SYSENTER_ESP: KERNEL_ADDRESS,
    msrs.IA32_SYSENTER_EIP: KERNEL_ADDRESS + 0x10,
    msrs.IA32_FS_BASE: 0x7FFF_F000_0000,
    msrs.IA32_GS_BASE: KERNEL_ADDRESS + 0x20,
}
# A value the MSR refuses with #GP(0), one per rule kind.
REFUSED = [
    (msrs.IA32_SYSENTER_ESP, NONCANONICAL),
    (msrs.IA32_SYSENTER_EIP, 0x1234_0000_0000_0000),
    (msrs.IA32_FS_BASE, NONCANONICAL),
    (msrs.IA32_GS_BASE, 0xFFFF_0000_0000_0000),
    (msrs.IA32_DEBUGCTL, 1 << 2),
    (msrs.IA32_EFER, 1 << 1),
    (msrs.IA32_PAT, 0x0007_0406_0007_0402),
    (msrs.IA32_PERF_GLOBAL_CTRL, 1),
]


def _wrmsr(h: ExitHarness, msr: int, value: int) -> None:
    h.exit(ExitReason.WRMSR, length=2, rcx=msr, rax=value & 0xFFFF_FFFF, rdx=value >> 32)


def _assert_general_protection(h: ExitHarness) -> None:
    info = InterruptionInformation.decode(h.vmcs.read(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD))
    assert info.valid and info.vector == 13 and info.error_code_valid
    assert info.type == InterruptionType.HARDWARE_EXCEPTION
    assert h.vmcs.read(f.VM_ENTRY_EXCEPTION_ERROR_CODE) == 0


def test_every_vmcs_backed_msr_has_a_case() -> None:
    assert set(ACCEPTED) == set(VMCS_BACKED_MSRS)
    assert {msr for msr, _ in REFUSED} == set(VMCS_BACKED_MSRS) - {msrs.IA32_SYSENTER_CS}


@pytest.mark.parametrize(("msr", "value"), sorted(ACCEPTED.items()))
def test_vmcs_backed_msr_round_trip(msr: int, value: int) -> None:
    h = ExitHarness()
    field = VMCS_BACKED_MSRS[msr].field
    _wrmsr(h, msr, value)
    expected = value & f.FIELD_BY_ENCODING[field].mask
    assert h.vmcs.read(field) == expected
    assert field in h.vmcs.dirty
    h.exit(ExitReason.RDMSR, length=2, rcx=msr, rax=0, rdx=0)
    assert (h.state.rax, h.state.rdx) == (expected & 0xFFFF_FFFF, expected >> 32)
    assert h.state.rip == HARNESS_RIP + 4


@pytest.mark.parametrize(("msr", "value"), REFUSED)
def test_refused_value_is_a_gp_and_leaves_the_vmcs_unchanged(msr: int, value: int) -> None:
    h = ExitHarness()
    field = VMCS_BACKED_MSRS[msr].field
    before = h.vmcs.read(field)
    _wrmsr(h, msr, value)
    _assert_general_protection(h)
    assert h.vmcs.read(field) == before and field not in h.vmcs.dirty
    assert h.state.rip == HARNESS_RIP  # the WRMSR did not retire
    assert msrs.msr_name(msr) in h.debug_ring
    # The old failure mode: the value in the VMCS broke the next VM entry.
    assert checks.check_guest_state(h.vmcs, h.cpu) == []


def test_perf_global_ctrl_accepts_the_counters_cpuid_enumerates() -> None:
    cpu = ModelCpu()
    cpu.cpuid_table[0] = (0xA, *cpu.cpuid_table[0][1:])
    cpu.cpuid_table[0xA] = (0x0004_0402, 0, 0, 0x3)  # 4 general, 3 fixed counters
    h = ExitHarness()
    h.handler.set_cpu(cpu)
    _wrmsr(h, msrs.IA32_PERF_GLOBAL_CTRL, 0x7_0000_000F)
    assert h.vmcs.read(f.GUEST_IA32_PERF_GLOBAL_CTRL) == 0x7_0000_000F
    _wrmsr(h, msrs.IA32_PERF_GLOBAL_CTRL, 0x10)  # a fifth general counter
    _assert_general_protection(h)
    assert h.vmcs.read(f.GUEST_IA32_PERF_GLOBAL_CTRL) == 0x7_0000_000F


def test_efer_write_reaches_the_vmcs() -> None:
    h = ExitHarness()
    h.exit(ExitReason.WRMSR, length=2, rcx=msrs.IA32_EFER, rax=0xD01, rdx=0)
    assert h.vmcs.read(f.GUEST_IA32_EFER) == 0xD01


@pytest.mark.parametrize("msr", sorted(ZERO_READ_MSRS))
def test_zero_read_msrs(msr: int) -> None:
    h = ExitHarness()
    h.exit(ExitReason.RDMSR, length=2, rcx=msr, rax=7, rdx=7)
    assert (h.state.rax, h.state.rdx, h.state.rip) == (0, 0, HARNESS_RIP + 2)
    h.exit(ExitReason.WRMSR, length=2, rcx=msr, rax=7, rdx=7)  # write-ignored
    assert h.state.rip == HARNESS_RIP + 4


def test_other_msrs_go_to_the_cpu_model() -> None:
    h = ExitHarness()
    h.exit(ExitReason.WRMSR, length=2, rcx=msrs.IA32_LSTAR, rax=0x89AB_CDEF, rdx=0x0000_4567)
    assert h.cpu.msrs[msrs.IA32_LSTAR] == 0x0000_4567_89AB_CDEF
    h.exit(ExitReason.RDMSR, length=2, rcx=msrs.IA32_VMX_BASIC)
    basic = h.cpu.rdmsr(msrs.IA32_VMX_BASIC)
    assert (h.state.rdx << 32) | h.state.rax == basic


@pytest.mark.parametrize("msr", [msrs.IA32_LSTAR, msrs.IA32_KERNEL_GS_BASE])
def test_cpu_model_refuses_a_noncanonical_address(msr: int) -> None:
    h = ExitHarness()
    before = h.cpu.msrs[msr]
    _wrmsr(h, msr, NONCANONICAL)
    _assert_general_protection(h)
    assert h.cpu.msrs[msr] == before
    assert h.state.rip == HARNESS_RIP


def test_msr_index_is_ecx_and_value_is_edx_eax() -> None:
    h = ExitHarness()
    h.exit(
        ExitReason.WRMSR, length=2, rcx=0xFFFF_0000_0000_0000 | msrs.IA32_PAT,
        rax=0xFFFF_FFFF_0000_0006, rdx=0xFFFF_FFFF_0000_0007,
    )  # fmt: skip
    assert h.vmcs.read(f.GUEST_IA32_PAT) == 0x0000_0007_0000_0006


@pytest.mark.parametrize("exit_reason", [ExitReason.RDMSR, ExitReason.WRMSR])
def test_unknown_msr_injects_general_protection(exit_reason: int) -> None:
    h = ExitHarness()
    h.exit(exit_reason, length=2, rcx=0xDEAD, rax=1, rdx=2)
    _assert_general_protection(h)
    assert (h.state.rax, h.state.rdx, h.state.rip) == (1, 2, HARNESS_RIP)  # not retired
    assert "0xdead" in h.debug_ring
