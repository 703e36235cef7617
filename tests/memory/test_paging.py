"""translate(): the SDM 4-level walk, checked against hand-written tables."""

from __future__ import annotations

import pickle

import pytest

from pyflank.memory import (
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
    GuestPhysicalMemory,
    PageFault,
    PageFaultReason,
    translate,
)

# One table per level at fixed addresses keeps every entry visible in the test.
TABLES = {4: 0x1000, 3: 0x2000, 2: 0x3000, 1: 0x4000}
CR3 = TABLES[4]
SHIFT = {4: 39, 3: 30, 2: 21, 1: 12}
OPEN = PRESENT | WRITABLE | USER
LEAF_SIZE = {1: PAGE_SIZE_4K, 2: PAGE_SIZE_2M, 3: PAGE_SIZE_1G}

GVA = 0x0000_1234_5678_9ABC  # distinct index at every level
HIGH_GVA = 0xFFFF_8123_4567_8ABC


def install(
    mem: GuestPhysicalMemory,
    gva: int,
    leaf_level: int,
    frame: int,
    *,
    add: dict[int, int] | None = None,
    drop: dict[int, int] | None = None,
) -> None:
    """Write a walk for ``gva`` ending in a leaf at ``leaf_level``; add/drop bits per level."""
    for level in range(4, leaf_level - 1, -1):
        if level == leaf_level:
            entry = frame | OPEN | (PAGE_SIZE if level > 1 else 0)
        else:
            entry = TABLES[level - 1] | OPEN
        entry = (entry | (add or {}).get(level, 0)) & ~(drop or {}).get(level, 0)
        mem.write_u64(TABLES[level] + ((gva >> SHIFT[level]) & 0x1FF) * 8, entry)


@pytest.fixture
def mem() -> GuestPhysicalMemory:
    return GuestPhysicalMemory(0x8000)


def fault(mem: GuestPhysicalMemory, gva: int = GVA, **access: bool) -> PageFault:
    with pytest.raises(PageFault) as info:
        translate(mem, CR3, gva, **access)
    return info.value


@pytest.mark.parametrize("gva", [GVA, HIGH_GVA])
@pytest.mark.parametrize("leaf_level", [1, 2, 3])
def test_every_page_size(mem: GuestPhysicalMemory, gva: int, leaf_level: int) -> None:
    size = LEAF_SIZE[leaf_level]
    frame = 0x000F_FFFF_C000_0000  # a 52-bit frame, aligned for every size
    install(mem, gva, leaf_level, frame)
    t = translate(mem, CR3, gva, write=True, user=True, execute=True)
    assert t.gva == gva
    assert t.gpa == frame + (gva & (size - 1))
    assert t.page_size == size
    assert (t.writable, t.user, t.executable, t.pat_index) == (True, True, True, 0)


def test_walk_does_not_touch_memory(mem: GuestPhysicalMemory) -> None:
    install(mem, GVA, 1, 0x7000)
    before = mem.read(0, mem.size)
    translate(mem, CR3, GVA, write=True)
    assert mem.read(0, mem.size) == before  # no accessed/dirty updates


def test_cr3_low_bits_are_ignored(mem: GuestPhysicalMemory) -> None:
    install(mem, GVA, 1, 0x7000)
    assert translate(mem, CR3 | 0xFFF, GVA).gpa == 0x7000 | (GVA & 0xFFF)


@pytest.mark.parametrize(
    ("leaf_level", "bits", "index"),
    [
        (1, PWT, 1),
        (1, PCD, 2),
        (1, PAT_4K, 4),
        (1, PAT_4K | PCD | PWT, 7),
        (2, PAT_LARGE, 4),
        (2, PAT_LARGE | PWT, 5),
        (3, PAT_LARGE | PCD, 6),
    ],
)
def test_pat_index(mem: GuestPhysicalMemory, leaf_level: int, bits: int, index: int) -> None:
    install(mem, GVA, leaf_level, 0x4000_0000, add={leaf_level: bits})
    t = translate(mem, CR3, GVA)
    assert t.pat_index == index
    assert t.page_size == LEAF_SIZE[leaf_level]  # bit 7 in a PTE is PAT, not PS


def test_pat_bit_is_not_part_of_a_large_frame(mem: GuestPhysicalMemory) -> None:
    install(mem, GVA, 2, 0x40_0000, add={2: PAT_LARGE})
    assert translate(mem, CR3, GVA).gpa == 0x40_0000 | (GVA & (PAGE_SIZE_2M - 1))


@pytest.mark.parametrize(
    "gva", [0x0000_8000_0000_0000, 0xFFFF_7FFF_FFFF_FFFF, 0x8000_0000_0000_0000]
)
def test_non_canonical(mem: GuestPhysicalMemory, gva: int) -> None:
    err = fault(mem, gva)
    assert (err.reason, err.level, err.gva) == (PageFaultReason.NON_CANONICAL, 0, gva)


@pytest.mark.parametrize("gva", [-1, 1 << 64])
def test_not_a_64_bit_address(mem: GuestPhysicalMemory, gva: int) -> None:
    with pytest.raises(ValueError):
        translate(mem, CR3, gva)


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_not_present_at_each_level(mem: GuestPhysicalMemory, level: int) -> None:
    install(mem, GVA, 1, 0x7000, drop={level: PRESENT})
    err = fault(mem)
    assert (err.reason, err.level, err.gva) == (PageFaultReason.NOT_PRESENT, level, GVA)
    assert ["PML4E", "PDPTE", "PDE", "PTE"][4 - level] in str(err)


