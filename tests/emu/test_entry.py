"""What the handler writes is what the guest runs with: controls, guest state, injection."""

from __future__ import annotations

import pytest
from emu_helpers import RUNTIME, SDK, Proc, Proc2, Recorder, controls, kvm_gap, run1, with_idt

from pyflank.backends.base import StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import VM_ENTRY_FAILURE, ExitReason
from pyflank.vmm import Vm


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (controls(Proc.MWAIT_EXITING), "MWAIT_EXITING"),
        (controls(Proc.USE_TPR_SHADOW), "USE_TPR_SHADOW"),
        (controls(secondary=Proc2.VIRTUALIZE_APIC_ACCESSES), "VIRTUALIZE_APIC_ACCESSES"),
        (lambda vmcs: vmcs.write(f.CR4_GUEST_HOST_MASK, 1), "guest/host masks"),
    ],
)
def test_unsupported_controls_are_refused_at_setup(change, name: str, backend: str) -> None:  # type: ignore[no-untyped-def]
    vm = Vm(backend=backend)
    with pytest.raises(ValueError, match=name):
        vm.configure(change)


# An exit on every backend (CPUID never leaves KVM): RDMSR of an MSR the seed reads as 0.
EXIT = "mov ecx, 0x39\n rdmsr"


class OnRdmsr(Recorder):
    """Runs ``action`` on the first RDMSR exit, then lets the seed handle it."""

    action = staticmethod(lambda handler: None)

    def handle_rdmsr(self) -> None:
        if len([r for r in self.records if r.reason == ExitReason.RDMSR]) == 1:
            type(self).action(self)
        super().handle_rdmsr()


def _on_exit(action) -> type[OnRdmsr]:  # type: ignore[no-untyped-def]
    return type("Handler", (OnRdmsr,), {"action": staticmethod(action)})


def _set_control(handler: Recorder, bits: int) -> None:
    vmcs = handler.m_vmcs
    field = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
    vmcs.write(field, vmcs.read(field) | bits)


def test_a_control_set_during_an_exit_applies_from_the_next_instruction() -> None:
    handler = _on_exit(lambda h: _set_control(h, Proc.HLT_EXITING))
    _, result = run1(f"{EXIT}\n hlt", handler)
    assert result.reason is StopReason.HALTED
    assert [reason for reason, _ in result.trace or []] == [ExitReason.RDMSR, ExitReason.HLT]


def test_an_unsupported_control_set_by_the_handler_stops_the_vcpu() -> None:
    handler = _on_exit(lambda h: _set_control(h, Proc.MWAIT_EXITING))
    _, result = run1(f"{EXIT}\n hlt", handler)
    assert result.reason is StopReason.ERROR
    assert "MWAIT_EXITING" in result.message


def test_guest_state_written_by_the_handler_is_what_the_guest_runs_with() -> None:
    def change(h: Recorder) -> None:
        vmcs = h.m_vmcs
        vmcs.write(f.GUEST_CR0, vmcs.read(f.GUEST_CR0) | 1 << 3)  # CR0.TS
        vmcs.write(f.GUEST_FS_BASE, 0x280000)
        vmcs.write(f.GUEST_RFLAGS, vmcs.read(f.GUEST_RFLAGS) | 1 << 10)  # DF

    source = f"""
        mov qword ptr [0x280008], 0x77
        {EXIT}
        mov r8, cr0
        mov rax, 8
        mov r9, fs:[rax]  # keystone makes fs:[8] RIP-relative
        pushfq
        pop r10
        hlt
    """
    _, result = run1(source, _on_exit(change))
    s = result.state
    assert s.r08 & 1 << 3
    assert s.r09 == 0x77
    assert s.r10 & 1 << 10
    assert result.vmcs.read(f.GUEST_FS_BASE) == 0x280000


