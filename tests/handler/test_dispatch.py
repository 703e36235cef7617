"""dispatch(), halt(), VMXOFF, the unimplemented handler and the VMCS lifecycle."""

import pytest

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import checks
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import VmcsError, VmcsState
from pyflank.testing import HARNESS_RIP, ExitHarness


def test_cpuid_exit_resumes_guest() -> None:
    h = ExitHarness()
    h.exit(ExitReason.CPUID, length=2, rax=0)
    assert h.vmcs.state is VmcsState.LAUNCHED
    assert h.vmcs.entries == 2  # launch + one resume
    assert h.state.rip == HARNESS_RIP + 2


def test_unimplemented_exit_dumps_and_halts() -> None:
    h = ExitHarness()
    h.vmcs.processor_write(f.GUEST_LINEAR_ADDRESS, 0x1234)
    h.exit(ExitReason.HLT, length=1, qualification=0x55, rax=0xAAAA)
    ring = h.debug_ring
    assert h.vmcs.state is VmcsState.HALTED
    assert h.vmcs.entries == 1  # never resumed
    assert h.state.rip == HARNESS_RIP  # not advanced
    assert "Unimplemented Exit Handler: \n" in ring
    assert "- exit reason string: hlt\n" in ring
    assert "- exit qualification: 0x55\n" in ring
    assert "- guest linear address: 0x1234\n" in ring
    assert "- instruction length: 0x1\n" in ring
    assert "- vcpuid: 0\n" in ring
    assert "- m_state_save->rax: 0xaaaa\n" in ring


def test_halted_vcpu_is_never_resumed() -> None:
    h = ExitHarness()
    h.exit(ExitReason.HLT)
    with pytest.raises(VmcsError, match="halted"):
        h.vmcs.resume()


def test_vmxoff_promotes() -> None:
    h = ExitHarness()
    h.exit(ExitReason.VMXOFF, length=3)
    assert h.vmcs.state is VmcsState.PROMOTED
    assert h.state.rip == HARNESS_RIP  # at the VMXOFF, as Bareflank 1.1 promoted
    with pytest.raises(VmcsError, match="promoted"):
        h.vmcs.resume()


def test_harness_vmcs_passes_every_entry_check() -> None:
    h = ExitHarness()
    assert checks.check_all(h.vmcs, h.cpu) == []


def test_handler_exception_halts_instead_of_raising() -> None:
    class Broken(ExitHandlerIntelX64):
        def handle_cpuid(self) -> None:
            raise RuntimeError("bug in extension")

    h = ExitHarness(Broken)
    h.exit(ExitReason.CPUID, length=2)
    assert h.vmcs.state is VmcsState.HALTED
    assert "RuntimeError: bug in extension" in h.debug_ring


def test_subclass_adds_an_exit_reason() -> None:
    class HltCounter(ExitHandlerIntelX64):
        hlts = 0

        def handle_exit(self, reason: int) -> None:
            if reason == ExitReason.HLT:
                self.hlts += 1
                self.advance_rip()
            else:
                super().handle_exit(reason)

    h = ExitHarness(HltCounter)
    h.exit(ExitReason.HLT, length=1)
    h.exit(ExitReason.CPUID, length=2, rax=0)
    assert isinstance(h.handler, HltCounter)
    assert h.handler.hlts == 1
    assert h.state.rip == HARNESS_RIP + 3
    assert h.vmcs.state is VmcsState.LAUNCHED


def test_advance_rip_uses_instruction_length() -> None:
    h = ExitHarness()
    h.state.rip = 0xFFFF_FFFF_FFFF_FFFF
    h.vmcs.processor_write(f.VM_EXIT_INSTRUCTION_LENGTH, 2)
    h.handler.advance_rip()
    assert h.state.rip == 1


def test_vm_entry_failure_reports_checks_and_dump() -> None:
    h = ExitHarness()
    h.vmcs.write(f.GUEST_CR0, 1 << 31)  # PG without PE
    h.exit(ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE | (1 << 31))
    ring = h.debug_ring
    assert h.vmcs.state is VmcsState.HALTED
    assert "VM-entry checks: 2 violation(s)" in ring
    assert "[guest.cr0.pg_requires_pe] SDM 26.3.1.1" in ring
    assert "== 16-Bit Control Fields ==" in ring  # the dump follows the findings
