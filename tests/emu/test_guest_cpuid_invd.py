"""CPUID and INVD exits, as the guest sees them (on KVM: the CPUID table made from the handler)."""

from __future__ import annotations

from emu_helpers import Proc2, Recorder, controls, cpuid_exits, kvm_gap, on_kvm, run1

from pyflank.abi import DEFAULT_DOORBELL_PORT, HypervisorFeatures
from pyflank.backends.base import StopReason
from pyflank.intel_x64.cpu import ModelCpu
from pyflank.intel_x64.exit_reasons import ExitReason


def _text(*regs: int) -> bytes:
    return b"".join(r.to_bytes(4, "little") for r in regs)


def test_hypervisor_leaves_reach_the_guest() -> None:
    _, result = run1(
        """
        mov eax, 0x40000000
        xor ecx, ecx
        cpuid
        mov r8, rax
        mov r9, rbx
        mov r10, rcx
        mov r11, rdx
        mov eax, 0x40000001
        cpuid
        mov r12, rax
        mov r13, rbx
        hlt
        """
    )
    s = result.state
    assert result.reason is StopReason.GUEST_HLT
    assert s.r08 == 0x40000001
    assert _text(s.r09, s.r10, s.r11) == b"PyFlank\0\0\0\0\0"
    if on_kvm():  # VMCALL may never come back from KVM_RUN: the doorbell instead
        assert (s.r12, s.r13) == (HypervisorFeatures.IO_PORT_DOORBELL, DEFAULT_DOORBELL_PORT)
    else:
        assert s.r12 == HypervisorFeatures.VMCALL_INSTRUCTION
        assert s.r13 == 0  # no doorbell port on the software CPU
    assert result.exits == cpuid_exits(2)


def test_model_leaves_and_the_hypervisor_bit() -> None:
    kvm_gap("physical_cpu")
    _, result = run1(
        """
        xor eax, eax
        xor ecx, ecx
        cpuid
        mov r8, rbx
        mov r9, rdx
        mov r10, rcx
        mov eax, 1
        cpuid
        mov r11, rcx
        mov r12, rax
        hlt
        """
    )
    s = result.state
    assert _text(s.r08, s.r09, s.r10) == b"GenuineIntel"
    leaf1 = ModelCpu().cpuid(1, 0)
    assert s.r11 == leaf1[2] | 1 << 31
    assert s.r12 == leaf1[0]


def test_cpuid_exit_information_and_rip() -> None:
    kvm_gap("cpuid")
    handler = Recorder()
    _, result = run1("nop\n nop\n cpuid\n hlt", lambda: handler)
    [record] = handler.records
    assert record.reason == ExitReason.CPUID
    assert record.rip == 0x100002  # at the CPUID, before it retired
    assert record.length == 2
    assert (record.qualification, record.information, record.linear_address) == (0, 0, 0)
    assert result.state.rip == 0x100005  # past the HLT


def test_prefixed_cpuid_reports_its_length() -> None:
    kvm_gap("cpuid")
    handler = Recorder()
    run1(".byte 0x66, 0x0f, 0xa2\n hlt", lambda: handler)
    assert handler.records[0].length == 3


def test_invd_exits_and_writes_back() -> None:
    kvm_gap("invd")
    handler = Recorder()
    _, result = run1("invd\n mov r8, 7\n hlt", lambda: handler)
    assert [r.reason for r in handler.records] == [ExitReason.INVD]
    assert handler.records[0].length == 2
    assert isinstance(handler.m_cpu, ModelCpu)
    assert handler.m_cpu.wbinvd_count == 1
    assert result.state.r08 == 7


def test_wbinvd_runs_natively_unless_wbinvd_exiting() -> None:
    _, result = run1("wbinvd\n mov r8, 7\n hlt")
    assert result.exits == 0 and result.state.r08 == 7
    kvm_gap("invd")  # WBINVD exiting
    _, result = run1("wbinvd\n hlt", configure=controls(secondary=Proc2.WBINVD_EXITING))
    assert result.reason is StopReason.HALTED
    assert result.trace == [(ExitReason.WBINVD, 0x100000)]
