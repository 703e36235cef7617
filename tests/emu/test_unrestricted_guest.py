"""An unrestricted guest on the software CPU: a vCPU entered in 32-bit protected mode
with paging off (the PVH entry's state) turns long mode on itself, with the exits the SDM
gives it; CR0 bits the VMM owns read as their shadow, and a write changing one exits."""

from __future__ import annotations

from emu_helpers import kvm_gap, run1

from pyflank.backends.base import StopReason
from pyflank.exit_handler.unrestricted import UnrestrictedGuest
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import VmEntryControls as Entry
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.msrs import EFER_LMA
from pyflank.intel_x64.qualifications import ControlRegisterAccess, CrAccessType
from pyflank.intel_x64.registers import CR0_NE, CR0_TS
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.memory import GuestPhysicalMemory
from pyflank.platform.linux.entry import protected_mode_entry
from pyflank.platform.linux.layout import LinuxLayout

LAYOUT = LinuxLayout()
CODE64 = 0x08  # a 64-bit code segment the test adds to the entry's GDT
START = 0x100000

# 32-bit code, paging off: long mode as Linux's PVH code turns it on, then CR0 again.
TO_LONG_MODE = f"""
.code32
    mov ecx, 0xC0000080
    rdmsr
    or eax, 0x100
    wrmsr
    mov eax, cr4
    or eax, 0x20
    mov cr4, eax
    mov eax, {{cr3}}
    mov cr3, eax
    mov eax, 0x80000011
    mov cr0, eax
    call here
here:
    pop eax
    add eax, long_mode - here
    push {CODE64}
    push eax
    retf
.code64
long_mode:
    mov rax, cr0
    mov rsi, rax
    or eax, 0x20
    mov cr0, rax
    mov rax, cr0
    mov rdi, rax
    mov eax, 1
    cpuid
    hlt
"""


