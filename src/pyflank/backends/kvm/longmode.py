"""A minimal flat 64-bit guest for KVM: GDT, TSS, identity paging and the sregs for them.

The capability probe and the KVM tests need a long-mode vCPU before, and
independently of, the platform's boot setup.  The layout is fixed and small.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyflank.backends.kvm.structs import KvmSegment, KvmSregs
from pyflank.intel_x64.registers import (
    CR4_OSFXSR,
    CR4_OSXMMEXCPT,
    CR4_PAE,
    EFER_LMA,
    EFER_LME,
    EFER_NXE,
)
from pyflank.memory import GuestPhysicalMemory, PageTableBuilder

CR0_PE, CR0_MP, CR0_ET, CR0_NE, CR0_WP, CR0_AM, CR0_PG = (
    1 << 0, 1 << 1, 1 << 4, 1 << 5, 1 << 16, 1 << 18, 1 << 31,
)  # fmt: skip

KERNEL_CS, KERNEL_DS, TSS_SELECTOR, USER_DS, USER_CS = 0x08, 0x10, 0x18, 0x2B, 0x33

# Descriptor images (SDM Vol. 3, 3.4.5): flat 4 GiB, G=1; CS with L=1.
_GDT = (
    0,
    0x00AF_9B00_0000_FFFF,  # 0x08 ring-0 code, 64-bit
    0x00CF_9300_0000_FFFF,  # 0x10 ring-0 data
    0,  # 0x18 TSS, low half (filled in)
    0,  # 0x20 TSS, high half
    0x00CF_F300_0000_FFFF,  # 0x28 ring-3 data
    0x00AF_FB00_0000_FFFF,  # 0x30 ring-3 code, 64-bit
)
_TSS_LIMIT = 0x67
_TYPE_CODE_ACCESSED, _TYPE_DATA_ACCESSED, _TYPE_TSS_BUSY, _TYPE_LDT = 0xB, 0x3, 0xB, 0x2


@dataclass(frozen=True, slots=True)
class FlatLayout:
    """Where the boot structures go in guest RAM; everything below ``ram`` is identity mapped."""

    ram: int = 2 << 20
    tables: tuple[int, int] = (0x1000, 0x8000)
    gdt: int = 0x8000
    tss: int = 0x8100
    idt: int = 0x9000
    code: int = 0x10000
    stack_top: int = 0x80000
    # Identity mapped but not RAM: accesses there leave KVM as MMIO exits.
    mmio: tuple[int, int] = (0x4000_0000, 0x20_0000)


def _tss_descriptor(base: int) -> tuple[int, int]:
    low = (
        _TSS_LIMIT
        | (base & 0xFFFFFF) << 16
        | 0x89 << 40  # present, DPL 0, available 64-bit TSS
        | ((base >> 24) & 0xFF) << 56
    )
    return low, base >> 32


def _segment(
    selector: int, type_: int, *, code64: bool = False, system: bool = False
) -> KvmSegment:
    seg = KvmSegment()
    seg.base, seg.selector, seg.type, seg.present = 0, selector, type_, 1
    seg.dpl = selector & 3 if not system else 0
    seg.s = 0 if system else 1
    seg.limit = _TSS_LIMIT if system else 0xFFFF_FFFF
    seg.g = 0 if system else 1
    seg.l = 1 if code64 else 0
    seg.db = 0 if code64 or system else 1
    return seg


def write_flat_long_mode(memory: GuestPhysicalMemory, layout: FlatLayout) -> int:
    """Write GDT, TSS and identity page tables; returns CR3."""
    tables = PageTableBuilder(memory, *layout.tables)
    tables.identity_map(0, min(layout.ram, memory.size), user=True)
    tables.identity_map(*layout.mmio, executable=False)
    gdt = list(_GDT)
    gdt[3], gdt[4] = _tss_descriptor(layout.tss)
    for i, descriptor in enumerate(gdt):
        memory.write_u64(layout.gdt + 8 * i, descriptor)
    memory.fill(layout.tss, _TSS_LIMIT + 1)
    memory.write_u64(layout.tss + 4, layout.stack_top)  # RSP0, for a trip from ring 3
    return tables.cr3


def flat_long_mode_sregs(
    sregs: KvmSregs, cr3: int, layout: FlatLayout, *, user: bool = False
) -> None:
    """Fill ``sregs`` (from KVM_GET_SREGS, so apic_base stays) for ring 0, or ring 3."""
    cs, ds = (USER_CS, USER_DS) if user else (KERNEL_CS, KERNEL_DS)
    sregs.cs = _segment(cs, _TYPE_CODE_ACCESSED, code64=True)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(sregs, name, _segment(ds, _TYPE_DATA_ACCESSED))
    tr = _segment(TSS_SELECTOR, _TYPE_TSS_BUSY, system=True)
    tr.base = layout.tss
    sregs.tr = tr
    ldt = KvmSegment()
    ldt.type, ldt.unusable = _TYPE_LDT, 1
    sregs.ldt = ldt
    sregs.gdt.base, sregs.gdt.limit = layout.gdt, 8 * len(_GDT) - 1
    sregs.idt.base, sregs.idt.limit = layout.idt, 0
    sregs.cr0 = CR0_PE | CR0_MP | CR0_ET | CR0_NE | CR0_WP | CR0_AM | CR0_PG
    sregs.cr3 = cr3
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT
    sregs.efer = EFER_LME | EFER_LMA | EFER_NXE
