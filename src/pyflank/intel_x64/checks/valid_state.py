"""Build a VMCS that passes every VM-entry check: a flat 64-bit guest and a 64-bit host.

Tests break one rule of this state at a time; backends use it as the starting
point of a long-mode guest.  Selectors follow the usual flat GDT layout: code
0x08, data 0x10, TSS 0x18.
"""

from __future__ import annotations

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.controls import VmEntryControls, VmExitControls, adjust_controls
from pyflank.intel_x64.cpu import PhysicalCpu
from pyflank.intel_x64.vmcs import Vmcs

CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR = 0x08, 0x10, 0x18
CODE64_ACCESS_RIGHTS = 0xA09B  # G, L, P, S, type 11 (execute/read, accessed)
DATA_ACCESS_RIGHTS = 0xC093  # G, D/B, P, S, type 3 (read/write, accessed)
TSS64_BUSY_ACCESS_RIGHTS = 0x008B  # P, type 11 (64-bit busy TSS)
UNUSABLE_ACCESS_RIGHTS = b.AR_UNUSABLE
FLAT_LIMIT = 0xFFFF_FFFF
TSS_LIMIT = 0x67  # a 64-bit TSS without an I/O bitmap

GUEST_CR0 = b.CR0_PE | b.CR0_MP | b.CR0_ET | b.CR0_NE | b.CR0_WP | b.CR0_PG
GUEST_CR4 = b.CR4_PAE | b.CR4_VMXE
GUEST_EFER = b.EFER_LME | b.EFER_LMA | b.EFER_NXE
HOST_EFER = b.EFER_SCE | b.EFER_LME | b.EFER_LMA | b.EFER_NXE
DEFAULT_PAT = 0x0007_0406_0007_0406  # the power-on IA32_PAT
DR7_INIT = 0x400

_SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs")


def _set_segment(vmcs: Vmcs, name: str, selector: int, base: int, limit: int, rights: int) -> None:
    upper = name.upper()
    vmcs.write(getattr(f, f"GUEST_{upper}_SELECTOR"), selector)
    vmcs.write(getattr(f, f"GUEST_{upper}_BASE"), base)
    vmcs.write(getattr(f, f"GUEST_{upper}_LIMIT"), limit)
    vmcs.write(getattr(f, f"GUEST_{upper}_ACCESS_RIGHTS"), rights)


def long_mode_guest_state(
    vmcs: Vmcs,
    *,
    cr3: int,
    rip: int,
    rsp: int,
    gdt_base: int,
    gdt_limit: int,
    idt_base: int = 0,
    idt_limit: int = 0,
    tr_base: int = 0,
    tr_limit: int = TSS_LIMIT,
) -> None:
    """Write a complete 64-bit guest state: paging on, flat segments, CPL 0, IF off.

    The guest's GDT at ``gdt_base`` should hold matching descriptors; VM entry
    does not read it, but the guest will when it reloads a segment register.
    """
    vmcs.write(f.GUEST_CR0, GUEST_CR0)
    vmcs.write(f.GUEST_CR3, cr3)
    vmcs.write(f.GUEST_CR4, GUEST_CR4)
    vmcs.write(f.GUEST_DR7, DR7_INIT)
    vmcs.write(f.GUEST_IA32_EFER, GUEST_EFER)
    vmcs.write(f.GUEST_IA32_PAT, DEFAULT_PAT)
    vmcs.write(f.GUEST_IA32_DEBUGCTL, 0)
    vmcs.write(f.GUEST_RIP, rip)
    vmcs.write(f.GUEST_RSP, rsp)
    vmcs.write(f.GUEST_RFLAGS, b.RFLAGS_FIXED1)
    for name in _SEGMENTS:
        selector, rights = DATA_SELECTOR, DATA_ACCESS_RIGHTS
        if name == "cs":
            selector, rights = CODE_SELECTOR, CODE64_ACCESS_RIGHTS
        _set_segment(vmcs, name, selector, 0, FLAT_LIMIT, rights)
    _set_segment(vmcs, "tr", TSS_SELECTOR, tr_base, tr_limit, TSS64_BUSY_ACCESS_RIGHTS)
    _set_segment(vmcs, "ldtr", 0, 0, 0, UNUSABLE_ACCESS_RIGHTS)
    vmcs.write(f.GUEST_GDTR_BASE, gdt_base)
    vmcs.write(f.GUEST_GDTR_LIMIT, gdt_limit)
    vmcs.write(f.GUEST_IDTR_BASE, idt_base)
    vmcs.write(f.GUEST_IDTR_LIMIT, idt_limit)
    vmcs.write(f.GUEST_ACTIVITY_STATE, 0)
    vmcs.write(f.GUEST_INTERRUPTIBILITY_STATE, 0)
    vmcs.write(f.GUEST_PENDING_DEBUG_EXCEPTIONS, 0)
    vmcs.write(f.VMCS_LINK_POINTER, b.MASK64)
    vmcs.write(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD, 0)


