"""CPUID and INVD."""

from pyflank.abi import HypervisorFeatures
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.testing import HARNESS_RIP, ExitHarness


def regs(h: ExitHarness) -> tuple[int, int, int, int]:
    return (h.state.rax, h.state.rbx, h.state.rcx, h.state.rdx)


def test_cpuid_passes_leaf_and_subleaf_to_the_cpu() -> None:
    h = ExitHarness()
    h.cpu.cpuid_table[(7, 1)] = (1, 2, 3, 4)
    h.exit(ExitReason.CPUID, length=2, rax=0xFFFF_FFFF_0000_0007, rcx=0xAB_0000_0001)
    assert regs(h) == (1, 2, 3, 4)
    assert h.state.rip == HARNESS_RIP + 2


def test_cpuid_vendor_string() -> None:
    h = ExitHarness()
    h.exit(ExitReason.CPUID, length=2, rax=0)
    vendor = b"".join(r.to_bytes(4, "little") for r in (h.state.rbx, h.state.rdx, h.state.rcx))
    assert vendor == b"GenuineIntel"


def test_cpuid_leaf1_sets_hypervisor_bit() -> None:
    h = ExitHarness()
    h.exit(ExitReason.CPUID, length=2, rax=1)
    assert h.state.rcx & (1 << 31)


def test_hypervisor_leaves() -> None:
    h = ExitHarness()
    h.exit(ExitReason.CPUID, length=2, rax=0x40000000)
    sig = b"".join(r.to_bytes(4, "little") for r in (h.state.rbx, h.state.rcx, h.state.rdx))
    assert h.state.rax == 0x40000001
    assert sig == b"PyFlank\0\0\0\0\0"
    h.exit(ExitReason.CPUID, length=2, rax=0x40000001)
    assert h.state.rax == HypervisorFeatures.VMCALL_INSTRUCTION


def test_invd_writes_back_and_advances() -> None:
    h = ExitHarness()
    h.exit(ExitReason.INVD, length=2)
    assert h.cpu.wbinvd_count == 1
    assert h.state.rip == HARNESS_RIP + 2
