"""Extended page tables (SDM Vol. 3C, "EPT"): the entry format, the walk, and a builder.

An EPT is a 4-level tree of 512-entry tables in host-physical memory, rooted at the
address in the EPT pointer (EPTP).  Each entry holds read, write and execute permissions
(bits 0-2, ANDed along the walk); a PDPTE or PDE with bit 7 set maps a 1 GiB or 2 MiB
page, every PTE a 4 KiB page, with its memory type in bits 5:3.  An entry whose bits 2:0
are 0 is not present.  Some settings are *misconfigurations* (an EPT-misconfiguration VM
exit, not a violation): write without read (bits 2:0 = 010b or 110b), execute-only where
the processor does not support it, a reserved bit set (including address bits at or
above the physical-address width), a leaf with memory type 2, 3 or 7.

``walk`` translates one guest-physical address as the processor does; ``EptReader``
turns a whole tree into runs of pages with the same outcome (what an engine needs to
enforce it), reusing the runs of table pages that did not change since the last reading;
``EptTables`` builds trees in SDM format, in ``HostMemory`` the guest cannot reach.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, NamedTuple

from pyflank.memory.host import HostMemory
from pyflank.memory.paging import (
    ADDRESS_MASK,
    LEVEL_SHIFT,
    LEVEL_SPAN,
    PAGE_SIZE_1G,
    PAGE_SIZE_2M,
    PAGE_SIZE_4K,
)

READ: Final = 1 << 0
WRITE: Final = 1 << 1
EXECUTE: Final = 1 << 2
RWX: Final = READ | WRITE | EXECUTE
# An access kind is READ, WRITE (both: read-modify-write) or FETCH, the bit of the permission
# each needs (as in an EPT violation's qualification).
FETCH: Final = EXECUTE
MEMORY_TYPE_SHIFT: Final = 3
MEMORY_TYPE_MASK: Final = 7 << MEMORY_TYPE_SHIFT
IGNORE_PAT: Final = 1 << 6
LARGE_PAGE: Final = 1 << 7  # in a PDPTE or PDE: the entry maps a page
ACCESSED: Final = 1 << 8  # set by the processor only with EPT A/D flags enabled
DIRTY: Final = 1 << 9
USER_EXECUTE: Final = 1 << 10  # with mode-based execute control only

UNCACHEABLE: Final = 0
WRITE_BACK: Final = 6
RESERVED_MEMORY_TYPES: Final = frozenset({2, 3, 7})

# The EPTP (SDM "Extended-Page-Table Pointer"): memory type of the tables, walk length - 1,
# the A/D-flags enable, bits 11:7 reserved, then the PML4 address.
EPTP_MEMORY_TYPE_MASK: Final = 0x7
EPTP_WALK_LENGTH_SHIFT: Final = 3
EPTP_ACCESSED_DIRTY: Final = 1 << 6
EPT_LEVELS: Final = 4

# Reserved bits below bit 12, by what the entry is (the address bits 51:N come on top).
_RESERVED_TABLE: Final = {4: 0xF8, 3: 0xF8, 2: 0x78, 1: 0}  # PML4E 7:3, PDPTE 7:3, PDE 6:3
_RESERVED_LARGE: Final = {3: 0x3FFF_F000, 2: 0x1F_F000}  # 1 GiB: 29:12, 2 MiB: 20:12
_PAGE_MASK: Final = {3: ~(PAGE_SIZE_1G - 1), 2: ~(PAGE_SIZE_2M - 1), 1: ~(PAGE_SIZE_4K - 1)}
_TABLE = struct.Struct("<512Q")
_U64 = struct.Struct("<Q")
_ENTRIES = 512


def describe_permissions(permissions: int) -> str:
    """``permissions`` as ``rwx`` letters (``-`` for a missing one)."""
    return "".join(c if permissions & bit else "-" for c, bit in zip("rwx", (1, 2, 4), strict=True))


def misconfiguration(
    entry: int, level: int, *, physical_width: int, execute_only: bool, large_1g: bool = True
) -> str | None:
    """Why a present EPT entry at ``level`` (4 = PML4E ... 1 = PTE) is a misconfiguration,
    or None (SDM "EPT Misconfigurations")."""
    rwx = entry & RWX
    if rwx & WRITE and not rwx & READ:
        return f"bits 2:0 are {rwx:03b}b (write without read)"
    if rwx == EXECUTE and not execute_only:
        return "bits 2:0 are 100b (execute-only), which the processor does not support"
    if entry & ADDRESS_MASK >> physical_width << physical_width:
        return f"address bits at or above the physical-address width ({physical_width}) are set"
    large = level in (2, 3) and entry & LARGE_PAGE
    if level == 3 and large and not large_1g:
        return "bit 7 is set in a PDPTE, and 1 GiB pages are not supported"
    reserved = _RESERVED_LARGE[level] if large else _RESERVED_TABLE[level]
    if level == 1 or large:
        if entry & reserved:
            return f"reserved bits {entry & reserved:#x} are set"
        memory_type = (entry & MEMORY_TYPE_MASK) >> MEMORY_TYPE_SHIFT
        if memory_type in RESERVED_MEMORY_TYPES:
            return f"memory type {memory_type} is reserved"
    elif entry & reserved:
        return f"reserved bits {entry & reserved:#x} are set"
    return None


@dataclass(frozen=True, slots=True)
class EptLeaf:
    """Where the walk of one guest-physical address ended.

    ``base``/``size``: the guest-physical region the ending entry covers (a page, or the
    span of a not-present or misconfigured entry); ``permissions``: bits 2:0 ANDed along
    the walk (0: not present); ``hpa``: the host-physical address ``base`` maps to;
    ``level``: the level of the ending entry; ``entry_address``: where that entry is;
    ``misconfiguration``: why it is one, or None.
    """

    base: int
    size: int
    permissions: int
    hpa: int
    memory_type: int
    level: int
    entry_address: int
    misconfiguration: str | None = None

    @property
    def present(self) -> bool:
        return self.misconfiguration is None and bool(self.permissions)


def pml4_address(eptp: int) -> int:
    return eptp & ADDRESS_MASK


def walk(
    host: HostMemory,
    eptp: int,
    gpa: int,
    *,
    physical_width: int = 39,
    execute_only: bool = True,
) -> EptLeaf:
    """Translate ``gpa`` through the EPT at ``eptp`` (SDM "EPT Translation Mechanism")."""
    table = pml4_address(eptp)
    permissions = RWX
    for level in (4, 3, 2, 1):
        address = table + ((gpa >> LEVEL_SHIFT[level]) & 0x1FF) * 8
        entry = host.read_u64(address)
        span = LEVEL_SPAN[level]
        base = gpa & ~(span - 1)
        if not entry & RWX:
            return EptLeaf(base, span, 0, 0, 0, level, address)
        why = misconfiguration(
            entry, level, physical_width=physical_width, execute_only=execute_only
        )
        if why is not None:
            return EptLeaf(base, span, 0, 0, 0, level, address, why)
        permissions &= entry & RWX
        if level == 1 or entry & LARGE_PAGE:
            hpa = entry & ADDRESS_MASK & _PAGE_MASK[level]
            memory_type = (entry & MEMORY_TYPE_MASK) >> MEMORY_TYPE_SHIFT
            return EptLeaf(base, span, permissions, hpa, memory_type, level, address)
        table = entry & ADDRESS_MASK
    raise AssertionError("unreachable: a PTE always ends the walk")


class EptRun(NamedTuple):
    """Guest-physical pages ``[start, end)`` (byte addresses) with one outcome: their
    ``permissions``, ``hpa - gpa`` (0: identity), or a ``misconfiguration``."""

    start: int
    end: int
    permissions: int
    delta: int = 0
    misconfiguration: str | None = None

    def same_outcome(self, other: EptRun) -> bool:
        return (self.permissions, self.delta, self.misconfiguration) == (
            other.permissions,
            other.delta,
            other.misconfiguration,
        )


class _Child(NamedTuple):
    """A table an entry points at: where, its level, the first address it maps, the
    permissions above it, and where its part of the space ends."""

    table: int
    level: int
    base: int
    inherited: int
    limit: int


class _Table(NamedTuple):
    """A table as last read: its bytes, what its entries make (runs, and child tables in
    their place), the child runs that went in, and the result."""

    raw: bytes
    parts: list[EptRun | _Child]
    children: list[list[EptRun]]
    runs: list[EptRun]


class EptReader:
    """Reads EPT trees into runs (``runs``).  Each table read is kept with its bytes: a
    table whose bytes and child tables did not change gives its runs again without being
    decoded, so reading a tree after one entry changed costs one table, not the tree."""

    def __init__(
        self, host: HostMemory, *, physical_width: int = 39, execute_only: bool = True
    ) -> None:
        self.host = host
        self.physical_width = physical_width
        self.execute_only = execute_only
        self._cache: dict[tuple[int, int, int, int, int], _Table] = {}

    def runs(self, eptp: int, limit: int) -> list[EptRun]:
        """The outcome of every guest-physical page in ``[0, limit)``, as merged runs."""
        return self._table(pml4_address(eptp), 4, 0, RWX, limit)

    def _table(self, table: int, level: int, base: int, inherited: int, limit: int) -> list[EptRun]:
        span = LEVEL_SPAN[level]
        count = min(_ENTRIES, -(-(limit - base) // span))
        key = (table, level, base, inherited, limit)
        raw = self.host.read(table, count * 8)
        cached = self._cache.get(key)
        if cached is not None and cached.raw == raw:
            children = [self._table(*part) for part in cached.parts if isinstance(part, _Child)]
            if all(new is old for new, old in zip(children, cached.children, strict=True)):
                return cached.runs
            parts = cached.parts
        else:
            parts = self._decode(raw, count, level, base, inherited, limit)
            children = [self._table(*part) for part in parts if isinstance(part, _Child)]
        pending = iter(children)
        flat: list[EptRun] = []
        for part in parts:
            if isinstance(part, _Child):
                flat.extend(next(pending))
            else:
                flat.append(part)
        runs = merge(flat)
        self._cache[key] = _Table(raw, parts, children, runs)
        return runs

    def _decode(
        self, raw: bytes, count: int, level: int, base: int, inherited: int, limit: int
    ) -> list[EptRun | _Child]:
        """What each entry of a table makes: runs (merged as they come) and child tables.

        Stretches of entries alike (the same leaf mapping frame after frame, the same
        absent entry) are found by comparing bytes, not decoded one entry at a time.
        """
        span = LEVEL_SPAN[level]
        parts: list[EptRun | _Child] = []
        leaf_level = level == 1
        index = 0
        while index < count:
            entry = _U64.unpack_from(raw, index * 8)[0]
            start = base + index * span
            alike = 1
            if not entry & RWX:
                here = EptRun(start, start + span, 0)
                alike = _alike(raw, index, count, entry, 0)
            else:
                why = misconfiguration(
                    entry, level, physical_width=self.physical_width, execute_only=self.execute_only
                )
                if why is not None:
                    here = EptRun(start, start + span, 0, 0, why)
                elif leaf_level or entry & LARGE_PAGE:
                    delta = (entry & ADDRESS_MASK & _PAGE_MASK[level]) - start
                    here = EptRun(start, start + span, inherited & entry & RWX, delta)
                    alike = _alike(raw, index, count, entry, span)
                else:
                    rwx = inherited & entry & RWX
                    end = min(start + span, limit)
                    parts.append(_Child(entry & ADDRESS_MASK, level - 1, start, rwx, end))
                    index += 1
                    continue
            end = min(start + alike * span, limit)
            last = parts[-1] if parts else None
            if isinstance(last, EptRun) and last.end == start and last.same_outcome(here):
                parts[-1] = last._replace(end=end)
            else:
                parts.append(here._replace(end=end))
            index += alike
        return parts


def _alike(raw: bytes, index: int, count: int, entry: int, step: int) -> int:
    """How many entries from ``index`` on are ``entry``, ``entry + step``, ... (at least 1)."""
    n = count - index
    last = entry + step * (n - 1)
    if last >> 64:
        n = (((1 << 64) - 1 - entry) // step) + 1 if step else n
    pattern = (
        struct.pack(f"<{n}Q", *range(entry, entry + step * n, step))
        if step
        else (raw[index * 8 : index * 8 + 8] * n)
    )
    tail = raw[index * 8 : (index + n) * 8]
    if tail == pattern:
        return n
    low, high = 1, n  # the first ``low`` entries match, the first ``high`` do not
    while high - low > 1:
        middle = (low + high) // 2
        if tail[: middle * 8] == pattern[: middle * 8]:
            low = middle
        else:
            high = middle
    return low


def merge(runs: list[EptRun]) -> list[EptRun]:
    """Adjacent runs with the same outcome joined into one."""
    out: list[EptRun] = []
    for run in runs:
        if out and out[-1].end == run.start and out[-1].same_outcome(run):
            # An identity mapping stays identity; a shifted one only if it shifts alike.
            out[-1] = out[-1]._replace(end=run.end)
        else:
            out.append(run)
    return out


class EptTables:
    """An EPT in SDM format, built in ``host``'s VMM memory (the guest cannot reach it).

    Upper-level entries allow everything (read, write, execute), so leaves alone decide,
    as ``PageTableBuilder`` does for guest paging.  ``map`` uses the largest pages that
    fit; ``protect`` splits a large page only where a range covers part of it.  Changing
    entries is not enough for a processor that caches translations: invalidate (INVEPT).
    """

    def __init__(self, host: HostMemory, *, memory_type: int = WRITE_BACK) -> None:
        self.host = host
        self.memory_type = memory_type
        self.pml4 = host.allocate_page()

    @property
    def eptp(self) -> int:
        """The EPT pointer: this tree, a 4-level walk, the tables' memory type."""
        return self.pml4 | (EPT_LEVELS - 1) << EPTP_WALK_LENGTH_SHIFT | self.memory_type

    # -- building ---------------------------------------------------------------------------
    def map(self, gpa: int, hpa: int, size: int, permissions: int = RWX) -> None:
        """Map ``[gpa, gpa + size)`` to ``[hpa, hpa + size)`` (4 KiB aligned) with the
        largest pages alignment allows, replacing what was mapped there."""
        _check_pages(gpa, size)
        if hpa % PAGE_SIZE_4K:
            raise ValueError(f"hpa {hpa:#x} must be 4 KiB aligned")
        end = gpa + size
        while gpa < end:
            level = (
                3
                if _fits(gpa, hpa, end, PAGE_SIZE_1G)
                else 2
                if _fits(gpa, hpa, end, PAGE_SIZE_2M)
                else 1
            )
            leaf = self._leaf_bits(permissions, level) | hpa
            self.host.write_u64(self._slot(gpa, level), leaf)
            gpa += LEVEL_SPAN[level]
            hpa += LEVEL_SPAN[level]

    def identity_map(self, size: int, permissions: int = RWX) -> None:
        """Guest-physical ``[0, size)`` onto the same host-physical pages (guest RAM)."""
        self.map(0, 0, size, permissions)

    def protect(self, gpa: int, size: int, permissions: int) -> None:
        """Give every mapped page of ``[gpa, gpa + size)`` the ``permissions`` (READ | WRITE |
        EXECUTE bits); large pages the range covers only in part are split first."""
        _check_pages(gpa, size)
        end = gpa + size
        while gpa < end:
            level, slot, entry = self._leaf(gpa)
            span = LEVEL_SPAN[level]
            if entry == 0:
                gpa = (gpa & ~(span - 1)) + span  # nothing was ever mapped here
                continue
            if gpa % span or gpa + span > end:
                self._split(slot, level)
                continue
            self.host.write_u64(slot, entry & ~RWX | permissions)
            gpa += span

    def unmap(self, gpa: int, size: int) -> None:
        """Make ``[gpa, gpa + size)`` not present."""
        self.protect(gpa, size, 0)

    # -- reading ------------------------------------------------------------------------------
    def permissions(self, gpa: int) -> int:
        """The permissions the walk of ``gpa`` gives (0: not present or misconfigured)."""
        leaf = walk(self.host, self.eptp, gpa)
        return leaf.permissions if leaf.misconfiguration is None else 0

    def entry_address(self, gpa: int) -> int:
        """Where the 4 KiB PTE of ``gpa`` is (splitting large pages to get one): for writing
        an entry of one's own, as a VMM may."""
        _check_pages(gpa & ~(PAGE_SIZE_4K - 1), PAGE_SIZE_4K)
        return self._slot(gpa & ~(PAGE_SIZE_4K - 1), 1)

    # -- the tree -------------------------------------------------------------------------------
    def _leaf_bits(self, permissions: int, level: int) -> int:
        bits = permissions & RWX | self.memory_type << MEMORY_TYPE_SHIFT
        return bits | LARGE_PAGE if level > 1 else bits

    def _leaf(self, gpa: int) -> tuple[int, int, int]:
        """(level, slot, entry) of the entry that ends the walk of ``gpa``."""
        table = self.pml4
        for level in (4, 3, 2, 1):
            slot = table + ((gpa >> LEVEL_SHIFT[level]) & 0x1FF) * 8
            entry = self.host.read_u64(slot)
            if level == 1 or entry & LARGE_PAGE or not entry & RWX:
                return level, slot, entry
            table = entry & ADDRESS_MASK
        raise AssertionError("unreachable")

    def _slot(self, gpa: int, leaf_level: int) -> int:
        """The slot of the ``leaf_level`` entry for ``gpa``, making tables on the way and
        splitting large pages above it."""
        table = self.pml4
        for level in range(4, leaf_level, -1):
            slot = table + ((gpa >> LEVEL_SHIFT[level]) & 0x1FF) * 8
            entry = self.host.read_u64(slot)
            if entry & LARGE_PAGE:
                table = self._split(slot, level)
            elif entry & RWX and not entry & LARGE_PAGE:
                table = entry & ADDRESS_MASK
            else:
                table = self.host.allocate_page()
                self.host.write_u64(slot, table | RWX)
        return table + ((gpa >> LEVEL_SHIFT[leaf_level]) & 0x1FF) * 8

    def _split(self, slot: int, level: int) -> int:
        """Replace the large page (or not-present entry) at ``slot`` by a table of 512
        entries that map the same bytes the same way."""
        entry = self.host.read_u64(slot)
        table = self.host.allocate_page()
        if entry & LARGE_PAGE:
            step = LEVEL_SPAN[level - 1]
            frame = entry & ADDRESS_MASK & _PAGE_MASK[level]
            flags = entry & ~ADDRESS_MASK
            if level - 1 == 1:
                flags &= ~LARGE_PAGE
            children = (flags | (frame + i * step) for i in range(_ENTRIES))
            self.host.write(table, _TABLE.pack(*children))
        self.host.write_u64(slot, table | RWX)
        return table

    def leaves(self) -> Iterator[EptLeaf]:
        """Every present leaf, in guest-physical order (for dumps and tests)."""
        for run in EptReader(self.host).runs(self.eptp, 1 << 39):
            if run.permissions:
                yield walk(self.host, self.eptp, run.start)


def _fits(gpa: int, hpa: int, end: int, size: int) -> bool:
    return gpa % size == 0 and hpa % size == 0 and gpa + size <= end


def _check_pages(gpa: int, size: int) -> None:
    if gpa < 0 or size <= 0 or gpa % PAGE_SIZE_4K or size % PAGE_SIZE_4K:
        raise ValueError(f"[{gpa:#x}, +{size:#x}) is not a non-empty range of 4 KiB pages")
    if gpa + size > 1 << 48:
        raise ValueError(f"[{gpa:#x}, +{size:#x}) is beyond a 4-level EPT (48 bits)")
