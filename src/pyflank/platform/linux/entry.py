"""The processor state a boot protocol defines at the kernel's first instruction, as data.

``EntryState`` is what a processor loads before the first VM entry: control registers and
EFER, segments in the VMX access-rights format, GDTR/IDTR, RIP/RSP/RFLAGS, and the
general registers the protocol passes (RSI = boot_params for Linux, EBX = hvm_start_info
for PVH).  ``write_gdt`` writes the descriptors the selectors name from the same access
rights, so the GDT in guest memory and the VMCS cannot disagree.  ``vmcs_fields`` gives
the guest-state fields by encoding, with the bits VMX operation itself requires
(CR0.NE, CR4.VMXE) added; a state with CR0.PG clear (the 32-bit entries) needs
"unrestricted guest".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.valid_state import (
    CODE64_ACCESS_RIGHTS,
    DATA_ACCESS_RIGHTS,
    DEFAULT_PAT,
    DR7_INIT,
    FLAT_LIMIT,
    TSS64_BUSY_ACCESS_RIGHTS,
    TSS_LIMIT,
    UNUSABLE_ACCESS_RIGHTS,
)
from pyflank.memory import PAGE_SIZE_2M, GuestPhysicalMemory, PageTableBuilder
from pyflank.platform.linux.layout import LinuxLayout

BOOT_CS, BOOT_DS, BOOT_TSS = 0x10, 0x18, 0x20  # the selectors the Linux boot protocol names
CODE32_ACCESS_RIGHTS: Final = 0xC09B  # G, D/B, P, S, type 11 (execute/read, accessed)
TSS32_BUSY_ACCESS_RIGHTS: Final = 0x008B  # P, type 11 (32-bit busy TSS)
GDT_LIMIT: Final = BOOT_TSS + 16 - 1
SEGMENT_REGISTERS: Final = ("es", "cs", "ss", "ds", "fs", "gs", "tr", "ldtr")


@dataclass(frozen=True)
class Segment:
    selector: int
    base: int
    limit: int
    access_rights: int

    def descriptor(self) -> bytes:
        """The GDT entry (16 bytes for a system segment in long mode, else 8)."""
        rights, limit = self.access_rights, self.limit
        if rights & b.AR_G:
            limit >>= 12
        low = (limit & 0xFFFF) | (self.base & 0xFF_FFFF) << 16 | (rights & 0xFF) << 40
        low |= (limit >> 16 & 0xF) << 48 | (rights >> 12 & 0xF) << 52
        low |= (self.base >> 24 & 0xFF) << 56
        return low.to_bytes(8, "little")


def _flat(selector: int, rights: int) -> Segment:
    return Segment(selector, 0, FLAT_LIMIT, rights)


UNUSABLE: Final = Segment(0, 0, 0, UNUSABLE_ACCESS_RIGHTS)


@dataclass(frozen=True)
class EntryState:
    protocol: str  # "linux 64-bit", "linux 32-bit", "pvh"
    long_mode: bool  # the "IA-32e mode guest" VM-entry control
    rip: int
    rsp: int
    registers: Mapping[str, int]  # general registers the protocol passes; the rest are 0
    cr0: int
    cr3: int
    cr4: int
    efer: int
    segments: Mapping[str, Segment]
    gdtr: tuple[int, int]  # base, limit
    idtr: tuple[int, int] = (0, 0)
    rflags: int = b.RFLAGS_FIXED1  # interrupts off
    notes: tuple[str, ...] = field(default=())

    def vmcs_fields(self) -> dict[int, int]:
        values = {
            f.GUEST_CR0: self.cr0 | b.CR0_NE,
            f.GUEST_CR3: self.cr3,
            f.GUEST_CR4: self.cr4 | b.CR4_VMXE,
            f.CR0_READ_SHADOW: self.cr0,
            f.CR4_READ_SHADOW: self.cr4,
            f.GUEST_IA32_EFER: self.efer,
            f.GUEST_IA32_PAT: DEFAULT_PAT,
            f.GUEST_DR7: DR7_INIT,
            f.GUEST_RIP: self.rip,
            f.GUEST_RSP: self.rsp,
            f.GUEST_RFLAGS: self.rflags,
            f.GUEST_GDTR_BASE: self.gdtr[0],
            f.GUEST_GDTR_LIMIT: self.gdtr[1],
            f.GUEST_IDTR_BASE: self.idtr[0],
            f.GUEST_IDTR_LIMIT: self.idtr[1],
            f.GUEST_ACTIVITY_STATE: 0,
            f.GUEST_INTERRUPTIBILITY_STATE: 0,
        }
        for name in SEGMENT_REGISTERS:
            segment, upper = self.segments[name], name.upper()
            values[getattr(f, f"GUEST_{upper}_SELECTOR")] = segment.selector
            values[getattr(f, f"GUEST_{upper}_BASE")] = segment.base
            values[getattr(f, f"GUEST_{upper}_LIMIT")] = segment.limit
            values[getattr(f, f"GUEST_{upper}_ACCESS_RIGHTS")] = segment.access_rights
        return values


def write_gdt(
    memory: GuestPhysicalMemory, layout: LinuxLayout, segments: Mapping[str, Segment]
) -> None:
    """The GDT: two null entries, the boot code and data segments, the TSS; the TSS zeroed."""
    table = bytearray(GDT_LIMIT + 1)
    code, data, tss = segments["cs"], segments["ds"], segments["tr"]
    table[BOOT_CS : BOOT_CS + 8] = code.descriptor()
    table[BOOT_DS : BOOT_DS + 8] = data.descriptor()
    table[BOOT_TSS : BOOT_TSS + 8] = tss.descriptor()
    table[BOOT_TSS + 8 : BOOT_TSS + 12] = (tss.base >> 32).to_bytes(4, "little")
    memory.write(layout.gdt, bytes(table))
    memory.fill(layout.tss, TSS_LIMIT + 1)


def boot_segments(layout: LinuxLayout, *, long_mode: bool) -> dict[str, Segment]:
    """Flat __BOOT_CS (64-bit or 32-bit code), __BOOT_DS for every data register, a busy
    TSS (the type is the same number in both modes), no LDT."""
    code_rights = CODE64_ACCESS_RIGHTS if long_mode else CODE32_ACCESS_RIGHTS
    tss_rights = TSS64_BUSY_ACCESS_RIGHTS if long_mode else TSS32_BUSY_ACCESS_RIGHTS
    data = _flat(BOOT_DS, DATA_ACCESS_RIGHTS)
    return {
        "cs": _flat(BOOT_CS, code_rights),
        **dict.fromkeys(("ds", "es", "ss", "fs", "gs"), data),
        "tr": Segment(BOOT_TSS, layout.tss, TSS_LIMIT, tss_rights),
        "ldtr": UNUSABLE,
    }


def long_mode_entry(
    memory: GuestPhysicalMemory, layout: LinuxLayout, rip: int, registers: Mapping[str, int]
) -> EntryState:
    """64-bit mode, paging on with all of RAM identity-mapped (2 MiB pages), flat
    __BOOT_CS/__BOOT_DS, interrupts off: Linux's 64-bit boot protocol."""
    segments = boot_segments(layout, long_mode=True)
    write_gdt(memory, layout, segments)
    tables = PageTableBuilder(memory, layout.page_tables, layout.page_tables_end)
    tables.identity_map(0, memory.size, PAGE_SIZE_2M)
    return EntryState(
        protocol="linux 64-bit",
        long_mode=True,
        rip=rip,
        rsp=layout.stack_top,
        registers=dict(registers),
        cr0=b.CR0_PE | b.CR0_ET | b.CR0_PG,
        cr3=tables.cr3,
        cr4=b.CR4_PAE,
        efer=b.EFER_LME | b.EFER_LMA,
        segments=segments,
        gdtr=(layout.gdt, GDT_LIMIT),
    )


def protected_mode_entry(
    memory: GuestPhysicalMemory,
    layout: LinuxLayout,
    rip: int,
    registers: Mapping[str, int],
    protocol: str,
) -> EntryState:
    """32-bit protected mode, paging off, flat 4 GiB code and data, interrupts off: the
    32-bit Linux boot protocol and the PVH entry."""
    segments = boot_segments(layout, long_mode=False)
    write_gdt(memory, layout, segments)
    return EntryState(
        protocol=protocol,
        long_mode=False,
        rip=rip,
        rsp=layout.stack_top,
        registers=dict(registers),
        cr0=b.CR0_PE | b.CR0_ET,
        cr3=0,
        cr4=0,
        efer=0,
        segments=segments,
        gdtr=(layout.gdt, GDT_LIMIT),
        notes=("paging is off: VMX needs 'unrestricted guest' for this state",),
    )
