"""The SVM world the software CPU runs the guest in, and the VMCB that enters it.

unicorn (QEMU 5 TCG) implements AMD SVM.  With the guest running as an SVM guest, the
instructions VMX makes exit (RDMSR/WRMSR, HLT, INVD, INVLPG, PAUSE, ...) hit their SVM
intercepts *before they execute*; QEMU then raises exception 0x100 + SVM exit code, which
unicorn hands to the interrupt hook with the guest's registers untouched, because the hook
swallows the exception before QEMU's #VMEXIT would switch to the host state.  So the
guest never leaves guest mode, and the intercepts give precise exits for free.

Every exception and every INT n/INT3/INTO is intercepted too.  QEMU delivers nothing
itself here (pyflank does, through the guest IDT), and an exception it raised but never
delivered would stay "in flight" (``old_exception``: the guest's next #GP becomes a #DF)
and leave its "software interrupt" flag set (the next intercept then reports the RIP after
that INT3).  An intercept does neither: QEMU clears ``old_exception`` on a #VMEXIT and
checks the intercept before it notes anything, and it reports a fault at its instruction
with a #PF's address in the VMCB (EXITINFO2) instead of CR2, as AMD's processors do.

Every VM entry that loads guest state (the launch, and any resume whose guest-state fields
the handler changed) runs a stub, ``VMLOAD; VMRUN``, against a VMCB built from the VMCS.
The stub, the VMCB and the permission maps live in a private region above guest RAM and
above the guest's MAXPHYADDR, mapped only by the stub's own page tables.  VMLOAD and VMRUN
need CPL 0, and the guest may have stopped in ring 3 (or in a 32-bit code segment), which
unicorn's API cannot change (a CS write sets only the selector).  So the stub starts with
a far call through a 64-bit call gate of its own GDT: from any CPL, that lands in its
64-bit ring-0 code segment (on its own TSS's stack when the CPL changes), as a VMM
entered from user mode would.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.registers import AR_UNUSABLE, CR4_VMXE

HOST_BASE: Final = 0xFF_0000_0000  # 1 GiB aligned, below QEMU's 40 physical address bits
HOST_SIZE: Final = 0x10000
HOST_PML4: Final = HOST_BASE
HOST_PDPT: Final = HOST_BASE + 0x1000
STUB: Final = HOST_BASE + 0x2000  # entered at the guest's CPL
STUB_RING0: Final = STUB + 0x10  # where the call gate lands, in ring 0
VMCB: Final = HOST_BASE + 0x3000
HSAVE: Final = HOST_BASE + 0x4000
MSRPM: Final = HOST_BASE + 0x5000  # 8 KiB
IOPM: Final = HOST_BASE + 0x8000  # 12 KiB
HOST_GDT: Final = HOST_BASE + 0xC000
HOST_TSS: Final = HOST_BASE + 0xD000
HOST_STACK_TOP: Final = HOST_BASE + HOST_SIZE
HOST_CODE_SELECTOR: Final = 0x08
HOST_GATE_SELECTOR: Final = 0x18
HOST_TSS_LIMIT: Final = 0x67
TSS_BUSY_FLAGS: Final = 0x8B00  # a present, busy 64-bit TSS, as QEMU caches descriptor flags


def _call_gate(target: int) -> tuple[int, int]:
    """A present 64-bit call gate (DPL 3: callable from any CPL) to the host code segment."""
    low = target & 0xFFFF | HOST_CODE_SELECTOR << 16 | 0xEC << 40 | (target >> 16 & 0xFFFF) << 48
    return low, target >> 32


# null, 64-bit ring-0 code, ring-0 data, the call gate (16 bytes)
HOST_GDT_ENTRIES: Final = (0, 0x00AF9A000000FFFF, 0x00CF92000000FFFF, *_call_gate(STUB_RING0))
HOST_GDT_LIMIT: Final = 8 * len(HOST_GDT_ENTRIES) - 1
# CALL FAR [RIP + 0] (m16:32; a gate ignores the offset), then the far pointer.
CALL_THROUGH_GATE: Final = bytes.fromhex("ff1d00000000") + struct.pack("<IH", 0, HOST_GATE_SELECTOR)
VMLOAD_VMRUN: Final = bytes.fromhex("0f01da0f01d8f4")
# The code the stub runs in its blocks: the far call (a block of its own), VMLOAD and
# VMRUN (which ends the second); the stop gate counts them before the guest's first.
STUB_BLOCK_BYTES: Final = 6 + 6
# A guest without long mode (an unrestricted guest in protected mode) stopped in 32-bit
# code: the stub switches to the host's long mode, where that code segment is
# compatibility mode, whose EIP cannot reach HOST_BASE and has no RIP-relative operand.
# So a second stub, CALL FAR ptr16:32 through the same gate, is also mapped by the host
# tables at a linear address below 4 GiB (a 2 MiB page of the private region at
# COMPAT_WINDOW).
STUB_COMPAT: Final = STUB + 0x20
COMPAT_WINDOW: Final = 0xFFE0_0000
COMPAT_STUB: Final = COMPAT_WINDOW + (STUB_COMPAT - HOST_BASE)  # linear, through the window
CALL_THROUGH_GATE_32: Final = b"\x9a" + struct.pack("<IH", 0, HOST_GATE_SELECTOR)
COMPAT_STUB_BLOCK_BYTES: Final = len(CALL_THROUGH_GATE_32) + 6
HOST_LOW_PDPT: Final = HOST_BASE + 0x7000  # the window's page-directory pointer table
HOST_LOW_PD: Final = HOST_BASE + 0xB000  # and page directory

MSR_VM_HSAVE_PA: Final = 0xC0010117
EFER_SVME: Final = 1 << 12
HOST_CR0: Final = 0x8005_0033  # PG, WP, NE, ET, MP, PE
HOST_CR4: Final = 0x0000_0620  # PAE, OSFXSR, OSXMMEXCPT
HOST_EFER: Final = 0xD01 | EFER_SVME  # SCE, LME, LMA, NXE

# SVM exit codes (AMD APM Vol. 2, Appendix C) that reach the interrupt hook as 0x100 + code.
SVM_EXCEPTION_BASE: Final = 0x100
SVM_EXIT_CR3_READ: Final = 0x03
SVM_EXIT_CR8_READ: Final = 0x08
SVM_EXIT_CR0_WRITE: Final = 0x10
SVM_EXIT_CR3_WRITE: Final = 0x13
SVM_EXIT_CR8_WRITE: Final = 0x18
SVM_EXIT_DR_READ: Final = 0x20
SVM_EXIT_DR_WRITE: Final = 0x30
SVM_EXIT_EXCP_BASE: Final = 0x40  # + vector: an exception the guest raised
SVM_EXIT_SWINT: Final = 0x75  # INT n, INT3, INTO (QEMU raises INT3 and INTO as INT n)
SVM_EXIT_RDPMC: Final = 0x6F
SVM_EXIT_PAUSE: Final = 0x77
SVM_EXIT_HLT: Final = 0x78
SVM_EXIT_INVLPG: Final = 0x79
SVM_EXIT_MSR: Final = 0x7C
SVM_EXIT_WBINVD: Final = 0x89  # QEMU reports INVD through this one too
SVM_EXIT_NPF: Final = 0x400  # a nested page fault: the address in EXITINFO2

_INTERCEPT_BASE = 0x60  # bit n of the 64-bit intercept word is exit code 0x60 + n


def _intercept(code: int) -> int:
    return 1 << (code - _INTERCEPT_BASE)


ALWAYS_INTERCEPTED: Final = (
    _intercept(SVM_EXIT_MSR)
    | _intercept(SVM_EXIT_HLT)
    | _intercept(SVM_EXIT_WBINVD)
    | _intercept(SVM_EXIT_SWINT)
)
ALL_EXCEPTIONS: Final = 0xFFFF_FFFF  # the exception-intercept word: vectors 0-31
# Primary processor-based controls that map onto an SVM intercept of the same event.
CONTROL_INTERCEPTS: Final = {
    Proc.INVLPG_EXITING: _intercept(SVM_EXIT_INVLPG),
    Proc.RDPMC_EXITING: _intercept(SVM_EXIT_RDPMC),
    Proc.PAUSE_EXITING: _intercept(SVM_EXIT_PAUSE),
}
CR_INTERCEPTS: Final = {  # control -> (read mask, write mask) of the CR intercept words
    Proc.CR3_STORE_EXITING: (1 << 3, 0),
    Proc.CR3_LOAD_EXITING: (0, 1 << 3),
    Proc.CR8_STORE_EXITING: (1 << 8, 0),
    Proc.CR8_LOAD_EXITING: (0, 1 << 8),
}

# VMCB control-area offsets
_CR_READ, _CR_WRITE, _DR_READ, _DR_WRITE = 0x00, 0x02, 0x04, 0x06
_EXCEPTION_INTERCEPTS, _INTERCEPT_WORD = 0x08, 0x0C
_IOPM_BASE, _MSRPM_BASE, _TSC_OFFSET, _ASID = 0x40, 0x48, 0x50, 0x58
_EXIT_INFO_2 = 0x80
_NESTED_CONTROL, _NESTED_CR3 = 0x90, 0xB0
_NESTED_PAGING = 1 << 0
_EVENT_INJECTION = 0xA8
PAGE_FAULT_ADDRESS: Final = VMCB + _EXIT_INFO_2  # of an intercepted #PF, or a nested one
# VMCB state-save-area offsets
_SEGMENTS = 0x400  # es, cs, ss, ds, fs, gs, gdtr, ldtr, idtr, tr: 16 bytes each
_CPL, _EFER = 0x4CB, 0x4D0
_CR4, _CR3, _CR0, _DR7, _DR6, _RFLAGS, _RIP = 0x548, 0x550, 0x558, 0x560, 0x568, 0x570, 0x578
_RSP, _RAX = 0x5D8, 0x5F8
_STAR, _KERNEL_GS_BASE, _SYSENTER_CS, _CR2, _G_PAT = 0x600, 0x620, 0x628, 0x640, 0x668

_SEG = struct.Struct("<HHIQ")
_Q = struct.Struct("<Q")

# (selector, access rights, limit, base) VMCS fields of each VMCB segment slot, in order.
_SEGMENT_FIELDS: Final = tuple(
    (
        getattr(f, f"GUEST_{name}_SELECTOR"),
        getattr(f, f"GUEST_{name}_ACCESS_RIGHTS"),
        getattr(f, f"GUEST_{name}_LIMIT"),
        getattr(f, f"GUEST_{name}_BASE"),
    )
    if name not in ("GDTR", "IDTR")
    else (None, None, getattr(f, f"GUEST_{name}_LIMIT"), getattr(f, f"GUEST_{name}_BASE"))
    for name in ("ES", "CS", "SS", "DS", "FS", "GS", "GDTR", "LDTR", "IDTR", "TR")
)


def svm_attributes(access_rights: int) -> int:
    """VMX access rights -> the VMCB's packed attribute word (type/S/DPL/P, AVL/L/DB/G)."""
    if access_rights & AR_UNUSABLE:
        return 0
    return (access_rights & 0xFF) | ((access_rights >> 4) & 0xF00)


