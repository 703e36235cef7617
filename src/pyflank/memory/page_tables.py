"""Build 4-level page tables inside guest RAM, in the exact format the CPU walks.

The tables are loaded into a real CPU's CR3 by the backends, so every entry must be what the
SDM defines: no shadow bookkeeping, guest memory is the only state. Intermediate entries are
always P|R/W|U/S without XD: rights are the AND over all levels, so leaving the upper
levels permissive lets the leaf alone decide. ``executable=False`` sets XD (bit 63), which
the CPU treats as a reserved bit unless IA32_EFER.NXE=1.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from pyflank.memory.paging import (
    ACCESSED,
    ADDRESS_MASK,
    ADDRESS_MASK_1G,
    ADDRESS_MASK_2M,
    DIRTY,
    LEVEL_SHIFT,
    LEVEL_SPAN,
    NX,
    PAGE_SIZE,
    PAGE_SIZE_1G,
    PAGE_SIZE_2M,
    PAGE_SIZE_4K,
    PAT_4K,
    PAT_LARGE,
    PCD,
    PRESENT,
    PWT,
    USER,
    WRITABLE,
    is_canonical,
)
from pyflank.memory.physical import GuestMemoryError, GuestPhysicalMemory

_LEAF_LEVEL = {PAGE_SIZE_4K: 1, PAGE_SIZE_2M: 2, PAGE_SIZE_1G: 3}
_TABLE_POINTER = PRESENT | WRITABLE | USER
_TABLE = struct.Struct("<512Q")
_MAX_GPA = 1 << 52


class TableSpaceExhausted(GuestMemoryError):
    """The region given to a :class:`PageTableBuilder` has no room for more tables."""

    def __init__(self, gpa: int, length: int, size: int) -> None:
        self.gpa = gpa
        self.length = length
        self.size = size
        Exception.__init__(
            self,
            f"page-table region exhausted: need {length:#x} byte(s) of tables at gpa "
            f"{gpa:#x}, only {size:#x} left",
        )


class PageTableBuilder:
    """Allocates table pages bump-style from ``[table_base, table_limit)`` (end exclusive).

    Operations check everything they can before writing, so a ``ValueError`` or
    :class:`TableSpaceExhausted` leaves the tables as they were.
    """

    def __init__(self, memory: GuestPhysicalMemory, table_base: int, table_limit: int) -> None:
        if table_base % PAGE_SIZE_4K or table_limit % PAGE_SIZE_4K:
            raise ValueError("page-table region must be 4 KiB aligned")
        if not 0 <= table_base < table_limit <= memory.size:
            raise ValueError(
                f"page-table region [{table_base:#x}, {table_limit:#x}) must be non-empty "
                f"and inside guest RAM [0, {memory.size:#x})"
            )
        self._memory = memory
        self._limit = table_limit
        self._next = table_base
        self._base = table_base
        self._pml4 = self._alloc()

    @property
    def cr3(self) -> int:
        """Physical address of the PML4 (PCID 0, PWT/PCD clear: write-back table walks)."""
        return self._pml4

    @property
    def tables_used(self) -> int:
        return (self._next - self._base) // PAGE_SIZE_4K

    @property
    def tables_free(self) -> int:
        return (self._limit - self._next) // PAGE_SIZE_4K

    # -- public operations --------------------------------------------------------------

    def map(
        self,
        gva: int,
        gpa: int,
        size: int,
        *,
        page_size: int = PAGE_SIZE_4K,
        writable: bool = True,
        user: bool = False,
        executable: bool = True,
        pat_index: int = 0,
    ) -> None:
        """Map ``[gva, gva + size)`` to ``[gpa, gpa + size)`` with ``page_size`` pages.

        Re-mapping a page identically is a no-op; any other overlap with an existing
        mapping (other frame, rights or page size) is a ``ValueError``.
        """
        level = _LEAF_LEVEL.get(page_size)
        if level is None:
            raise ValueError(f"page size {page_size:#x} is not 4 KiB, 2 MiB or 1 GiB")
        if gva % page_size or gpa % page_size or size % page_size:
            raise ValueError(
                f"gva {gva:#x}, gpa {gpa:#x} and size {size:#x} must be {page_size:#x}-aligned"
            )
        _check_range(gva, size)
        if gpa < 0 or gpa + size > _MAX_GPA:
            raise ValueError(f"gpa range [{gpa:#x}, +{size:#x}) exceeds 52 bits")
        if not 0 <= pat_index <= 7:
            raise ValueError(f"PAT index must be in [0, 7], got {pat_index}")
        bits = _leaf_bits(level, writable, user, executable, pat_index)

        todo: list[int] = []
        new_tables: set[tuple[int, int]] = set()
        for offset in range(0, size, page_size):
            if self._plan_leaf(gva + offset, level, bits | (gpa + offset), new_tables):
                todo.append(offset)
        self._reserve(len(new_tables))
        for offset in todo:
            self._memory.write_u64(self._ensure_path(gva + offset, level), bits | (gpa + offset))

    def identity_map(
        self,
        start: int,
        size: int,
        page_size: int = PAGE_SIZE_2M,
        *,
        writable: bool = True,
        user: bool = False,
        executable: bool = True,
        pat_index: int = 0,
    ) -> None:
        """Map gva == gpa over at least ``[start, start + size)``, widened to whole pages."""
        if size <= 0 or page_size not in _LEAF_LEVEL:
            raise ValueError(f"cannot identity-map {size:#x} bytes with {page_size:#x} pages")
        first = start - start % page_size
        end = -(-(start + size) // page_size) * page_size
        self.map(
            first,
            first,
            end - first,
            page_size=page_size,
            writable=writable,
            user=user,
            executable=executable,
            pat_index=pat_index,
        )

    def unmap(self, gva: int, size: int) -> None:
        """Zero the leaf entries of ``[gva, gva + size)``; already-absent pages are skipped.

        Large pages only partly inside the range are first split into smaller ones.
        """
        self._modify(gva, size, lambda entry: 0, require_mapped=False)

    def protect(
        self,
        gva: int,
        size: int,
        writable: bool | None = False,
        *,
        user: bool | None = None,
        executable: bool | None = None,
    ) -> None:
        """Change the rights of every page in ``[gva, gva + size)`` (``None`` = keep).

        Every page must be mapped. Large pages only partly inside the range are split.
        """

        def update(entry: int) -> int:
            if writable is not None:
                entry = entry | WRITABLE if writable else entry & ~WRITABLE
            if user is not None:
                entry = entry | USER if user else entry & ~USER
            if executable is not None:
                entry = entry & ~NX if executable else entry | NX
            return entry

        self._modify(gva, size, update, require_mapped=True)

    # -- table allocation and walking -----------------------------------------------------

    def _alloc(self) -> int:
        self._reserve(1)
        table = self._next
        self._next += PAGE_SIZE_4K
        # The region may hold stale guest data; a table must start all not-present.
        self._memory.fill(table, PAGE_SIZE_4K)
        return table

    def _reserve(self, tables: int) -> None:
        if tables > self.tables_free:
            raise TableSpaceExhausted(self._next, tables * PAGE_SIZE_4K, self._limit - self._next)

    @staticmethod
    def _slot(table: int, gva: int, level: int) -> int:
        return table + ((gva >> LEVEL_SHIFT[level]) & 0x1FF) * 8

    def _walk(self, gva: int) -> tuple[int, int, int]:
        """(level, entry address, entry) where the walk stops: a leaf or an absent entry."""
        table = self._pml4
        for level in (4, 3, 2):
            slot = self._slot(table, gva, level)
            entry = self._memory.read_u64(slot)
            if not entry & PRESENT or (level < 4 and entry & PAGE_SIZE):
                return level, slot, entry
            table = entry & ADDRESS_MASK
        slot = self._slot(table, gva, 1)
        return 1, slot, self._memory.read_u64(slot)

    def _plan_leaf(
        self, gva: int, leaf_level: int, wanted: int, new_tables: set[tuple[int, int]]
    ) -> bool:
        """Whether the leaf for ``gva`` must be written; collects tables it would need."""
        table: int | None = self._pml4
        for level in range(4, leaf_level, -1):
            if table is None:
                new_tables.add((level, gva >> LEVEL_SHIFT[level]))
                continue
            entry = self._memory.read_u64(self._slot(table, gva, level))
            if not entry & PRESENT:
                new_tables.add((level, gva >> LEVEL_SHIFT[level]))
                table = None
            elif level < 4 and entry & PAGE_SIZE:
                raise ValueError(f"gva {gva:#x} is already mapped by a larger page")
            else:
                table = entry & ADDRESS_MASK
        if table is None:
            return True
        entry = self._memory.read_u64(self._slot(table, gva, leaf_level))
        if not entry & PRESENT:
            return True
        if leaf_level > 1 and not entry & PAGE_SIZE:
            raise ValueError(f"gva {gva:#x} is already mapped with smaller pages")
        # The CPU may have set A/D since; those do not make the mapping different.
        if entry & ~(ACCESSED | DIRTY) != wanted:
            raise ValueError(f"gva {gva:#x} is already mapped differently (entry {entry:#x})")
        return False

    def _ensure_path(self, gva: int, leaf_level: int) -> int:
        """Address of the leaf slot for ``gva``, creating missing tables on the way."""
        table = self._pml4
        for level in range(4, leaf_level, -1):
            slot = self._slot(table, gva, level)
            entry = self._memory.read_u64(slot)
            if entry & PRESENT:
                table = entry & ADDRESS_MASK
            else:
                table = self._alloc()
                self._memory.write_u64(slot, table | _TABLE_POINTER)
        return self._slot(table, gva, leaf_level)

    # -- unmap / protect --------------------------------------------------------------------

    def _modify(
        self, gva: int, size: int, update: Callable[[int], int], *, require_mapped: bool
    ) -> None:
        if gva % PAGE_SIZE_4K or size % PAGE_SIZE_4K:
            raise ValueError(f"gva {gva:#x} and size {size:#x} must be 4 KiB aligned")
        _check_range(gva, size)
        end = gva + size
        leaves: list[tuple[int, int, int]] = []  # (base, level, slot)
        cursor = gva
        while cursor < end:
            level, slot, entry = self._walk(cursor)
            base = cursor & ~(LEVEL_SPAN[level] - 1)
            if entry & PRESENT:
                leaves.append((base, level, slot))
            elif require_mapped:
                raise ValueError(f"gva {cursor:#x} is not mapped")
            cursor = base + LEVEL_SPAN[level]
        self._reserve(sum(_split_cost(level, base, gva, end) for base, level, _ in leaves))
        for base, level, slot in leaves:
            self._update(slot, level, base, gva, end, update)

    def _update(
        self, slot: int, level: int, base: int, lo: int, hi: int, update: Callable[[int], int]
    ) -> None:
        span = LEVEL_SPAN[level]
        if lo <= base and base + span <= hi:
            self._memory.write_u64(slot, update(self._memory.read_u64(slot)))
            return
        table = self._split(slot, level)
        child_span = LEVEL_SPAN[level - 1]
        first = max(lo, base) & ~(child_span - 1)
        for child in range(first, min(hi, base + span), child_span):
            self._update(self._slot(table, child, level - 1), level - 1, child, lo, hi, update)

    def _split(self, slot: int, level: int) -> int:
        """Replace a large-page entry with a table of 512 entries mapping the same bytes."""
        entry = self._memory.read_u64(slot)
        pat = bool(entry & PAT_LARGE)
        if level == 3:
            frame, step = entry & ADDRESS_MASK_1G, PAGE_SIZE_2M
            flags = entry & ~ADDRESS_MASK | (PAT_LARGE if pat else 0)
        else:
            # In a PTE bit 7 is PAT, not PS, so the PAT bit moves down from bit 12.
            frame, step = entry & ADDRESS_MASK_2M, PAGE_SIZE_4K
            flags = entry & ~(ADDRESS_MASK | PAGE_SIZE) | (PAT_4K if pat else 0)
        table = self._alloc()
        self._memory.write(table, _TABLE.pack(*(flags | (frame + i * step) for i in range(512))))
        self._memory.write_u64(slot, table | _TABLE_POINTER)
        return table


def _check_range(gva: int, size: int) -> None:
    if size <= 0:
        raise ValueError(f"cannot map a range of size {size}")
    last = gva + size - 1
    # Both ends canonical and in the same half means nothing in between is non-canonical.
    same_half = gva >= 0 and last < 1 << 64 and gva >> 47 == last >> 47
    if not (same_half and is_canonical(gva) and is_canonical(last)):
        raise ValueError(f"[{gva:#x}, +{size:#x}) is not a canonical address range")


def _leaf_bits(level: int, writable: bool, user: bool, executable: bool, pat_index: int) -> int:
    bits = PRESENT
    if writable:
        bits |= WRITABLE
    if user:
        bits |= USER
    if not executable:
        bits |= NX
    if pat_index & 1:
        bits |= PWT
    if pat_index & 2:
        bits |= PCD
    if pat_index & 4:
        bits |= PAT_4K if level == 1 else PAT_LARGE
    if level > 1:
        bits |= PAGE_SIZE
    return bits


def _split_cost(level: int, base: int, lo: int, hi: int) -> int:
    """Tables needed to carve ``[lo, hi)`` out of the leaf covering ``[base, +span)``."""
    span = LEVEL_SPAN[level]
    if lo <= base and base + span <= hi:
        return 0
    child_span = LEVEL_SPAN[level - 1]
    # Only the children holding the range's two ends can be partly covered.
    edges = {max(lo, base) & ~(child_span - 1), (min(hi, base + span) - 1) & ~(child_span - 1)}
    return 1 + sum(_split_cost(level - 1, child, lo, hi) for child in edges)
