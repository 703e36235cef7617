"""PageTableBuilder: tables in guest RAM that translate() (and so a CPU) walks as intended."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyflank.memory import (
    ACCESSED,
    DIRTY,
    PAGE_SIZE_1G,
    PAGE_SIZE_2M,
    PAGE_SIZE_4K,
    GuestMemoryError,
    GuestPhysicalMemory,
    PageFault,
    PageFaultReason,
    PageTableBuilder,
    TableSpaceExhausted,
    translate,
)

RAM = 0x4_0000
TABLE_BASE, TABLE_LIMIT = 0x1_0000, 0x4_0000


@pytest.fixture
def mem() -> GuestPhysicalMemory:
    return GuestPhysicalMemory(RAM)


@pytest.fixture
def pt(mem: GuestPhysicalMemory) -> PageTableBuilder:
    return PageTableBuilder(mem, TABLE_BASE, TABLE_LIMIT)


def reason(mem: GuestPhysicalMemory, cr3: int, gva: int, **access: bool) -> tuple[object, int]:
    with pytest.raises(PageFault) as info:
        translate(mem, cr3, gva, **access)
    return info.value.reason, info.value.level


def leaf_slot(mem: GuestPhysicalMemory, cr3: int, gva: int) -> int:
    """Address of the PTE for a 4 KiB-mapped ``gva``, found by walking by hand."""
    table = cr3
    for shift in (39, 30, 21):
        table = mem.read_u64(table + ((gva >> shift) & 0x1FF) * 8) & 0x000F_FFFF_FFFF_F000
    return table + ((gva >> 12) & 0x1FF) * 8


@pytest.mark.parametrize(
    ("base", "limit"),
    [(0x800, 0x4000), (0x1000, 0x1800), (0x2000, 0x2000), (0x3000, 0x1000), (0, RAM + 0x1000)],
)
def test_region_validation(mem: GuestPhysicalMemory, base: int, limit: int) -> None:
    with pytest.raises(ValueError):
        PageTableBuilder(mem, base, limit)


def test_pml4_is_allocated_and_cleared(mem: GuestPhysicalMemory) -> None:
    mem.fill(0, RAM, 0xFF)  # stale data in the region must not become entries
    pt = PageTableBuilder(mem, 0x3000, 0x8000)
    assert pt.cr3 == 0x3000
    assert (pt.tables_used, pt.tables_free) == (1, 4)
    assert mem.read(0x3000, PAGE_SIZE_4K) == bytes(PAGE_SIZE_4K)
    assert reason(mem, pt.cr3, 0x1000) == (PageFaultReason.NOT_PRESENT, 4)


@pytest.mark.parametrize(
    ("page_size", "gva", "gpa"),
    [
        (PAGE_SIZE_4K, 0x40_1000, 0x7000),
        (PAGE_SIZE_2M, 0xFFFF_8000_0020_0000, 0x60_0000),
        (PAGE_SIZE_1G, 0x7F_C000_0000, 0x1_4000_0000),
    ],
)
def test_map_each_page_size(
    mem: GuestPhysicalMemory, pt: PageTableBuilder, page_size: int, gva: int, gpa: int
) -> None:
    pt.map(gva, gpa, 2 * page_size, page_size=page_size, pat_index=6)
    for page in range(2):
        probe = gva + page * page_size + 0x123
        t = translate(mem, pt.cr3, probe, write=True, execute=True)
        assert (t.gpa, t.page_size) == (gpa + page * page_size + 0x123, page_size)
        assert (t.writable, t.user, t.executable, t.pat_index) == (True, False, True, 6)
    assert reason(mem, pt.cr3, gva + 2 * page_size)[0] is PageFaultReason.NOT_PRESENT


def test_flags_reach_the_leaf(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x1000, 0x2000, 0x1000, writable=False, user=True, executable=False)
    t = translate(mem, pt.cr3, 0x1000, user=True)
    assert (t.writable, t.user, t.executable) == (False, True, False)
    assert reason(mem, pt.cr3, 0x1000, write=True) == (PageFaultReason.NOT_WRITABLE, 1)
    assert reason(mem, pt.cr3, 0x1000, execute=True) == (PageFaultReason.NOT_EXECUTABLE, 1)
    pt.map(0x2000, 0x2000, 0x1000)
    assert reason(mem, pt.cr3, 0x2000, user=True) == (PageFaultReason.NOT_USER, 1)


def test_tables_are_shared_between_neighbours(pt: PageTableBuilder) -> None:
    pt.map(0, 0, 0x1000)
    assert pt.tables_used == 4
    pt.map(0x1000, 0x5000, 0x1000)
    pt.map(0x20_0000, 0, PAGE_SIZE_2M, page_size=PAGE_SIZE_2M)
    assert pt.tables_used == 4


@pytest.mark.parametrize(
    ("gva", "gpa", "size", "page_size"),
    [
        (0x800, 0, 0x1000, PAGE_SIZE_4K),
        (0, 0x800, 0x1000, PAGE_SIZE_4K),
        (0, 0, 0x1800, PAGE_SIZE_4K),
        (0x1000, 0, PAGE_SIZE_2M, PAGE_SIZE_2M),
        (0, 0, 0, PAGE_SIZE_4K),
        (0, 0, 0x2000, 0x2000),
        (0x7FFF_FFFF_F000, 0, 0x2000, PAGE_SIZE_4K),  # runs into the canonical hole
        (0x8000_0000_0000, 0, 0x1000, PAGE_SIZE_4K),
        (0xFFFF_FFFF_FFFF_F000, 0, 0x2000, PAGE_SIZE_4K),  # past 2**64
        (-0x1000, 0, 0x1000, PAGE_SIZE_4K),
        (0, 1 << 52, 0x1000, PAGE_SIZE_4K),
    ],
)
def test_map_rejects_bad_arguments(
    pt: PageTableBuilder, gva: int, gpa: int, size: int, page_size: int
) -> None:
    with pytest.raises(ValueError):
        pt.map(gva, gpa, size, page_size=page_size)
    assert pt.tables_used == 1


@pytest.mark.parametrize("pat_index", [-1, 8])
def test_map_rejects_bad_pat_index(pt: PageTableBuilder, pat_index: int) -> None:
    with pytest.raises(ValueError):
        pt.map(0, 0, 0x1000, pat_index=pat_index)


def test_identical_remap_is_a_no_op_even_after_access(
    mem: GuestPhysicalMemory, pt: PageTableBuilder
) -> None:
    pt.map(0x1000, 0x3000, 0x2000, writable=False)
    leaf = translate(mem, pt.cr3, 0x1000)
    assert leaf.gpa == 0x3000
    # Pretend the CPU set accessed/dirty on the PTE.
    pte = leaf_slot(mem, pt.cr3, 0x1000)
    mem.write_u64(pte, mem.read_u64(pte) | ACCESSED | DIRTY)
    used = pt.tables_used
    pt.map(0x1000, 0x3000, 0x3000, writable=False)  # overlaps and extends
    assert pt.tables_used == used
    assert translate(mem, pt.cr3, 0x3000).gpa == 0x5000


@pytest.mark.parametrize(
    ("gva", "gpa", "size", "kwargs"),
    [
        (0x1000, 0x4000, 0x1000, {}),  # other frame
        (0x1000, 0x3000, 0x1000, {"writable": False}),  # other rights
        (0x1000, 0x3000, 0x1000, {"pat_index": 1}),
        (0, 0, PAGE_SIZE_2M, {"page_size": PAGE_SIZE_2M}),  # 4 KiB pages already there
        (0, 0, PAGE_SIZE_1G, {"page_size": PAGE_SIZE_1G}),
    ],
)
def test_conflicting_remap_changes_nothing(
    mem: GuestPhysicalMemory,
    pt: PageTableBuilder,
    gva: int,
    gpa: int,
    size: int,
    kwargs: dict[str, Any],
) -> None:
    pt.map(0x1000, 0x3000, 0x1000)
    before = mem.read(TABLE_BASE, TABLE_LIMIT - TABLE_BASE), pt.tables_used
    with pytest.raises(ValueError):
        pt.map(gva, gpa, size, **kwargs)
    assert (mem.read(TABLE_BASE, TABLE_LIMIT - TABLE_BASE), pt.tables_used) == before


def test_failed_map_is_atomic(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x20_0000, 0x9000, 0x1000)
    before = mem.read(TABLE_BASE, TABLE_LIMIT - TABLE_BASE), pt.tables_used
    with pytest.raises(ValueError, match="differently"):
        # Two pages that would need a new page table, then one that conflicts.
        pt.map(0x1F_E000, 0x1000, 0x3000)
    assert (mem.read(TABLE_BASE, TABLE_LIMIT - TABLE_BASE), pt.tables_used) == before
    assert reason(mem, pt.cr3, 0x1F_E000) == (PageFaultReason.NOT_PRESENT, 2)


def test_small_pages_inside_a_large_page_are_refused(pt: PageTableBuilder) -> None:
    pt.map(0, 0, PAGE_SIZE_2M, page_size=PAGE_SIZE_2M)
    with pytest.raises(ValueError, match="larger page"):
        pt.map(0x1000, 0x1000, 0x1000)
    pt.map(PAGE_SIZE_1G, 0, PAGE_SIZE_1G, page_size=PAGE_SIZE_1G)
    with pytest.raises(ValueError, match="larger page"):
        pt.map(PAGE_SIZE_1G, 0, PAGE_SIZE_2M, page_size=PAGE_SIZE_2M)


def test_exhaustion_is_reported_before_any_write(mem: GuestPhysicalMemory) -> None:
    pt = PageTableBuilder(mem, 0x1000, 0x3000)  # PML4 plus one spare page
    before = mem.read(0, RAM)
    with pytest.raises(TableSpaceExhausted) as info:
        pt.map(0x1000, 0x1000, 0x1000)  # needs PDPT, PD and PT
    assert isinstance(info.value, GuestMemoryError)
    assert "exhausted" in str(info.value)
    assert mem.read(0, RAM) == before and pt.tables_used == 1
    pt.map(0, 0, PAGE_SIZE_1G, page_size=PAGE_SIZE_1G)  # needs only the PDPT
    assert pt.tables_free == 0


def test_identity_map_widens_to_whole_pages(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.identity_map(0x1000, 0x1000)  # default 2 MiB pages
    t = translate(mem, pt.cr3, 0x1F_FFFF)
    assert (t.gpa, t.page_size) == (0x1F_FFFF, PAGE_SIZE_2M)
    pt.identity_map(PAGE_SIZE_1G + 0x10, 0x10, PAGE_SIZE_4K, writable=False, executable=False)
    t = translate(mem, pt.cr3, PAGE_SIZE_1G + 0x10)
    assert (t.gpa, t.page_size, t.writable, t.executable) == (
        PAGE_SIZE_1G + 0x10,
        PAGE_SIZE_4K,
        False,
        False,
    )
    with pytest.raises(ValueError):
        pt.identity_map(0, 0)
    with pytest.raises(ValueError):
        pt.identity_map(0, 0x1000, 0x3000)


def test_unmap_4k(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x1000, 0x1000, 0x3000)
    pt.unmap(0x2000, 0x1000)
    assert reason(mem, pt.cr3, 0x2FFF) == (PageFaultReason.NOT_PRESENT, 1)
    assert translate(mem, pt.cr3, 0x1000).gpa == 0x1000
    assert translate(mem, pt.cr3, 0x3000).gpa == 0x3000
    pt.unmap(0, 0x10_0000)  # holes are skipped
    assert reason(mem, pt.cr3, 0x1000) == (PageFaultReason.NOT_PRESENT, 1)
    pt.unmap(0x7F_0000_0000, PAGE_SIZE_1G)  # nothing there at all
    pt.map(0x2000, 0x8000, 0x1000)  # an unmapped page can be mapped afresh
    assert translate(mem, pt.cr3, 0x2000).gpa == 0x8000


@pytest.mark.parametrize(("hole", "tables"), [(PAGE_SIZE_4K, 1), (PAGE_SIZE_2M, 1)])
def test_unmap_splits_a_large_page(
    mem: GuestPhysicalMemory, pt: PageTableBuilder, hole: int, tables: int
) -> None:
    size = PAGE_SIZE_2M if hole == PAGE_SIZE_4K else PAGE_SIZE_1G
    pt.map(0, 0x4000_0000, size, page_size=size, writable=False, pat_index=5)
    used = pt.tables_used
    pt.unmap(3 * hole, hole)
    assert pt.tables_used == used + tables
    assert reason(mem, pt.cr3, 3 * hole)[0] is PageFaultReason.NOT_PRESENT
    for probe in (0, 3 * hole - 1, 4 * hole, size - 1):
        t = translate(mem, pt.cr3, probe)
        assert (t.gpa, t.page_size) == (0x4000_0000 + probe, hole)
        assert (t.writable, t.pat_index) == (False, 5)  # PAT moves bit when splitting to 4K


def test_unmap_4k_out_of_a_1g_page_splits_twice(
    mem: GuestPhysicalMemory, pt: PageTableBuilder
) -> None:
    pt.map(PAGE_SIZE_1G, 0, PAGE_SIZE_1G, page_size=PAGE_SIZE_1G, pat_index=4)
    used = pt.tables_used
    pt.unmap(PAGE_SIZE_1G + PAGE_SIZE_2M - 0x1000, 0x2000)  # straddles two 2 MiB pieces
    assert pt.tables_used == used + 3
    assert reason(mem, pt.cr3, PAGE_SIZE_1G + PAGE_SIZE_2M)[1] == 1
    assert reason(mem, pt.cr3, PAGE_SIZE_1G + PAGE_SIZE_2M - 1)[1] == 1
    t = translate(mem, pt.cr3, PAGE_SIZE_1G + PAGE_SIZE_2M + 0x1000)
    assert (t.gpa, t.page_size, t.pat_index) == (PAGE_SIZE_2M + 0x1000, PAGE_SIZE_4K, 4)
    t = translate(mem, pt.cr3, PAGE_SIZE_1G + 5 * PAGE_SIZE_2M)
    assert (t.gpa, t.page_size, t.pat_index) == (5 * PAGE_SIZE_2M, PAGE_SIZE_2M, 4)


def test_split_exhaustion_changes_nothing(mem: GuestPhysicalMemory) -> None:
    pt = PageTableBuilder(mem, 0x1000, 0x4000)
    pt.map(0, 0, PAGE_SIZE_2M, page_size=PAGE_SIZE_2M)
    before = mem.read(0, RAM)
    with pytest.raises(TableSpaceExhausted):
        pt.unmap(0x1000, 0x1000)
    with pytest.raises(TableSpaceExhausted):
        pt.protect(0x1000, 0x1000)
    assert mem.read(0, RAM) == before
    pt.unmap(0, PAGE_SIZE_2M)  # the whole page needs no split
    assert reason(mem, pt.cr3, 0) == (PageFaultReason.NOT_PRESENT, 2)


def test_protect(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0, 0, PAGE_SIZE_2M, page_size=PAGE_SIZE_2M)
    pt.protect(0x5000, 0x1000)
    assert reason(mem, pt.cr3, 0x5000, write=True) == (PageFaultReason.NOT_WRITABLE, 1)
    assert translate(mem, pt.cr3, 0x5000, write=True, wp=False).gpa == 0x5000
    translate(mem, pt.cr3, 0x4FFF, write=True)
    translate(mem, pt.cr3, 0x6000, write=True)
    pt.protect(0x5000, 0x1000, True, user=True, executable=False)
    t = translate(mem, pt.cr3, 0x5000, write=True, user=True)
    assert (t.writable, t.user, t.executable) == (True, True, False)
    pt.protect(0x5000, 0x1000, None, executable=True)  # None keeps R/W as it is
    t = translate(mem, pt.cr3, 0x5000, write=True, execute=True)
    assert (t.writable, t.user, t.executable) == (True, True, True)


def test_protect_requires_a_mapping(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x1000, 0x1000, 0x1000)
    before = mem.read(TABLE_BASE, TABLE_LIMIT - TABLE_BASE)
    with pytest.raises(ValueError, match="not mapped"):
        pt.protect(0x1000, 0x2000)
    assert mem.read(TABLE_BASE, TABLE_LIMIT - TABLE_BASE) == before
    with pytest.raises(ValueError):
        pt.protect(0x1800, 0x1000)


# -- property: translate() agrees with what the builder was asked to map --------------------


@dataclass(frozen=True)
class Page:
    gva: int
    gpa: int
    size: int
    flags: tuple[bool, bool, bool, int]  # writable, user, executable, pat_index


def _sign_extend(va: int) -> int:
    return va | (0xFFFF << 48) if va & (1 << 47) else va


@st.composite
def requests(draw: st.DrawFn) -> tuple[int, int, int, int, tuple[bool, bool, bool, int]]:
    page_size = draw(st.sampled_from([PAGE_SIZE_4K] * 3 + [PAGE_SIZE_2M] * 2 + [PAGE_SIZE_1G]))
    # Few distinct indices per level, so requests share tables and collide often.
    idx = [draw(st.sampled_from(choices)) for choices in ([0, 1, 256, 511], [0, 1, 511])]
    idx += [draw(st.sampled_from([0, 1, 511])), draw(st.sampled_from([0, 1, 510, 511]))]
    va = (idx[0] << 39) | (idx[1] << 30) | (idx[2] << 21) | (idx[3] << 12)
    gva = _sign_extend(va & ~(page_size - 1))
    gpa = draw(st.integers(0, (1 << 40) // page_size)) * page_size
    count = draw(st.integers(1, 3))
    flags = (draw(st.booleans()), draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 7)))
    return gva, gpa, count * page_size, page_size, flags


def _expected_outcome(
    model: dict[int, Page],
    gva: int,
    gpa: int,
    size: int,
    page_size: int,
    flags: tuple[bool, bool, bool, int],
) -> list[Page] | None:
    """New pages to add, or None when the builder must refuse the request."""
    end = gva + size
    if end > 1 << 64 or gva >> 47 != (end - 1) >> 47:
        return None
    new = [Page(gva + o, gpa + o, page_size, flags) for o in range(0, size, page_size)]
    added = []
    for page in new:
        overlapping = [
            old
            for old in model.values()
            if old.gva < page.gva + page.size and page.gva < old.gva + old.size
        ]
        if overlapping == [page]:
            continue
        if overlapping:
            return None
        added.append(page)
    return added


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(requests(), min_size=1, max_size=8), st.randoms(use_true_random=False))
def test_translate_agrees_with_builder(
    reqs: list[tuple[int, int, int, int, tuple[bool, bool, bool, int]]], rnd: random.Random
) -> None:
    mem = GuestPhysicalMemory(0x8_0000)
    pt = PageTableBuilder(mem, 0, mem.size)
    model: dict[int, Page] = {}
    for gva, gpa, size, page_size, flags in reqs:
        expected = _expected_outcome(model, gva, gpa, size, page_size, flags)
        if expected is None:
            with pytest.raises(ValueError):
                pt.map(
                    gva,
                    gpa,
                    size,
                    page_size=page_size,
                    writable=flags[0],
                    user=flags[1],
                    executable=flags[2],
                    pat_index=flags[3],
                )
            continue
        pt.map(
            gva,
            gpa,
            size,
            page_size=page_size,
            writable=flags[0],
            user=flags[1],
            executable=flags[2],
            pat_index=flags[3],
        )
        model.update((p.gva, p) for p in expected)

    for page in model.values():
        for offset in (0, page.size - 1, rnd.randrange(page.size)):
            t = translate(mem, pt.cr3, page.gva + offset)
            assert t.gpa == page.gpa + offset
            assert t.page_size == page.size
            assert (t.writable, t.user, t.executable, t.pat_index) == page.flags
    # Pages next to mapped ones that nobody mapped must not translate.
    for page in model.values():
        probe = page.gva + page.size
        if probe < 1 << 64 and not any(p.gva <= probe < p.gva + p.size for p in model.values()):
            try:
                translate(mem, pt.cr3, probe)
            except PageFault as err:
                assert err.reason in (PageFaultReason.NOT_PRESENT, PageFaultReason.NON_CANONICAL)
            else:
                pytest.fail(f"unmapped gva {probe:#x} translated")


# -- property: unmap/protect (with their splits) act on exactly the pages asked for --------

WINDOW = 2 * PAGE_SIZE_2M  # ops land around the 2 MiB boundary inside a 1 GiB page


@st.composite
def edits(draw: st.DrawFn) -> tuple[str, int, int, bool]:
    first = draw(st.integers(0, WINDOW // PAGE_SIZE_4K - 1))
    count = draw(st.integers(1, WINDOW // PAGE_SIZE_4K - first))
    kind = draw(st.sampled_from(["unmap", "protect"]))
    return kind, first * PAGE_SIZE_4K, count * PAGE_SIZE_4K, draw(st.booleans())


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([PAGE_SIZE_2M, PAGE_SIZE_1G]),
    st.lists(edits(), min_size=1, max_size=5),
    st.randoms(use_true_random=False),
)
def test_edits_match_a_per_page_model(
    page_size: int, ops: list[tuple[str, int, int, bool]], rnd: random.Random
) -> None:
    mem = GuestPhysicalMemory(0x4_0000)
    pt = PageTableBuilder(mem, 0, mem.size)
    base, target = 0xFFFF_8000_0000_0000, 0x40_0000_0000
    pt.map(base, target, max(page_size, WINDOW), page_size=page_size, pat_index=3)
    writable: dict[int, bool | None] = dict.fromkeys(range(0, WINDOW, PAGE_SIZE_4K), True)
    for kind, offset, size, flag in ops:
        pages = range(offset, offset + size, PAGE_SIZE_4K)
        if kind == "unmap":
            pt.unmap(base + offset, size)
            writable.update(dict.fromkeys(pages, None))
        elif any(writable[p] is None for p in pages):
            with pytest.raises(ValueError):
                pt.protect(base + offset, size, flag)
        else:
            pt.protect(base + offset, size, flag)
            writable.update(dict.fromkeys(pages, flag))
    edges = {o + d for _, o, s, _ in ops for d in (-PAGE_SIZE_4K, 0, s - PAGE_SIZE_4K, s)}
    probes = {p for p in edges if 0 <= p < WINDOW} | set(rnd.sample(sorted(writable), 16))
    for page in probes:
        gva = base + page + rnd.randrange(PAGE_SIZE_4K)
        if writable[page] is None:
            assert reason(mem, pt.cr3, gva)[0] is PageFaultReason.NOT_PRESENT
            continue
        t = translate(mem, pt.cr3, gva)
        assert t.gpa == target + (gva - base)
        assert (t.writable, t.pat_index) == (writable[page], 3)