def host_region() -> bytes:
    """The private region's initial contents: page tables, stub, permission maps, GDT."""
    region = bytearray(HOST_SIZE)

    def put(address: int, data: bytes) -> None:
        region[address - HOST_BASE : address - HOST_BASE + len(data)] = data

    # User-accessible: the stub's first instruction may run in ring 3.
    put(HOST_PML4 + 8 * ((HOST_BASE >> 39) & 0x1FF), _Q.pack(HOST_PDPT | 0x7))
    put(HOST_PDPT + 8 * ((HOST_BASE >> 30) & 0x1FF), _Q.pack(HOST_BASE | 0x87))  # 1 GiB page
    put(HOST_PML4, _Q.pack(HOST_LOW_PDPT | 0x7))  # the compatibility-mode window
    put(HOST_LOW_PDPT + 8 * ((COMPAT_WINDOW >> 30) & 0x1FF), _Q.pack(HOST_LOW_PD | 0x7))
    put(HOST_LOW_PD + 8 * ((COMPAT_WINDOW >> 21) & 0x1FF), _Q.pack(HOST_BASE | 0x87))  # 2 MiB
    put(STUB, CALL_THROUGH_GATE)
    put(STUB_COMPAT, CALL_THROUGH_GATE_32)
    put(STUB_RING0, VMLOAD_VMRUN)
    put(HOST_TSS + 4, _Q.pack(HOST_STACK_TOP))  # RSP0
    put(MSRPM, b"\xff" * 0x2000)  # every RDMSR/WRMSR is intercepted; VMX bitmaps apply later
    put(HOST_GDT, b"".join(_Q.pack(d) for d in HOST_GDT_ENTRIES))
    return bytes(region)