class Recording(UnrestrictedGuest):
    """Enters the guest as PVH does, and notes each exit: reason, qualification, whether
    the VM-entry control "IA-32e mode guest" was set."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int, bool]] = []

    def setup(self, vmcs: Vmcs) -> None:
        scratch = GuestPhysicalMemory(16 << 20)
        entry = protected_mode_entry(scratch, LAYOUT, START, {}, "pvh")
        for encoding, value in entry.vmcs_fields().items():
            if encoding not in (f.GUEST_RIP, f.GUEST_RSP):
                vmcs.write(encoding, value)
        vmcs.write(f.VM_ENTRY_CONTROLS, vmcs.read(f.VM_ENTRY_CONTROLS) & ~Entry.IA_32E_MODE_GUEST)
        super().setup(vmcs)

    def handle_exit(self, reason: int) -> None:
        vmcs = self.m_vmcs
        long_mode = bool(vmcs.read(f.VM_ENTRY_CONTROLS) & Entry.IA_32E_MODE_GUEST)
        self.seen.append((reason & 0xFFFF, vmcs.read(f.EXIT_QUALIFICATION), long_mode))
        super().handle_exit(reason)


def _gdt(vm: object) -> None:
    memory = vm.memory  # type: ignore[attr-defined]
    scratch = GuestPhysicalMemory(16 << 20)
    protected_mode_entry(scratch, LAYOUT, START, {}, "pvh")
    memory.write(LAYOUT.gdt, scratch.read(LAYOUT.gdt, 0x30))
    memory.write(LAYOUT.gdt + CODE64, (0x00AF9A000000FFFF).to_bytes(8, "little"))
    memory.write(LAYOUT.tss, bytes(0x68))


def _run_to_long_mode() -> tuple[Recording, object]:
    kvm_gap("unrestricted_guest")
    from pyflank.vmm import Vm

    probe = Vm()
    cr3 = probe.page_tables.cr3
    probe.close()
    vm, result = run1(TO_LONG_MODE.format(cr3=cr3), Recording, setup=_gdt)
    handler = vm.vcpus[0].handler
    assert isinstance(handler, Recording)
    return handler, (vm, result)


def test_a_guest_entered_without_paging_turns_long_mode_on_itself() -> None:
    handler, (vm, result) = _run_to_long_mode()
    assert result.reason is StopReason.GUEST_HLT, result.message
    reasons = [reason for reason, _, _ in handler.seen]
    assert reasons == [
        ExitReason.RDMSR, ExitReason.WRMSR, ExitReason.CONTROL_REGISTER_ACCESS, ExitReason.CPUID,
    ]  # fmt: skip
    # Outside long mode until the guest's own CR0 write; the exit saves EFER.LMA into the
    # "IA-32e mode guest" control (SDM 28.2).
    assert [long_mode for _, _, long_mode in handler.seen] == [False, False, True, True]
    mov_rax = ControlRegisterAccess(0, CrAccessType.MOV_TO_CR, gpr=0).encode()
    assert handler.seen[2][1] == mov_rax
    vmcs = vm.vcpus[0].vmcs  # type: ignore[attr-defined]
    assert vmcs.read(f.GUEST_IA32_EFER) & EFER_LMA
    assert vmcs.read(f.GUEST_CR0) == 0x80000031  # the real CR0 never lost NE
    # The guest read its own NE: clear as it wrote it, then set after the exit.
    assert result.state.rsi == 0x80000011 and result.state.rdi == 0x80000031
    assert vmcs.read(f.CR0_READ_SHADOW) & CR0_NE


class OwnsTs(UnrestrictedGuest):
    """A 64-bit guest whose CR0.TS the VMM owns, shadowed as set."""

    def __init__(self) -> None:
        super().__init__()
        self.accesses: list[ControlRegisterAccess] = []

    def setup(self, vmcs: Vmcs) -> None:
        super().setup(vmcs)
        vmcs.write(f.CR0_GUEST_HOST_MASK, vmcs.read(f.CR0_GUEST_HOST_MASK) | CR0_TS)
        vmcs.write(f.CR0_READ_SHADOW, vmcs.read(f.GUEST_CR0) & ~CR0_NE | CR0_TS)

    def handle_control_register_access(self) -> None:
        self.accesses.append(ControlRegisterAccess.decode(self.m_vmcs.read(f.EXIT_QUALIFICATION)))
        super().handle_control_register_access()


def test_clts_and_lmsw_exit_when_they_change_an_owned_bit() -> None:
    kvm_gap("unrestricted_guest")
    source = """
        mov rax, cr0
        mov r8, rax
        clts
        mov rax, cr0
        mov r9, rax
        clts
        mov ax, 0x9
        lmsw ax
        mov rax, cr0
        mov r10, rax
        hlt
    """
    vm, result = run1(source, OwnsTs)
    handler = vm.vcpus[0].handler
    assert isinstance(handler, OwnsTs)
    assert result.reason is StopReason.GUEST_HLT, result.message
    state = result.state
    assert state.r08 & CR0_TS and not state.r08 & CR0_NE  # the shadow's TS and NE
    assert not state.r09 & CR0_TS and state.r10 & CR0_TS
    # The second CLTS changes nothing the VMM owns: no exit.
    assert [a.access_type for a in handler.accesses] == [CrAccessType.CLTS, CrAccessType.LMSW]
    assert handler.accesses[1].lmsw_source_data == 0x9
    assert not vm.vcpus[0].vmcs.read(f.GUEST_CR0) & CR0_TS  # the real TS was never the guest's


def test_an_event_for_a_guest_outside_long_mode_stops_the_vcpu_with_the_reason() -> None:
    kvm_gap("unrestricted_guest")
    _, result = run1(".code32\n    ud2\n", Recording, setup=_gdt)
    assert result.reason is StopReason.ERROR
    assert "outside long mode" in result.message


class GpExits(OwnsTs):
    """OwnsTs, with #GP an exception exit (exit 0) to see it."""

    def __init__(self) -> None:
        super().__init__()
        self.vectors: list[int] = []

    def setup(self, vmcs: Vmcs) -> None:
        super().setup(vmcs)
        vmcs.write(f.EXCEPTION_BITMAP, 1 << 13)

    def handle_exception_or_nmi(self) -> None:
        self.vectors.append(self.m_vmcs.read(f.VM_EXIT_INTERRUPTION_INFORMATION) & 0xFF)
        self.halt()


def test_a_cr0_write_with_reserved_upper_bits_is_a_general_protection_fault() -> None:
    kvm_gap("unrestricted_guest")
    source = """
        mov rax, cr0
        bts rax, 32
        mov cr0, rax
        hlt
    """
    vm, result = run1(source, GpExits)
    assert result.reason is StopReason.HALTED, result.message
    handler = vm.vcpus[0].handler
    assert isinstance(handler, GpExits)
    assert handler.vectors == [13] and handler.accesses == []