def _capability(cpu: PhysicalCpu, plain: int, true: int) -> int:
    if cpu.rdmsr(msrs.IA32_VMX_BASIC) & msrs.VMX_BASIC_TRUE_CONTROLS:
        return cpu.rdmsr(true)
    return cpu.rdmsr(plain)


def default_controls(vmcs: Vmcs, cpu: PhysicalCpu) -> None:
    """Write the fewest VMX controls the capability MSRs allow, for a 64-bit guest
    and host, and the host's control registers, EFER, PAT and selectors (host RIP,
    RSP, CR3 and bases belong to the backend and are left alone).

    Beyond the required bits: "IA-32e mode guest", "host address-space size", and
    "load IA32_EFER" on entry and exit where the processor has them, so that the
    guest gets its EFER.NXE and the host its EFER.SCE/NXE back on every exit.
    """
    exit_capability = _capability(cpu, msrs.IA32_VMX_EXIT_CTLS, msrs.IA32_VMX_TRUE_EXIT_CTLS)
    entry_capability = _capability(cpu, msrs.IA32_VMX_ENTRY_CTLS, msrs.IA32_VMX_TRUE_ENTRY_CTLS)
    pin_capability = _capability(cpu, msrs.IA32_VMX_PINBASED_CTLS, msrs.IA32_VMX_TRUE_PINBASED_CTLS)
    proc_capability = _capability(
        cpu, msrs.IA32_VMX_PROCBASED_CTLS, msrs.IA32_VMX_TRUE_PROCBASED_CTLS
    )
    exit_wanted = VmExitControls.HOST_ADDRESS_SPACE_SIZE | VmExitControls.LOAD_IA32_EFER
    entry_wanted = VmEntryControls.IA_32E_MODE_GUEST | VmEntryControls.LOAD_IA32_EFER
    exit_controls = adjust_controls(int(exit_wanted), exit_capability)
    entry_controls = adjust_controls(int(entry_wanted), entry_capability)
    vmcs.write(f.PIN_BASED_VM_EXECUTION_CONTROLS, adjust_controls(0, pin_capability))
    vmcs.write(f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, adjust_controls(0, proc_capability))
    vmcs.write(f.VM_EXIT_CONTROLS, exit_controls)
    vmcs.write(f.VM_ENTRY_CONTROLS, entry_controls)
    vmcs.write(f.CR3_TARGET_COUNT, 0)
    _host_state(vmcs, cpu)


def _host_state(vmcs: Vmcs, cpu: PhysicalCpu) -> None:
    fixed0_cr0 = cpu.rdmsr(msrs.IA32_VMX_CR0_FIXED0)
    fixed0_cr4 = cpu.rdmsr(msrs.IA32_VMX_CR4_FIXED0)
    vmcs.write(f.HOST_CR0, GUEST_CR0 | fixed0_cr0)
    vmcs.write(f.HOST_CR4, b.CR4_PAE | b.CR4_VMXE | fixed0_cr4)
    vmcs.write(f.HOST_IA32_EFER, HOST_EFER)
    vmcs.write(f.HOST_IA32_PAT, DEFAULT_PAT)
    vmcs.write(f.HOST_CS_SELECTOR, CODE_SELECTOR)
    for encoding in (f.HOST_SS_SELECTOR, f.HOST_DS_SELECTOR, f.HOST_ES_SELECTOR):
        vmcs.write(encoding, DATA_SELECTOR)
    vmcs.write(f.HOST_TR_SELECTOR, TSS_SELECTOR)
