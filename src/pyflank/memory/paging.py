"""The Intel 4-level paging walk (SDM Vol. 3, chapter 4) done in software.

Exit handlers need this to turn guest-virtual pointers (hypercall arguments, instruction
operands, the guest stack) into guest-physical ones exactly as the guest's CPU would, faults
included. Not modelled: A/D bit updates (the walk never writes guest memory), SMEP/SMAP,
protection keys, 5-level paging and MAXPHYADDR-dependent reserved bits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from pyflank.memory.physical import GuestMemoryError, GuestPhysicalMemory

PAGE_SIZE_4K = 1 << 12
PAGE_SIZE_2M = 1 << 21
PAGE_SIZE_1G = 1 << 30

PRESENT = 1 << 0
WRITABLE = 1 << 1
USER = 1 << 2
PWT = 1 << 3
PCD = 1 << 4
ACCESSED = 1 << 5
DIRTY = 1 << 6
PAGE_SIZE = 1 << 7  # PS in PDPTE/PDE; the same bit is PAT in a 4 KiB PTE
PAT_4K = 1 << 7
GLOBAL = 1 << 8
PAT_LARGE = 1 << 12  # PAT moves to bit 12 in entries that map 2 MiB / 1 GiB pages
NX = 1 << 63

ADDRESS_MASK = 0x000F_FFFF_FFFF_F000  # bits 51:12
ADDRESS_MASK_2M = 0x000F_FFFF_FFE0_0000  # bits 51:21
ADDRESS_MASK_1G = 0x000F_FFFF_C000_0000  # bits 51:30

# Bits between the PAT bit and the frame of a large-page entry must be zero.
RESERVED_2M = 0x0000_0000_001F_E000  # bits 20:13
RESERVED_1G = 0x0000_0000_3FFF_E000  # bits 29:13

ENTRIES_PER_TABLE = 512
LEVEL_SHIFT = {4: 39, 3: 30, 2: 21, 1: 12}
LEVEL_NAME = {4: "PML4E", 3: "PDPTE", 2: "PDE", 1: "PTE"}
# Bytes of linear address space one entry at each level covers.
LEVEL_SPAN = {4: 1 << 39, 3: PAGE_SIZE_1G, 2: PAGE_SIZE_2M, 1: PAGE_SIZE_4K}


class PageFaultReason(Enum):
    NON_CANONICAL = "non-canonical address"
    NOT_PRESENT = "not present"
    NOT_WRITABLE = "write to a read-only page"
    NOT_USER = "user access to a supervisor page"
    NOT_EXECUTABLE = "instruction fetch from an execute-disabled page"
    RESERVED_BIT = "reserved bit set in a paging-structure entry"
    OUTSIDE_RAM = "address outside guest RAM"


class PageFault(Exception):
    """A translation the guest's CPU would refuse.

    ``level`` is the paging level whose entry caused the fault (4 = PML4E … 1 = PTE), or 0
    when no entry is to blame (non-canonical address, data page outside RAM). For the
    cumulative right checks it is the highest level whose entry denies the access.
    """

    def __init__(self, gva: int, reason: PageFaultReason, level: int = 0) -> None:
        self.gva = gva
        self.reason = reason
        self.level = level
        where = f" ({LEVEL_NAME[level]}, level {level})" if level else ""
        super().__init__(f"page fault at gva {gva:#x}: {reason.value}{where}")

    def __reduce__(self) -> tuple[type[PageFault], tuple[int, PageFaultReason, int]]:
        return (type(self), (self.gva, self.reason, self.level))


@dataclass(frozen=True)
class Translation:
    """Result of a successful walk.

    ``writable``/``user``/``executable`` are the page's effective rights combined over all
    levels, independent of the access that was checked (so a supervisor write with WP=0
    may succeed on a page reported as not writable). ``pat_index`` is PAT*4 + PCD*2 + PWT
    of the leaf entry: the IA32_PAT entry that selects the memory type.
    """

    gva: int
    gpa: int
    page_size: int
    writable: bool
    user: bool
    executable: bool
    pat_index: int


def is_canonical(gva: int) -> bool:
    """48-bit canonical: bits 63:47 all equal."""
    top = gva >> 47
    return top == 0 or top == 0x1_FFFF


class PagingEntry(NamedTuple):
    """One paging-structure entry a walk read: its level (4 = PML4E ... 1 = PTE), where it
    is (guest-physical) and its value."""

    level: int
    address: int
    value: int


def walk(memory: GuestPhysicalMemory, cr3: int, gva: int, *, nxe: bool = True) -> list[PagingEntry]:
    """The entries the 4-level walk of canonical ``gva`` reads, from the PML4E down to the
    one that maps the page; ``PageFault`` for an absent entry (or XD set without NXE)."""
    table = cr3 & ADDRESS_MASK  # bits 11:0 are PCID (or PWT/PCD) and not part of the address
    entries = []
    for level in (4, 3, 2, 1):
        address = table + ((gva >> LEVEL_SHIFT[level]) & 0x1FF) * 8
        try:
            entry = memory.read_u64(address)
        except GuestMemoryError:
            raise PageFault(gva, PageFaultReason.OUTSIDE_RAM, level) from None
        if not entry & PRESENT:
            raise PageFault(gva, PageFaultReason.NOT_PRESENT, level)
        if entry & NX and not nxe:
            raise PageFault(gva, PageFaultReason.RESERVED_BIT, level)
        entries.append(PagingEntry(level, address, entry))
        if level == 1 or entry & PAGE_SIZE:
            break
        table = entry & ADDRESS_MASK
    return entries


def translate(
    memory: GuestPhysicalMemory,
    cr3: int,
    gva: int,
    *,
    write: bool = False,
    user: bool = False,
    execute: bool = False,
    wp: bool = True,
    nxe: bool = True,
) -> Translation:
    """Walk the 4-level tables rooted at ``cr3`` for one access to ``gva``.

    ``wp`` is CR0.WP and ``nxe`` IA32_EFER.NXE. Raises :class:`PageFault`; ``ValueError``
    if ``gva`` is not a 64-bit value at all.
    """
    if not 0 <= gva < 1 << 64:
        raise ValueError(f"gva {gva:#x} is not a 64-bit address")
    if not is_canonical(gva):
        raise PageFault(gva, PageFaultReason.NON_CANONICAL)
    entries = walk(memory, cr3, gva, nxe=nxe)
    # First level (top-down) whose entry denies each right; 0 = no entry denies it.
    ro_level = next((e.level for e in entries if not e.value & WRITABLE), 0)
    sup_level = next((e.level for e in entries if not e.value & USER), 0)
    xd_level = next((e.level for e in entries if e.value & NX), 0)
    level, _, entry = entries[-1]
    page_size, gpa, pat = _leaf(gva, entry, level)
    _check_rights(gva, write, user, execute, wp, nxe, ro_level, sup_level, xd_level)
    return Translation(
        gva=gva,
        gpa=gpa,
        page_size=page_size,
        writable=not ro_level,
        user=not sup_level,
        executable=not (nxe and xd_level),
        pat_index=(4 if pat else 0) | (2 if entry & PCD else 0) | (1 if entry & PWT else 0),
    )


def _leaf(gva: int, entry: int, level: int) -> tuple[int, int, bool]:
    """(page size, gpa, PAT bit) of the entry that ended the walk; rejects reserved bits."""
    if level == 1:
        return PAGE_SIZE_4K, (entry & ADDRESS_MASK) | (gva & 0xFFF), bool(entry & PAT_4K)
    if level == 2 and not entry & RESERVED_2M:
        page_size, frame = PAGE_SIZE_2M, entry & ADDRESS_MASK_2M
    elif level == 3 and not entry & RESERVED_1G:
        page_size, frame = PAGE_SIZE_1G, entry & ADDRESS_MASK_1G
    else:
        # PS in a PML4E, or a large-page entry with bits set between PAT and its frame.
        raise PageFault(gva, PageFaultReason.RESERVED_BIT, level)
    return page_size, frame | (gva & (page_size - 1)), bool(entry & PAT_LARGE)


def _check_rights(
    gva: int,
    write: bool,
    user: bool,
    execute: bool,
    wp: bool,
    nxe: bool,
    ro_level: int,
    sup_level: int,
    xd_level: int,
) -> None:
    if user and sup_level:
        raise PageFault(gva, PageFaultReason.NOT_USER, sup_level)
    # Supervisor writes ignore R/W entirely when CR0.WP=0; user writes never do.
    if write and ro_level and (user or wp):
        raise PageFault(gva, PageFaultReason.NOT_WRITABLE, ro_level)
    if execute and nxe and xd_level:
        raise PageFault(gva, PageFaultReason.NOT_EXECUTABLE, xd_level)
