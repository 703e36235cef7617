"""Guest state between KVM's registers and the VMX model (VMCS guest-state area, StateSave).

KVM describes segments field by field (``kvm_segment``); the VMCS packs the
same facts into an access-rights word (SDM Vol. 3, "Guest Register State":
bits 3:0 type, 4 S, 6:5 DPL, 7 P, 12 AVL, 13 L, 14 D/B, 15 G, 16 unusable).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from typing import Final

from pyflank.backends.kvm.structs import KvmSegment, KvmSregs
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.registers import AR_UNUSABLE, CR4_VMXE, RFLAGS_FIXED1
from pyflank.intel_x64.vmcs import Vmcs

# kvm_sregs member -> (selector, limit, access rights, base) encodings.
SEGMENT_FIELDS: Final[dict[str, tuple[int, int, int, int]]] = {
    "es": (f.GUEST_ES_SELECTOR, f.GUEST_ES_LIMIT, f.GUEST_ES_ACCESS_RIGHTS, f.GUEST_ES_BASE),
    "cs": (f.GUEST_CS_SELECTOR, f.GUEST_CS_LIMIT, f.GUEST_CS_ACCESS_RIGHTS, f.GUEST_CS_BASE),
    "ss": (f.GUEST_SS_SELECTOR, f.GUEST_SS_LIMIT, f.GUEST_SS_ACCESS_RIGHTS, f.GUEST_SS_BASE),
    "ds": (f.GUEST_DS_SELECTOR, f.GUEST_DS_LIMIT, f.GUEST_DS_ACCESS_RIGHTS, f.GUEST_DS_BASE),
    "fs": (f.GUEST_FS_SELECTOR, f.GUEST_FS_LIMIT, f.GUEST_FS_ACCESS_RIGHTS, f.GUEST_FS_BASE),
    "gs": (f.GUEST_GS_SELECTOR, f.GUEST_GS_LIMIT, f.GUEST_GS_ACCESS_RIGHTS, f.GUEST_GS_BASE),
    "ldt": (f.GUEST_LDTR_SELECTOR, f.GUEST_LDTR_LIMIT, f.GUEST_LDTR_ACCESS_RIGHTS,
            f.GUEST_LDTR_BASE),
    "tr": (f.GUEST_TR_SELECTOR, f.GUEST_TR_LIMIT, f.GUEST_TR_ACCESS_RIGHTS, f.GUEST_TR_BASE),
}  # fmt: skip
TABLE_FIELDS: Final[dict[str, tuple[int, int]]] = {
    "gdt": (f.GUEST_GDTR_LIMIT, f.GUEST_GDTR_BASE),
    "idt": (f.GUEST_IDTR_LIMIT, f.GUEST_IDTR_BASE),
}
CONTROL_FIELDS: Final[dict[str, int]] = {
    "cr0": f.GUEST_CR0,
    "cr3": f.GUEST_CR3,
    "cr4": f.GUEST_CR4,
    "efer": f.GUEST_IA32_EFER,
}
# Every VMCS field that lives in kvm_sregs: a handler writing one means SET_SREGS.
SREGS_FIELDS: Final[frozenset[int]] = frozenset(
    {enc for group in SEGMENT_FIELDS.values() for enc in group}
    | {enc for pair in TABLE_FIELDS.values() for enc in pair}
    | set(CONTROL_FIELDS.values())
)

RFLAGS_FIXED = RFLAGS_FIXED1  # RFLAGS bit 1 reads as 1
# VMX operation keeps CR4.VMXE set (a VM-entry check); the guest reads 0, as with a
# guest/host mask on that bit, and KVM refuses it in a vCPU without VMX in its CPUID.


def access_rights(seg: KvmSegment) -> int:
    return int(
        seg.type
        | seg.s << 4
        | seg.dpl << 5
        | seg.present << 7
        | seg.avl << 12
        | seg.l << 13
        | seg.db << 14
        | seg.g << 15
        | (AR_UNUSABLE if seg.unusable else 0)
    )


def set_access_rights(seg: KvmSegment, ar: int) -> None:
    seg.type = ar & 0xF
    seg.s = ar >> 4 & 1
    seg.dpl = ar >> 5 & 3
    seg.present = ar >> 7 & 1
    seg.avl = ar >> 12 & 1
    seg.l = ar >> 13 & 1
    seg.db = ar >> 14 & 1
    seg.g = ar >> 15 & 1
    seg.unusable = ar >> 16 & 1


def sregs_fields(sregs: KvmSregs) -> dict[int, int]:
    """KVM's segment/control state as guest-state fields, as a VM exit saves them."""
    fields: dict[int, int] = {}
    for name, (sel, limit, ar, base) in SEGMENT_FIELDS.items():
        seg = getattr(sregs, name)
        fields[sel] = seg.selector
        fields[limit] = seg.limit
        fields[ar] = access_rights(seg)
        fields[base] = seg.base
    for name, (limit, base) in TABLE_FIELDS.items():
        table = getattr(sregs, name)
        fields[limit] = table.limit
        fields[base] = table.base
    for name, enc in CONTROL_FIELDS.items():
        fields[enc] = getattr(sregs, name)
    fields[f.GUEST_CR4] = sregs.cr4 | CR4_VMXE
    return fields


def sregs_to_vmcs(sregs: KvmSregs, vmcs: Vmcs) -> None:
    """Store KVM's segment/control state in the guest-state area (setting up a guest)."""
    for encoding, value in sregs_fields(sregs).items():
        vmcs.processor_write(encoding, value)


def fields_to_sregs(fields: Mapping[int, int], sregs: KvmSregs) -> None:
    """Load guest-state fields into ``sregs`` (cr2, cr8, apic_base are kept: no VMCS field)."""
    read = fields.__getitem__
    for name, (sel, limit, ar, base) in SEGMENT_FIELDS.items():
        seg = getattr(sregs, name)
        seg.selector, seg.limit, seg.base = read(sel), read(limit), read(base)
        set_access_rights(seg, read(ar))
    for name, (limit, base) in TABLE_FIELDS.items():
        table = getattr(sregs, name)
        table.limit, table.base = read(limit), read(base)
    for name, enc in CONTROL_FIELDS.items():
        setattr(sregs, name, read(enc))
    sregs.cr4 &= ~CR4_VMXE


# kvm_regs: rax rbx rcx rdx rsi rdi rsp rbp r8..r15 rip rflags.
GPRS: Final = struct.Struct("<18Q")
# The same up to RIP: the resume path leaves RFLAGS as it is.
GPRS_TO_RIP: Final = struct.Struct("<17Q")


# kvm_regs indexes of the GPRs in the SDM's numbering (RAX RCX RDX RBX RSP RBP RSI RDI
# R8-R15), then RIP and RFLAGS, as an exit record's ``regs``: ``operator.itemgetter``
# reorders a whole register file in one C call.
SDM_ORDER: Final = (0, 2, 3, 1, 6, 7, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)
# The same, with RDI where RDX would be: a doorbell carries RDX in RDI.
DOORBELL_ORDER: Final = (0, 2, 5, 1, 6, 7, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17)
# kvm_regs slots, in kvm_regs order, of the SDM-ordered GPRs an entry plan holds.
KVM_ORDER: Final = (0, 3, 1, 2, 6, 7, 4, 5, 8, 9, 10, 11, 12, 13, 14, 15)