def msrpm_bit(msr: int) -> int | None:
    """Bit offset of ``msr``'s read-intercept bit in the MSRPM (write is the next bit)."""
    if msr < 0x2000:
        return msr * 2
    if 0xC000_0000 <= msr < 0xC000_2000:
        return (0x2000 + msr - 0xC000_0000) * 2
    if 0xC001_0000 <= msr < 0xC001_2000:
        return (0x4000 + msr - 0xC001_0000) * 2
    return None


def intercepts(proc: int, cr0_mask: int = 0) -> tuple[int, int, int]:
    """(intercept word, CR read mask, CR write mask) for the primary controls ``proc``;
    with VMM-owned CR0 bits (``cr0_mask``) every CR0 write is intercepted, to compare."""
    word = ALWAYS_INTERCEPTED
    for control, bit in CONTROL_INTERCEPTS.items():
        if proc & control:
            word |= bit
    cr_read = cr_write = 0
    for control, (read, write) in CR_INTERCEPTS.items():
        if proc & control:
            cr_read |= read
            cr_write |= write
    if cr0_mask:
        cr_write |= 1 << 0  # MOV to CR0, CLTS and LMSW (AMD APM 15.9)
    return word, cr_read, cr_write


def control_signature(
    values: Mapping[int, int], *, mov_dr_exiting: bool, nested_cr3: int | None
) -> tuple[int, ...]:
    """What of the VMX controls a VMCB built from ``values`` holds: a change of controls
    that leaves it the same needs no new VMCB (the monitor trap flag, EPT permissions)."""
    proc = values[f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS]
    offset = values[f.TSC_OFFSET] if proc & Proc.USE_TSC_OFFSETTING else 0
    mask = values[f.CR0_GUEST_HOST_MASK]
    shadow = values[f.CR0_READ_SHADOW] & mask
    return (*intercepts(proc, mask), offset, int(mov_dr_exiting), nested_cr3 or 0, mask, shadow)


