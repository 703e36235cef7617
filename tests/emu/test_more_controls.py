"""The other controls the software CPU implements: INVLPG, PAUSE, RDPMC, CR3/CR8, MOV DR."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from emu_helpers import RUNTIME, SDK, Proc, Recorder, controls, kvm_gap, run, run1

from pyflank.abi import HypervisorFeatures, hypervisor_leaves
from pyflank.backends.base import StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.qualifications import ControlRegisterAccess, CrAccessType, MovDrAccess
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.vmm import Vm


class Skipper(Recorder):
    """Records every exit and steps over the instruction (except the final HLT)."""

    def handle_exit(self, reason: int) -> None:
        if reason in (ExitReason.CPUID, ExitReason.HLT):
            super().handle_exit(reason)
            return
        self.advance_rip()


@pytest.mark.parametrize(
    ("source", "control", "reason", "qualification"),
    [
        ("mov rax, 0x123456\n invlpg [rax + 8]", Proc.INVLPG_EXITING, ExitReason.INVLPG, 0x12345E),
        ("pause", Proc.PAUSE_EXITING, ExitReason.PAUSE, 0),
        ("xor ecx, ecx\n rdpmc", Proc.RDPMC_EXITING, ExitReason.RDPMC, 0),
        (
            "mov rax, cr3\n mov cr3, rax",
            Proc.CR3_LOAD_EXITING,
            ExitReason.CONTROL_REGISTER_ACCESS,
            ControlRegisterAccess(3, CrAccessType.MOV_TO_CR, gpr=0).encode(),
        ),
        (
            "mov rbx, cr3",
            Proc.CR3_STORE_EXITING,
            ExitReason.CONTROL_REGISTER_ACCESS,
            ControlRegisterAccess(3, CrAccessType.MOV_FROM_CR, gpr=3).encode(),
        ),
        (
            "mov rcx, cr8",
            Proc.CR8_STORE_EXITING,
            ExitReason.CONTROL_REGISTER_ACCESS,
            ControlRegisterAccess(8, CrAccessType.MOV_FROM_CR, gpr=1).encode(),
        ),
        (
            "xor eax, eax\n mov dr7, rax",
            Proc.MOV_DR_EXITING,
            ExitReason.MOV_DR,
            MovDrAccess.decode(7 | 0 << 4 | 0 << 8).encode(),
        ),
    ],
)
def test_control_makes_the_instruction_exit(
    source: str, control: int, reason: ExitReason, qualification: int
) -> None:
    kvm_gap("instruction_exits")
    handler = Skipper()
    _, result = run1(source + "\n mov r8, 1\n hlt", lambda: handler, configure=controls(control))
    assert [r.reason for r in handler.records] == [reason]
    assert handler.records[0].qualification == qualification
    assert result.state.r08 == 1  # stepped over, the guest went on
    assert result.reason is StopReason.GUEST_HLT


def test_without_the_controls_nothing_exits() -> None:
    _, result = run1("mov rax, cr3\n mov cr3, rax\n invlpg [rax]\n pause\n mov r8, 1\n hlt")
    assert result.exits == 0 and result.state.r08 == 1


def _cr3_target(value_from: Callable[[Vm], int]) -> Callable[[Vm], None]:
    def setup(vm: Vm) -> None:
        def change(vmcs: Vmcs) -> None:
            controls(Proc.CR3_LOAD_EXITING)(vmcs)
            vmcs.write(f.CR3_TARGET_COUNT, 1)
            vmcs.write(f.CR3_TARGET_VALUE_0, value_from(vm))

        vm.configure(change)

    return setup


def test_a_cr3_target_value_loads_without_exiting() -> None:
    kvm_gap("instruction_exits")
    handler = Skipper()
    _, [result] = run(
        "mov rax, cr3\n mov cr3, rax\n mov r8, cr3\n hlt",
        lambda: handler,
        setup=_cr3_target(lambda vm: vm.page_tables.cr3),
    )
    assert handler.records == []
    assert result.state.r08 == result.vmcs.read(f.GUEST_CR3)


class Doorbell(Recorder):
    """Advertises the I/O-port doorbell instead of VMCALL; an OUT there is the vmcall."""

    PORT = 0xCF6

    def __init__(self) -> None:
        super().__init__()
        self.hypervisor_leaves = hypervisor_leaves(HypervisorFeatures.IO_PORT_DOORBELL, self.PORT)

    def handle_exit(self, reason: int) -> None:
        if reason == ExitReason.IO_INSTRUCTION:
            self.m_state_save.rdx = self.m_state_save.rdi  # the doorbell ABI: RDX in RDI
            self.handle_vmcall()
            return
        super().handle_exit(reason)


# On KVM the doorbell is the backend's own VMCALL path, which every SDK test there takes.
@pytest.mark.backend_independent
def test_the_sdk_uses_the_doorbell_when_cpuid_offers_it() -> None:
    bitmap = 0x200000

    def setup(vm: Vm) -> None:
        vm.memory.fill(bitmap, 0x2000)
        vm.memory.write_u8(bitmap + (Doorbell.PORT >> 3), 1 << (Doorbell.PORT & 7))
        vcpu = vm.vcpus[0]
        vcpu.handler.hypervisor_leaves = hypervisor_leaves(
            HypervisorFeatures.IO_PORT_DOORBELL, Doorbell.PORT
        )

        def change(vmcs: Vmcs) -> None:
            controls(Proc.USE_IO_BITMAPS)(vmcs)
            vmcs.write(f.ADDRESS_OF_IO_BITMAP_A, bitmap)
            vmcs.write(f.ADDRESS_OF_IO_BITMAP_B, bitmap + 0x1000)

        vm.configure(change)

    handler = Doorbell()
    source = SDK + "    PYFLANK_INIT\n    VMCALL_VERSIONS 0\n    PYFLANK_HALT\n" + RUNTIME
    _, [result] = run(source, lambda: handler, setup=setup)
    assert [r.reason for r in handler.records] == [ExitReason.CPUID, ExitReason.IO_INSTRUCTION]
    assert result.state.rdx == 0 and result.state.rbx == 1  # protocol version 1
