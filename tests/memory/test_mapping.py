"""GuestVirtualRange: up-front faults, physically scattered buffers, no stray writes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pyflank.memory import (
    PAGE_SIZE_2M,
    PAGE_SIZE_4K,
    GuestPhysicalMemory,
    GuestVirtualRange,
    PageFault,
    PageFaultReason,
    PageTableBuilder,
    map_guest_virtual,
)

RAM = 0x80_0000  # 8 MiB: room for a 2 MiB data page
TABLES = (0x1000, 0x2_0000)
PATTERN = 0xA5


@pytest.fixture
def mem() -> GuestPhysicalMemory:
    return GuestPhysicalMemory(RAM)


@pytest.fixture
def pt(mem: GuestPhysicalMemory) -> PageTableBuilder:
    return PageTableBuilder(mem, *TABLES)


def painted(mem: GuestPhysicalMemory) -> bytearray:
    """Fill data RAM (not the tables) with a pattern and return the expected image."""
    mem.fill(TABLES[1], RAM - TABLES[1], PATTERN)
    return bytearray(mem.read(0, RAM))


def test_single_page(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x40_0000, 0x3_0000, PAGE_SIZE_4K)
    mem.write(0x3_0010, b"hello")
    rng = map_guest_virtual(mem, pt.cr3, 0x40_0010, 5, writable=False)
    assert isinstance(rng, GuestVirtualRange)
    assert (rng.gva, rng.size, len(rng)) == (0x40_0010, 5, 5)
    assert bytes(rng) == rng.read() == b"hello"
    assert rng.read(1, 3) == b"ell"
    assert rng.read(5) == b""
    assert rng.chunks == ((0x3_0010, 5),)
    assert "ro" in repr(rng)


def test_scattered_pages_out_of_order(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    # Virtual pages V, V+4K live far apart, the second one *below* the first.
    gva, high, low = 0xFFFF_8000_1234_5000, 0x70_0000, 0x3_0000
    pt.map(gva, high, PAGE_SIZE_4K)
    pt.map(gva + PAGE_SIZE_4K, low, PAGE_SIZE_4K)
    expected = painted(mem)
    rng = map_guest_virtual(mem, pt.cr3, gva + 0xFF8, 0x10, writable=True)
    assert rng.chunks == ((high + 0xFF8, 8), (low, 8))
    rng.write(bytes(range(1, 17)))
    expected[high + 0xFF8 : high + 0x1000] = bytes(range(1, 9))
    expected[low : low + 8] = bytes(range(9, 17))
    assert mem.read(0, RAM) == bytes(expected)
    assert rng.read() == bytes(range(1, 17))
    rng.write(b"\xee\xee", offset=7)  # straddles the two pages
    assert mem.read_u8(high + 0xFFF) == 0xEE and mem.read_u8(low) == 0xEE
    assert rng.read(6, 4) == bytes([7, 0xEE, 0xEE, 10])


def test_crossing_from_4k_into_2m(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x1F_F000, 0x5_0000, PAGE_SIZE_4K)
    pt.map(0x20_0000, 0x40_0000, PAGE_SIZE_2M, page_size=PAGE_SIZE_2M)
    expected = painted(mem)
    rng = map_guest_virtual(mem, pt.cr3, 0x1F_FFF0, 0x1010, writable=True)
    assert rng.chunks == ((0x5_0FF0, 0x10), (0x40_0000, 0x1000))
    data = bytes(i & 0xFF for i in range(0x1010))
    rng.write(data)
    expected[0x5_0FF0:0x5_1000] = data[:0x10]
    expected[0x40_0000:0x40_1000] = data[0x10:]
    assert mem.read(0, RAM) == bytes(expected)
    assert bytes(rng) == data


def test_physically_contiguous_pages_merge(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x60_0000, 0x60_0000, PAGE_SIZE_2M, page_size=PAGE_SIZE_2M)
    pt.map(0x5F_E000, 0x5F_E000, 0x2000)
    rng = map_guest_virtual(mem, pt.cr3, 0x5F_E800, 0x3000, writable=False)
    assert rng.chunks == ((0x5F_E800, 0x3000),)


def test_write_never_leaves_the_range(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x1000, 0x3_0000, 0x2000)
    expected = painted(mem)
    rng = map_guest_virtual(mem, pt.cr3, 0x1FF0, 0x20, writable=True)
    for data, offset in [(b"x" * 0x21, 0), (b"x", 0x20), (b"xy", 0x1F), (b"x", -1)]:
        with pytest.raises(ValueError):
            rng.write(data, offset)
    for offset, length in [(0, 0x21), (0x21, None), (-1, 1), (0x10, 0x11), (0, -1)]:
        with pytest.raises(ValueError):
            rng.read(offset, length)
    assert mem.read(0, RAM) == bytes(expected)
    rng.write(b"\x00" * 0x20)
    expected[0x3_0FF0:0x3_1010] = bytes(0x20)
    assert mem.read(0, RAM) == bytes(expected)
    rng.write(b"")  # empty write at any in-range offset is harmless
    rng.write(b"", 0x20)


def test_write_accepts_any_buffer(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x1000, 0x3_0000, 0x1000)
    rng = map_guest_virtual(mem, pt.cr3, 0x1000, 8, writable=True)
    rng.write(memoryview(bytearray(b"\x01\x00\x00\x00\x02\x00\x00\x00")).cast("I"))
    rng.write(bytearray(b"\x07"), 7)
    assert mem.read_u64(0x3_0000) == 0x07_00_00_02_00_00_00_01


def test_read_only_mapping_refuses_writes(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x1000, 0x3_0000, 0x1000)
    rng = map_guest_virtual(mem, pt.cr3, 0x1000, 0x10, writable=False)
    with pytest.raises(PermissionError):
        rng.write(b"x")
    assert mem.read_u8(0x3_0000) == 0


def test_fault_on_a_later_page_is_raised_up_front(
    mem: GuestPhysicalMemory, pt: PageTableBuilder
) -> None:
    pt.map(0x1000, 0x3_0000, 0x2000)
    pt.unmap(0x2000, 0x1000)
    with pytest.raises(PageFault) as info:
        map_guest_virtual(mem, pt.cr3, 0x1800, 0x1000, writable=False)
    assert (info.value.gva, info.value.reason, info.value.level) == (
        0x2000,
        PageFaultReason.NOT_PRESENT,
        1,
    )
    with pytest.raises(PageFault) as info:
        map_guest_virtual(mem, pt.cr3, 0x2004, 4, writable=False)
    assert info.value.gva == 0x2004  # the first byte accessed, as CR2 would hold


def test_write_rights_are_checked_for_writable_mappings(
    mem: GuestPhysicalMemory, pt: PageTableBuilder
) -> None:
    pt.map(0x1000, 0x3_0000, 0x2000)
    pt.protect(0x2000, 0x1000)
    map_guest_virtual(mem, pt.cr3, 0x1000, 0x2000, writable=False)
    with pytest.raises(PageFault) as info:
        map_guest_virtual(mem, pt.cr3, 0x1000, 0x2000, writable=True)
    assert (info.value.gva, info.value.reason) == (0x2000, PageFaultReason.NOT_WRITABLE)
    rng = map_guest_virtual(mem, pt.cr3, 0x1000, 0x2000, writable=True, wp=False)
    rng.write(b"ok", 0x1000)
    assert mem.read(0x3_1000, 2) == b"ok"


def test_user_rights(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x1000, 0x3_0000, 0x1000, user=True)
    pt.map(0x2000, 0x3_1000, 0x1000)
    map_guest_virtual(mem, pt.cr3, 0x1000, 0x1000, writable=True, user=True)
    with pytest.raises(PageFault) as info:
        map_guest_virtual(mem, pt.cr3, 0x1000, 0x1001, writable=False, user=True)
    assert (info.value.gva, info.value.reason) == (0x2000, PageFaultReason.NOT_USER)


def test_data_outside_ram(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x1000, RAM - 0x1000, 0x2000)
    map_guest_virtual(mem, pt.cr3, 0x1000, 0x1000, writable=True)
    with pytest.raises(PageFault) as info:
        map_guest_virtual(mem, pt.cr3, 0x1FFF, 2, writable=False)
    assert (info.value.gva, info.value.reason, info.value.level) == (
        0x2000,
        PageFaultReason.OUTSIDE_RAM,
        0,
    )


def test_non_canonical_tail(mem: GuestPhysicalMemory, pt: PageTableBuilder) -> None:
    pt.map(0x7FFF_FFFF_F000, 0x3_0000, 0x1000)
    with pytest.raises(PageFault) as info:
        map_guest_virtual(mem, pt.cr3, 0x7FFF_FFFF_FFF0, 0x20, writable=False)
    assert (info.value.gva, info.value.reason) == (
        0x8000_0000_0000,
        PageFaultReason.NON_CANONICAL,
    )


@pytest.mark.parametrize(
    ("gva", "size"), [(0x1000, 0), (0x1000, -1), (-1, 1), (0xFFFF_FFFF_FFFF_FFF0, 0x11)]
)
def test_bad_arguments(mem: GuestPhysicalMemory, pt: PageTableBuilder, gva: int, size: int) -> None:
    with pytest.raises(ValueError):
        map_guest_virtual(mem, pt.cr3, gva, size, writable=False)


# -- property: read-after-write through a scattered mapping -------------------------------

FRAMES = 16
DATA_BASE = 0x4_0000


@settings(max_examples=50, deadline=None)
@given(
    st.permutations(range(FRAMES)),
    st.integers(1, 6),
    st.data(),
)
def test_read_after_write_round_trips(order: list[int], pages: int, data: st.DataObject) -> None:
    mem = GuestPhysicalMemory(DATA_BASE + FRAMES * PAGE_SIZE_4K)
    pt = PageTableBuilder(mem, 0, DATA_BASE)
    gva = 0xFFFF_FFFF_8000_0000 - 2 * PAGE_SIZE_4K  # crosses a PD and a PDPT boundary
    frames = [DATA_BASE + f * PAGE_SIZE_4K for f in order[:pages]]
    for i, frame in enumerate(frames):
        pt.map(gva + i * PAGE_SIZE_4K, frame, PAGE_SIZE_4K)
    mem.fill(DATA_BASE, FRAMES * PAGE_SIZE_4K, PATTERN)

    span = pages * PAGE_SIZE_4K
    start = data.draw(st.integers(0, span - 1))
    size = data.draw(st.integers(1, span - start))
    rng = map_guest_virtual(mem, pt.cr3, gva + start, size, writable=True)
    assert sum(n for _, n in rng.chunks) == size
    offset = data.draw(st.integers(0, size))
    payload = data.draw(st.binary(max_size=size - offset))
    rng.write(payload, offset)

    assert rng.read(offset, len(payload)) == payload
    expected = bytearray([PATTERN]) * size
    expected[offset : offset + len(payload)] = payload
    assert rng.read() == bytes(expected)
    # Every byte of RAM outside the written span still holds the pattern.
    image = bytearray([PATTERN]) * (FRAMES * PAGE_SIZE_4K)
    for i, byte in enumerate(payload, start + offset):
        image[frames[i // PAGE_SIZE_4K] - DATA_BASE + i % PAGE_SIZE_4K] = byte
    assert mem.read(DATA_BASE, FRAMES * PAGE_SIZE_4K) == bytes(image)
