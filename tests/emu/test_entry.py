"""What the handler writes is what the guest runs with: controls, guest state, injection."""

from __future__ import annotations

import pytest
from emu_helpers import Proc, Proc2, Recorder, controls, run1, with_idt

from pyflank.backends.base import StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import VM_ENTRY_FAILURE, ExitReason
from pyflank.vmm import Vm


@pytest.mark.parametrize(
    ("change", "name"),
    [
        (controls(Proc.MONITOR_TRAP_FLAG), "MONITOR_TRAP_FLAG"),
        (controls(Proc.USE_TPR_SHADOW), "USE_TPR_SHADOW"),
        (controls(secondary=Proc2.ENABLE_EPT), "ENABLE_EPT"),
        (lambda vmcs: vmcs.write(f.CR0_GUEST_HOST_MASK, 1), "guest/host masks"),
    ],
)
def test_unsupported_controls_are_refused_at_setup(change, name: str) -> None:  # type: ignore[no-untyped-def]
    vm = Vm()
    with pytest.raises(ValueError, match=name):
        vm.configure(change)


class OnCpuid(Recorder):
    """Runs ``action`` on the first CPUID exit, then lets the seed handle it."""

    action = staticmethod(lambda handler: None)

    def handle_cpuid(self) -> None:
        if len([r for r in self.records if r.reason == ExitReason.CPUID]) == 1:
            type(self).action(self)
        super().handle_cpuid()


def _on_cpuid(action) -> type[OnCpuid]:  # type: ignore[no-untyped-def]
    return type("Handler", (OnCpuid,), {"action": staticmethod(action)})


def _set_control(handler: Recorder, bits: int) -> None:
    vmcs = handler.m_vmcs
    field = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
    vmcs.write(field, vmcs.read(field) | bits)


def test_a_control_set_during_an_exit_applies_from_the_next_instruction() -> None:
    handler = _on_cpuid(lambda h: _set_control(h, Proc.HLT_EXITING))
    _, result = run1("cpuid\n hlt", handler)
    assert result.reason is StopReason.HALTED
    assert [reason for reason, _ in result.trace or []] == [ExitReason.CPUID, ExitReason.HLT]


def test_an_unsupported_control_set_by_the_handler_stops_the_vcpu() -> None:
    handler = _on_cpuid(lambda h: _set_control(h, Proc.MONITOR_TRAP_FLAG))
    _, result = run1("cpuid\n hlt", handler)
    assert result.reason is StopReason.ERROR
    assert "MONITOR_TRAP_FLAG" in result.message


def test_guest_state_written_by_the_handler_is_what_the_guest_runs_with() -> None:
    def change(h: Recorder) -> None:
        vmcs = h.m_vmcs
        vmcs.write(f.GUEST_CR0, vmcs.read(f.GUEST_CR0) | 1 << 3)  # CR0.TS
        vmcs.write(f.GUEST_FS_BASE, 0x280000)
        vmcs.write(f.GUEST_RFLAGS, vmcs.read(f.GUEST_RFLAGS) | 1 << 10)  # DF

    source = """
        mov qword ptr [0x280008], 0x77
        cpuid
        mov r8, cr0
        mov rax, 8
        mov r9, fs:[rax]  # keystone makes fs:[8] RIP-relative
        pushfq
        pop r10
        hlt
    """
    _, result = run1(source, _on_cpuid(change))
    s = result.state
    assert s.r08 & 1 << 3
    assert s.r09 == 0x77
    assert s.r10 & 1 << 10
    assert result.vmcs.read(f.GUEST_FS_BASE) == 0x280000


def test_invalid_guest_state_is_a_vm_entry_failure_exit() -> None:
    def break_paging(h: Recorder) -> None:
        h.m_vmcs.write(f.GUEST_CR0, h.m_vmcs.read(f.GUEST_CR0) & ~(1 << 31))

    handler = _on_cpuid(break_paging)
    records: list[int] = []

    class Watch(handler):  # type: ignore[valid-type,misc]
        def dispatch(self) -> None:
            super().dispatch()
            records.append(self.m_vmcs.read(f.VM_EXIT_REASON))

    _, result = run1("cpuid\n hlt", Watch)
    assert records == [
        ExitReason.CPUID,
        ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE | VM_ENTRY_FAILURE,
    ]
    assert result.reason is StopReason.HALTED
    assert "VM-entry checks" in result.debug_ring


def test_an_injected_exception_reaches_the_guest_idt_without_advancing() -> None:
    class InjectUd(Recorder):
        def handle_cpuid(self) -> None:
            self.inject_exception(6)

    _, result = run1(with_idt("    mov r11, 1\n cpuid\n mov r11, 2\n hlt"), InjectUd)
    s = result.state
    assert (s.r12, s.r14, s.r11) == (6, 2**64 - 1, 1)
    assert result.trace is not None
    assert s.r15 == result.trace[0][1]  # the frame's RIP: the CPUID, which never retired


def test_a_block_after_a_halting_exit_changes_nothing() -> None:
    """The instructions after CPUID in its translation block must not run."""

    class HaltOnCpuid(Recorder):
        def handle_cpuid(self) -> None:
            self.halt()

    vm, result = run1(
        "mov qword ptr [0x280000], 1\n cpuid\n mov qword ptr [0x280000], 2\n inc r8\n hlt",
        HaltOnCpuid,
    )
    assert result.reason is StopReason.HALTED
    assert vm.memory.read_u64(0x280000) == 1
    assert result.state.r08 == 0


def test_cpuid_that_does_not_advance_runs_again() -> None:
    class Twice(Recorder):
        def handle_cpuid(self) -> None:
            if len(self.records) == 1:
                self.m_state_save.r09 = 5  # and RIP stays: the CPUID runs again
                return
            super().handle_cpuid()

    vm, result = run1("cpuid\n mov qword ptr [0x280000], r9\n hlt", Twice)
    assert [reason for reason, _ in result.trace or []] == [ExitReason.CPUID, ExitReason.CPUID]
    assert vm.memory.read_u64(0x280000) == 5


def test_configure_one_vcpu() -> None:
    vm = Vm(vcpus=2)
    vm.configure(controls(Proc.HLT_EXITING), vcpu=1)
    proc = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
    assert not vm.vcpus[0].vmcs.read(proc) & Proc.HLT_EXITING
    assert vm.vcpus[1].vmcs.read(proc) & Proc.HLT_EXITING
