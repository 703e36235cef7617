"""GuestLinear: guest memory as the guest's paging maps it, the one reader pyflank uses."""

from __future__ import annotations

import pytest

from pyflank.memory import (
    PAGE_SIZE_4K,
    GuestLinear,
    GuestPhysicalMemory,
    PageFault,
    PageFaultReason,
    PageTableBuilder,
    PagingNotModelled,
)

RAM = 0x40_0000
TABLES = (0x1000, 0x2_0000)
LONG_MODE = {"paging": True, "long_mode": True, "wp": True, "nxe": True}


@pytest.fixture
def mem() -> GuestPhysicalMemory:
    return GuestPhysicalMemory(RAM)


@pytest.fixture
def pt(mem: GuestPhysicalMemory) -> PageTableBuilder:
    return PageTableBuilder(mem, *TABLES)


def test_without_paging_linear_is_physical(mem: GuestPhysicalMemory) -> None:
    linear = GuestLinear(mem, paging=False, cr3=0xDEAD000)
    linear.write(0x3_0FFE, b"abcd")
    assert mem.read(0x3_0FFE, 4) == b"abcd"
    assert linear.read(0x3_0FFF, 2) == b"bc"
    assert linear.physical(0x1234) == 0x1234
    with pytest.raises(PageFault) as fault:
        linear.read(RAM - 2, 4)
    assert fault.value.reason is PageFaultReason.OUTSIDE_RAM
    assert fault.value.gva == RAM  # the first byte that faulted


def test_long_mode_pages_are_walked_page_by_page(
    mem: GuestPhysicalMemory, pt: PageTableBuilder
) -> None:
    gva = 0xFFFF_8000_0000_0000
    pt.map(gva, 0x3_0000, PAGE_SIZE_4K)
    pt.map(gva + PAGE_SIZE_4K, 0x5_0000, PAGE_SIZE_4K, writable=False)
    linear = GuestLinear(mem, cr3=pt.cr3, **LONG_MODE)
    mem.write(0x3_0FFC, b"wxyz")
    mem.write(0x5_0000, b"1234")
    assert linear.read(gva + 0xFFC, 8) == b"wxyz1234"
    assert linear.physical(gva + 0x1003) == 0x5_0003
    with pytest.raises(PageFault) as fault:
        linear.write(gva + 0xFFE, b"!!!!")  # the second page is read-only
    assert fault.value.reason is PageFaultReason.NOT_WRITABLE
    assert fault.value.gva == gva + 0x1000
    assert mem.read(0x3_0FFE, 2) == b"yz"  # nothing written: every page walked first


def test_reads_for_code_stop_where_the_mapping_ends(
    mem: GuestPhysicalMemory, pt: PageTableBuilder
) -> None:
    gva = 0x40_0000_0000
    pt.map(gva, 0x3_0000, PAGE_SIZE_4K)
    mem.write(0x3_0FF8, bytes(range(8)))
    linear = GuestLinear(mem, cr3=pt.cr3, **LONG_MODE)
    assert linear.read_available(gva + 0xFF8, 15) == bytes(range(8))
    assert linear.read_available(gva + 0x1000, 15) == b""
    assert linear.read_before(gva + 0x1000, 4) == bytes(range(4, 8))
    assert linear.read_before(gva + 2, 15) == mem.read(0x3_0000, 2)  # nothing below


def test_handler_buffers_are_mapped_through_the_same_walk(
    mem: GuestPhysicalMemory, pt: PageTableBuilder
) -> None:
    gva = 0x7000_0000
    pt.map(gva, 0x3_0000, PAGE_SIZE_4K)
    buffer = GuestLinear(mem, cr3=pt.cr3, **LONG_MODE).map(gva + 8, 16, writable=True)
    buffer.write(b"x" * 16)
    assert mem.read(0x3_0008, 16) == b"x" * 16
    physical = GuestLinear(mem, paging=False).map(0x3_0000, 8, writable=False)
    assert physical.read() == mem.read(0x3_0000, 8)


def test_32_bit_paging_is_named_not_walked(mem: GuestPhysicalMemory) -> None:
    with pytest.raises(PagingNotModelled):
        GuestLinear(mem, paging=True, cr3=0x1000, long_mode=False)