def test_invalid_guest_state_is_a_vm_entry_failure_exit() -> None:
    def break_paging(h: Recorder) -> None:
        h.m_vmcs.write(f.GUEST_CR0, h.m_vmcs.read(f.GUEST_CR0) & ~(1 << 31))

    handler = _on_exit(break_paging)
    records: list[int] = []

    class Watch(handler):  # type: ignore[valid-type,misc]
        def dispatch(self) -> None:
            super().dispatch()
            records.append(self.m_vmcs.read(f.VM_EXIT_REASON))

    _, result = run1(f"{EXIT}\n hlt", Watch)
    assert records == [
        ExitReason.RDMSR,
        ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE | VM_ENTRY_FAILURE,
    ]
    assert result.reason is StopReason.HALTED
    assert "VM-entry checks" in result.debug_ring


def test_an_injected_exception_reaches_the_guest_idt_without_advancing() -> None:
    class InjectUd(Recorder):
        def handle_rdmsr(self) -> None:
            self.inject_exception(6)

    _, result = run1(with_idt(f"    mov r11, 1\n {EXIT}\n mov r11, 2\n hlt"), InjectUd)
    s = result.state
    assert (s.r12, s.r14, s.r11) == (6, 2**64 - 1, 1)
    assert result.trace is not None
    assert s.r15 == result.trace[0][1]  # the frame's RIP: the RDMSR, which never retired


# The same exit behaviour from an instruction hook (CPUID) and an intercept (RDMSR).
EXITS = pytest.mark.parametrize(
    ("instruction", "reason"), [("cpuid", ExitReason.CPUID), (EXIT, ExitReason.RDMSR)]
)


@EXITS
def test_a_block_after_a_halting_exit_changes_nothing(instruction: str, reason: int) -> None:
    """The instructions after the exit in its translation block must not run."""
    if reason == ExitReason.CPUID:
        kvm_gap("cpuid")

    class HaltOnExit(Recorder):
        def handle_exit(self, exit_reason: int) -> None:
            self.halt()

    vm, result = run1(
        f"mov qword ptr [0x280000], 1\n {instruction}\n mov qword ptr [0x280000], 2\n inc r8\n hlt",
        HaltOnExit,
    )
    assert result.reason is StopReason.HALTED
    assert vm.memory.read_u64(0x280000) == 1
    assert result.state.r08 == 0


@EXITS
def test_an_exit_that_does_not_advance_runs_again(instruction: str, reason: int) -> None:
    if reason == ExitReason.CPUID:
        kvm_gap("cpuid")

    class Twice(Recorder):
        def handle_exit(self, exit_reason: int) -> None:
            if len(self.records) == 1:
                self.m_state_save.r09 = 5  # and RIP stays: the instruction runs again
                return
            super().handle_exit(exit_reason)

    vm, result = run1(f"{instruction}\n mov qword ptr [0x280000], r9\n hlt", Twice)
    assert [exit_reason for exit_reason, _ in result.trace or []] == [reason, reason]
    assert vm.memory.read_u64(0x280000) == 5


def test_configure_one_vcpu(backend: str) -> None:
    vm = Vm(vcpus=2, backend=backend)
    vm.configure(controls(Proc.HLT_EXITING), vcpu=1)
    proc = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
    assert not vm.vcpus[0].vmcs.read(proc) & Proc.HLT_EXITING
    assert vm.vcpus[1].vmcs.read(proc) & Proc.HLT_EXITING


def test_an_invalid_cr0_from_the_handler_is_reported_by_rule() -> None:
    """CR0.PG without CR0.PE, written at a vmcall exit: the next VM entry fails, and the
    report names the SDM rule (KVM does not check guest state: the backend does, in software)."""

    class BreakCr0(Recorder):
        def handle_vmcall(self) -> None:
            super().handle_vmcall()
            self.m_vmcs.write(f.GUEST_CR0, 1 << 31)

    source = SDK + "    PYFLANK_INIT\n    VMCALL_VERSIONS 0\n    PYFLANK_HALT\n" + RUNTIME
    _, result = run1(source, BreakCr0)
    assert result.reason is StopReason.HALTED
    assert result.trace is not None
    assert result.trace[-2][0] == ExitReason.VMCALL
    assert result.trace[-1][0] == ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE
    assert "[guest.cr0.pg_requires_pe]" in result.debug_ring