def visible_cr0(values: Mapping[int, int]) -> int:
    """The CR0 the guest sees (and the engine holds): the read shadow's bits where the
    VMM owns them (the CR0 guest/host mask), the real CR0's elsewhere."""
    mask = values[f.CR0_GUEST_HOST_MASK]
    return values[f.GUEST_CR0] & ~mask | values[f.CR0_READ_SHADOW] & mask


def build_vmcb(
    values: dict[int, int],
    *,
    rip: int,
    rsp: int,
    rax: int,
    dr6: int,
    cr2: int,
    preserved_msrs: dict[int, int],
    mov_dr_exiting: bool,
    nested_cr3: int | None = None,
) -> bytes:
    """A VMCB (4 KiB) entering the guest state held in the VMCS field ``values``.

    ``preserved_msrs`` are the MSRs VMLOAD loads that the VMCS does not hold (STAR, LSTAR,
    CSTAR, SFMASK, KERNEL_GS_BASE), by VMCB offset: the guest keeps its own values.
    ``nested_cr3``: the nested page table the guest's physical accesses go through (how
    the software CPU enforces EPT), or None for none.
    """
    vmcb = bytearray(0x1000)
    proc = values[f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS]
    word, cr_read, cr_write = intercepts(proc, values[f.CR0_GUEST_HOST_MASK])
    dr_intercepts = 0xFF if mov_dr_exiting else 0
    struct.pack_into("<HHHH", vmcb, _CR_READ, cr_read, cr_write, dr_intercepts, dr_intercepts)
    struct.pack_into("<I", vmcb, _EXCEPTION_INTERCEPTS, ALL_EXCEPTIONS)
    _Q.pack_into(vmcb, _INTERCEPT_WORD, word)
    _Q.pack_into(vmcb, _IOPM_BASE, IOPM)
    _Q.pack_into(vmcb, _MSRPM_BASE, MSRPM)
    tsc_offset = values[f.TSC_OFFSET] if proc & Proc.USE_TSC_OFFSETTING else 0
    _Q.pack_into(vmcb, _TSC_OFFSET, tsc_offset)
    struct.pack_into("<I", vmcb, _ASID, 1)
    if nested_cr3 is not None:
        _Q.pack_into(vmcb, _NESTED_CONTROL, _NESTED_PAGING)
        _Q.pack_into(vmcb, _NESTED_CR3, nested_cr3)
    for slot, (selector, rights, limit, base) in enumerate(_SEGMENT_FIELDS):
        sel = values[selector] if selector is not None else 0
        attributes = svm_attributes(values[rights]) if rights is not None else 0
        _SEG.pack_into(vmcb, _SEGMENTS + 16 * slot, sel, attributes, values[limit], values[base])
    vmcb[_CPL] = (values[f.GUEST_SS_ACCESS_RIGHTS] >> 5) & 3
    _Q.pack_into(vmcb, _EFER, values[f.GUEST_IA32_EFER] & ~EFER_SVME)
    _Q.pack_into(vmcb, _CR4, values[f.GUEST_CR4] & ~CR4_VMXE)
    _Q.pack_into(vmcb, _CR3, values[f.GUEST_CR3])
    _Q.pack_into(vmcb, _CR0, visible_cr0(values))
    _Q.pack_into(vmcb, _DR7, values[f.GUEST_DR7])
    _Q.pack_into(vmcb, _DR6, dr6)
    _Q.pack_into(vmcb, _RFLAGS, values[f.GUEST_RFLAGS])
    _Q.pack_into(vmcb, _RIP, rip)
    _Q.pack_into(vmcb, _RSP, rsp)
    _Q.pack_into(vmcb, _RAX, rax)
    for offset, value in preserved_msrs.items():
        _Q.pack_into(vmcb, offset, value)
    struct.pack_into(
        "<QQQ",
        vmcb,
        _SYSENTER_CS,
        values[f.GUEST_IA32_SYSENTER_CS],
        values[f.GUEST_IA32_SYSENTER_ESP],
        values[f.GUEST_IA32_SYSENTER_EIP],
    )
    _Q.pack_into(vmcb, _CR2, cr2)
    _Q.pack_into(vmcb, _G_PAT, values[f.GUEST_IA32_PAT])
    return bytes(vmcb)


# MSRs that VMLOAD loads from the VMCB but the VMCS has no field for, by VMCB offset.
VMLOAD_ONLY_MSRS: Final = {
    _STAR: 0xC000_0081,
    _STAR + 8: 0xC000_0082,  # LSTAR
    _STAR + 16: 0xC000_0083,  # CSTAR
    _STAR + 24: 0xC000_0084,  # SFMASK
    _KERNEL_GS_BASE: 0xC000_0102,
}
