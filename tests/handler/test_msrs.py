"""RDMSR and WRMSR: VMCS-backed MSRs, zero-read MSRs, the CPU model, #GP."""

import pytest

from pyflank.exit_handler.exit_handler_intel_x64 import VMCS_BACKED_MSRS, ZERO_READ_MSRS
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.qualifications import InterruptionInformation, InterruptionType
from pyflank.testing import HARNESS_RIP, ExitHarness

VALUE = 0x1122_3344_5566_7788


@pytest.mark.parametrize(("msr", "field"), sorted(VMCS_BACKED_MSRS.items()))
def test_vmcs_backed_msr_round_trip(msr: int, field: int) -> None:
    h = ExitHarness()
    h.exit(ExitReason.WRMSR, length=2, rcx=msr, rax=0xDEAD_0000_5566_7788, rdx=0xBEEF_1122_3344)
    assert h.vmcs.read(field) == VALUE & f.FIELD_BY_ENCODING[field].mask
    assert field in h.vmcs.dirty
    h.exit(ExitReason.RDMSR, length=2, rcx=msr, rax=0, rdx=0)
    expected = VALUE & f.FIELD_BY_ENCODING[field].mask
    assert (h.state.rax, h.state.rdx) == (expected & 0xFFFF_FFFF, expected >> 32)
    assert h.state.rip == HARNESS_RIP + 4


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
    h.exit(ExitReason.WRMSR, length=2, rcx=msrs.IA32_LSTAR, rax=0x89AB_CDEF, rdx=0x0123_4567)
    assert h.cpu.msrs[msrs.IA32_LSTAR] == 0x0123_4567_89AB_CDEF
    h.exit(ExitReason.RDMSR, length=2, rcx=msrs.IA32_VMX_BASIC)
    basic = h.cpu.rdmsr(msrs.IA32_VMX_BASIC)
    assert (h.state.rdx << 32) | h.state.rax == basic


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
    info = InterruptionInformation.decode(h.vmcs.read(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD))
    assert info.valid and info.vector == 13 and info.error_code_valid
    assert info.type == InterruptionType.HARDWARE_EXCEPTION
    assert h.vmcs.read(f.VM_ENTRY_EXCEPTION_ERROR_CODE) == 0
    assert (h.state.rax, h.state.rdx, h.state.rip) == (1, 2, HARNESS_RIP)  # not retired
    assert "0xdead" in h.debug_ring
