"""Each KVM exit the VMX model knows, seen by the exit handler as the VMX exit it stands for."""

from __future__ import annotations

import threading

from kvm_guest_helpers import LAYOUT, Guest, assemble

from kvm_support import kvm_marks
from pyflank.backends.kvm import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Primary
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.qualifications import EptViolation, IoDirection, IoInstruction

pytestmark = kvm_marks()

MMIO = LAYOUT.mmio[0]


def finish(guest: Guest) -> StopReason:
    """Run to the stop and close; only Python-side state (VMCS, StateSave) is read after."""
    with guest:
        return guest.run()


def test_efer_round_trip_through_the_msr_filter() -> None:
    source = """
        mov ecx, 0xc0000080
        rdmsr
        mov r12, rax
        or eax, 1
        wrmsr
        rdmsr
        mov r13, rax
        hlt
    """
    with Guest(source) as guest:
        vmcs, state = guest.handler.m_vmcs, guest.handler.m_state_save
        assert guest.run() is StopReason.GUEST_HLT
        assert state.r12 == 0xD00  # LME | LMA | NXE, from the VMCS guest-state area
        assert state.r13 == 0xD01
        assert vmcs.read(f.GUEST_IA32_EFER) == 0xD01
        assert guest.vcpu.registers.sregs.efer & 1, "the handler's WRMSR reached KVM (EFER.SCE)"
        assert guest.dispatched == 3


class IoRecorder(ExitHandlerIntelX64):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[IoInstruction, int, int]] = []

    def handle_io_instruction(self) -> None:
        vmcs = self.m_vmcs
        io = IoInstruction.decode(vmcs.read(f.EXIT_QUALIFICATION))
        self.seen.append((io, vmcs.read(f.GUEST_RIP), vmcs.read(f.VM_EXIT_INSTRUCTION_LENGTH)))
        if io.direction is IoDirection.IN:
            self.m_state_save.rax = 0x42
        self.advance_rip()


def _io_exiting(handler: ExitHandlerIntelX64) -> None:
    vmcs = handler.m_vmcs
    controls = vmcs.read(f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)
    vmcs.write(
        f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, controls | Primary.UNCONDITIONAL_IO_EXITING
    )


def test_io_exit_with_qualification_when_the_controls_ask() -> None:
    source = """
        mov dx, 0x3f8
        mov al, 0x41
        out dx, al
        in al, 0x60
        mov r12, rax
        out 0x80, ax
        out dx, al
        hlt
    """
    handler = IoRecorder()
    guest = Guest(source, handler, prepare=_io_exiting)
    com1 = guest.com1
    assert finish(guest) is StopReason.GUEST_HLT
    assert com1.output == b"", "with I/O exiting, OUT goes to the handler, not to COM1"
    assert handler.m_state_save.r12 == 0x42
    base = LAYOUT.code
    assert [(str(io), rip - base, n) for io, rip, n in handler.seen] == [
        ("out port 0x03f8 (1 byte(s), port in dx)", 6, 1),
        ("in port 0x0060 (1 byte(s), port in imm8)", 7, 2),
        ("out port 0x0080 (2 byte(s), port in imm8)", 12, 3),
        ("out port 0x03f8 (1 byte(s), port in dx)", 15, 1),
    ]


def test_io_without_exiting_goes_to_the_platform() -> None:
    guest = Guest("mov dx, 0x3f8; mov al, 0x41; out dx, al; out dx, al; hlt")
    com1 = guest.com1
    assert finish(guest) is StopReason.GUEST_HLT
    assert com1.output == b"AA"


def test_mmio_write_is_an_ept_violation() -> None:
    guest = Guest(f"mov rbx, {MMIO:#x}; mov dword ptr [rbx], 0x11223344; hlt")
    vmcs = guest.handler.m_vmcs
    assert finish(guest) is StopReason.HALTED  # the seed's handler has no EPT-violation handler
    assert vmcs.read(f.VM_EXIT_REASON) == ExitReason.EPT_VIOLATION
    assert vmcs.read(f.GUEST_PHYSICAL_ADDRESS) == MMIO
    qualification = EptViolation.decode(vmcs.read(f.EXIT_QUALIFICATION))
    assert qualification.data_write and not qualification.data_read
    assert vmcs.read(f.GUEST_RIP) == LAYOUT.code + 7  # at the faulting MOV, not past it
    assert vmcs.read(f.VM_EXIT_INSTRUCTION_LENGTH) == 6
    assert "- exit reason string: ept_violation\n" in guest.handler.m_debug_ring.read()