def test_empty_tables_fault_at_pml4(mem: GuestPhysicalMemory) -> None:
    assert fault(mem).level == 4


@pytest.mark.parametrize(
    ("leaf_level", "level", "bits"),
    [
        (1, 4, PAGE_SIZE),  # PS is reserved in a PML4E
        (2, 2, 1 << 13),  # bits 20:13 of a 2 MiB PDE
        (2, 2, 1 << 20),
        (3, 3, 1 << 13),  # bits 29:13 of a 1 GiB PDPTE
        (3, 3, 1 << 29),
    ],
)
def test_reserved_bits(mem: GuestPhysicalMemory, leaf_level: int, level: int, bits: int) -> None:
    install(mem, GVA, leaf_level, 0x4000_0000, add={level: bits})
    err = fault(mem)
    assert (err.reason, err.level) == (PageFaultReason.RESERVED_BIT, level)


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_xd_is_reserved_without_nxe(mem: GuestPhysicalMemory, level: int) -> None:
    install(mem, GVA, 1, 0x7000, add={level: NX})
    err = fault(mem, nxe=False)
    assert (err.reason, err.level) == (PageFaultReason.RESERVED_BIT, level)
    assert translate(mem, CR3, GVA, nxe=True).executable is False


def test_tables_outside_ram(mem: GuestPhysicalMemory) -> None:
    with pytest.raises(PageFault) as info:
        translate(mem, 0x10_0000, GVA)
    assert (info.value.reason, info.value.level) == (PageFaultReason.OUTSIDE_RAM, 4)
    install(mem, GVA, 1, 0x7000)
    mem.write_u64(TABLES[3] + ((GVA >> 30) & 0x1FF) * 8, 0x20_0000 | OPEN)
    err = fault(mem)
    assert (err.reason, err.level) == (PageFaultReason.OUTSIDE_RAM, 2)


def test_data_page_outside_ram_still_translates(mem: GuestPhysicalMemory) -> None:
    install(mem, GVA, 1, 0xFEE0_0000)  # e.g. the local APIC
    assert translate(mem, CR3, GVA).gpa == 0xFEE0_0000 | (GVA & 0xFFF)


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_read_only_at_each_level(mem: GuestPhysicalMemory, level: int) -> None:
    install(mem, GVA, 1, 0x7000, drop={level: WRITABLE})
    assert translate(mem, CR3, GVA).writable is False
    translate(mem, CR3, GVA, user=True)  # reads are fine
    err = fault(mem, write=True)
    assert (err.reason, err.level) == (PageFaultReason.NOT_WRITABLE, level)
    # CR0.WP=0 lets the supervisor write anyway, but never a user.
    assert translate(mem, CR3, GVA, write=True, wp=False).gpa == 0x7000 | (GVA & 0xFFF)
    err = fault(mem, write=True, user=True, wp=False)
    assert (err.reason, err.level) == (PageFaultReason.NOT_WRITABLE, level)


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_supervisor_only_at_each_level(mem: GuestPhysicalMemory, level: int) -> None:
    install(mem, GVA, 1, 0x7000, drop={level: USER})
    t = translate(mem, CR3, GVA, write=True, execute=True)
    assert t.user is False
    err = fault(mem, user=True)
    assert (err.reason, err.level) == (PageFaultReason.NOT_USER, level)


@pytest.mark.parametrize("leaf_level", [1, 2, 3])
def test_user_access_on_each_page_size(mem: GuestPhysicalMemory, leaf_level: int) -> None:
    install(mem, GVA, leaf_level, 0x4000_0000, drop={leaf_level: USER})
    assert fault(mem, user=True).level == leaf_level


def test_highest_denying_level_is_reported(mem: GuestPhysicalMemory) -> None:
    install(mem, GVA, 1, 0x7000, drop={3: USER | WRITABLE, 1: USER | WRITABLE}, add={2: NX, 1: NX})
    assert fault(mem, user=True).level == 3
    assert fault(mem, write=True).level == 3
    assert fault(mem, execute=True).level == 2


def test_user_check_comes_before_write_check(mem: GuestPhysicalMemory) -> None:
    install(mem, GVA, 1, 0x7000, drop={1: USER | WRITABLE})
    assert fault(mem, user=True, write=True).reason is PageFaultReason.NOT_USER


@pytest.mark.parametrize("level", [4, 3, 2, 1])
def test_execute_disable_at_each_level(mem: GuestPhysicalMemory, level: int) -> None:
    install(mem, GVA, 1, 0x7000, add={level: NX})
    translate(mem, CR3, GVA, write=True, user=True)  # data accesses ignore XD
    err = fault(mem, execute=True)
    assert (err.reason, err.level) == (PageFaultReason.NOT_EXECUTABLE, level)


def test_without_nxe_everything_present_is_executable(mem: GuestPhysicalMemory) -> None:
    install(mem, GVA, 2, 0x20_0000)
    t = translate(mem, CR3, GVA, execute=True, nxe=False)
    assert t.executable is True


def test_page_fault_pickles_and_reads_well() -> None:
    err = pickle.loads(pickle.dumps(PageFault(0x1000, PageFaultReason.NOT_PRESENT, 2)))
    assert (err.gva, err.reason, err.level) == (0x1000, PageFaultReason.NOT_PRESENT, 2)
    assert str(err) == "page fault at gva 0x1000: not present (PDE, level 2)"
    assert "level" not in str(PageFault(0x8000_0000_0000, PageFaultReason.NON_CANONICAL))