class MmioDevice(ExitHandlerIntelX64):
    """Emulates 32-bit loads from one MMIO register: the handler moves RIP itself."""

    def handle_ept_violation(self) -> None:
        self.m_state_save.rax = 0xFEEDF00D
        self.advance_rip()


def test_mmio_read_emulated_by_the_handler() -> None:
    source = f"mov rbx, {MMIO:#x}; xor eax, eax; mov eax, dword ptr [rbx]; mov r12, rax; hlt"
    guest = Guest(source, MmioDevice())
    state = guest.handler.m_state_save
    assert finish(guest) is StopReason.GUEST_HLT
    assert state.r12 == 0xFEEDF00D


def test_triple_fault_is_a_shutdown_exit() -> None:
    guest = Guest("mov rax, [0x7fff00000000]; hlt")  # #PF, no IDT: #DF, then triple fault
    vmcs = guest.handler.m_vmcs
    assert finish(guest) is StopReason.SHUTDOWN  # the seed does not resume a triple fault
    assert vmcs.read(f.VM_EXIT_REASON) == ExitReason.TRIPLE_FAULT


def test_emulation_failure_is_reported_not_hung() -> None:
    # x87 loads from MMIO must go through KVM's emulator, which has no x87: everywhere a failure.
    guest = Guest(f"mov rbx, {MMIO:#x}; fld qword ptr [rbx]; hlt")
    ring = guest.handler.m_debug_ring
    reason = guest.run_to_stop(timeout=5)
    guest.close()
    assert reason.reason in (StopReason.EMULATION_FAILURE, StopReason.HALTED), reason
    if reason.reason is StopReason.EMULATION_FAILURE:
        assert "could not emulate" in reason.message
        assert "could not emulate" in ring.read()


def test_spinning_guest_times_out() -> None:
    guest = Guest("spin: jmp spin")
    try:
        result = guest.run_to_stop(timeout=0.3)
        assert result.reason is StopReason.TIMEOUT
    finally:
        guest.close()


def test_handler_cpuid_becomes_the_vcpu_table() -> None:
    guest = Guest("mov eax, 0x40000000; xor ecx, ecx; cpuid; mov r12, rbx; mov r13, rcx; hlt")
    state = guest.handler.m_state_save
    assert finish(guest) is StopReason.GUEST_HLT
    signature = state.r12.to_bytes(4, "little") + state.r13.to_bytes(4, "little")
    assert signature == b"PyFlank\0"


def test_assembler_sanity() -> None:
    assert assemble("hlt") == b"\xf4"


def test_refused_guest_state_is_a_vm_entry_failure() -> None:
    def paging_without_protection(handler: ExitHandlerIntelX64) -> None:
        vmcs = handler.m_vmcs
        vmcs.write(f.GUEST_CR0, vmcs.read(f.GUEST_CR0) & ~1)  # CR0.PG=1 with PE=0

    guest = Guest("hlt", prepare=paging_without_protection)
    vmcs, ring = guest.handler.m_vmcs, guest.handler.m_debug_ring
    assert finish(guest) is StopReason.HALTED
    assert vmcs.read(f.VM_EXIT_REASON) == ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE | 1 << 31
    text = ring.read()
    assert "VM entry failed" in text
    assert "VM-entry checks" in text


class JumpingRdmsr(ExitHandlerIntelX64):
    """Answers RDMSR and resumes the guest at the address in R15 instead of after it."""

    def handle_rdmsr(self) -> None:
        state = self.m_state_save
        state.rax, state.rdx = 0x1234, 0
        state.rip = state.r15


def test_handler_moving_rip_elsewhere_is_honoured() -> None:
    source = """
        lea r15, [rip + landing]
        mov ecx, 0x10
        rdmsr
        mov r12, 1
        hlt
    landing:
        mov r12, 2
        mov r13, rax
        hlt
    """
    guest = Guest(source, JumpingRdmsr())
    state = guest.handler.m_state_save
    assert finish(guest) is StopReason.GUEST_HLT
    assert (state.r12, state.r13) == (2, 0x1234)


def test_stop_from_another_thread() -> None:
    with Guest("spin: jmp spin") as guest:
        timer = threading.Timer(0.2, guest.stop)
        timer.start()
        result = guest.run_to_stop(timeout=10)
        timer.join()
        assert result.reason is StopReason.STOPPED
