"""GuestPhysicalMemory: bounds, endianness, host sharing and lifetime."""

from __future__ import annotations

import ctypes
import pickle
from collections.abc import Callable

import pytest

from pyflank.memory import GuestMemoryError, GuestPhysicalMemory

SIZE = 0x4000


@pytest.fixture
def mem() -> GuestPhysicalMemory:
    return GuestPhysicalMemory(SIZE)


@pytest.mark.parametrize("size", [0, -4096, 4095, 4097, 0x1800])
def test_size_must_be_positive_page_multiple(size: int) -> None:
    with pytest.raises(ValueError):
        GuestPhysicalMemory(size)


def test_starts_zeroed_and_view_covers_ram(mem: GuestPhysicalMemory) -> None:
    assert mem.size == SIZE
    assert len(mem.view) == SIZE
    assert not mem.view.readonly
    assert mem.read(0, SIZE) == bytes(SIZE)


def test_address_is_the_same_host_memory(mem: GuestPhysicalMemory) -> None:
    mem.write(0x123, b"guest")
    assert ctypes.string_at(mem.address + 0x123, 5) == b"guest"
    # A CPU writing through the raw pointer must be visible to the exit handler.
    ctypes.memmove(mem.address + 0x2000, b"host", 4)
    assert mem.read(0x2000, 4) == b"host"
    mem.view[0x3000] = 0x5A
    assert mem.read_u8(0x3000) == 0x5A


def test_write_accepts_all_buffer_kinds(mem: GuestPhysicalMemory) -> None:
    mem.write(0, b"\x01\x02")
    mem.write(2, bytearray(b"\x03\x04"))
    mem.write(4, memoryview(b"\x05\x06"))
    words = memoryview(bytearray(8)).cast("I")
    words[0], words[1] = 0x0A090807, 0x0E0D0C0B
    mem.write(6, words)  # non-byte format: counted in bytes, not items
    assert mem.read(0, 14) == bytes(range(1, 15))


def test_write_from_own_view_overlapping(mem: GuestPhysicalMemory) -> None:
    mem.write(0, bytes(range(16)))
    mem.write(4, mem.view[0:8])
    assert mem.read(0, 12) == bytes([0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7])


def test_scalars_are_little_endian(mem: GuestPhysicalMemory) -> None:
    mem.write_u16(0x10, 0x1122)
    mem.write_u32(0x20, 0x11223344)
    mem.write_u64(0x30, 0x1122334455667788)
    mem.write_u8(0x40, 0xFE)
    assert mem.read(0x10, 2) == bytes.fromhex("2211")
    assert mem.read(0x20, 4) == bytes.fromhex("44332211")
    assert mem.read(0x30, 8) == bytes.fromhex("8877665544332211")
    assert mem.read_u16(0x10) == 0x1122
    assert mem.read_u32(0x20) == 0x11223344
    assert mem.read_u64(0x30) == 0x1122334455667788
    assert mem.read_u8(0x40) == 0xFE
    # Unaligned scalars are legal on x86.
    mem.write_u64(0x1FFF, 0xFFFF_FFFF_FFFF_FFFF)
    assert mem.read_u64(0x1FFF) == 0xFFFF_FFFF_FFFF_FFFF


@pytest.mark.parametrize(("bits", "value"), [(8, 256), (16, 1 << 16), (32, 1 << 32), (64, 1 << 64)])
def test_scalar_write_rejects_values_that_do_not_fit(
    mem: GuestPhysicalMemory, bits: int, value: int
) -> None:
    write: Callable[[int, int], None] = getattr(mem, f"write_u{bits}")
    for bad in (value, -1):
        with pytest.raises(ValueError):
            write(0, bad)
    assert mem.read(0, 8) == bytes(8)
    write(0, value - 1)
    assert getattr(mem, f"read_u{bits}")(0) == value - 1


BAD_RANGES = [
    (-1, 1),
    (SIZE, 1),
    (SIZE - 1, 2),
    (SIZE + 0x1000, 0),
    ((1 << 64) - 1, 2),  # would wrap a 64-bit address
    (0, SIZE + 1),
    (0, -1),
]


@pytest.mark.parametrize(("gpa", "length"), BAD_RANGES)
def test_bulk_access_outside_ram(mem: GuestPhysicalMemory, gpa: int, length: int) -> None:
    with pytest.raises(GuestMemoryError) as info:
        mem.read(gpa, length)
    assert info.value.gpa == gpa and info.value.length == length
    assert f"{gpa:#x}" in str(info.value)
    with pytest.raises(GuestMemoryError):
        mem.fill(gpa, length, 0xFF)
    if length >= 0:
        with pytest.raises(GuestMemoryError):
            mem.write(gpa, b"\xff" * length)
    assert mem.read(0, SIZE) == bytes(SIZE)


@pytest.mark.parametrize("width", [1, 2, 4, 8])
@pytest.mark.parametrize("where", ["negative", "end", "straddle", "huge"])
def test_scalar_access_outside_ram(mem: GuestPhysicalMemory, width: int, where: str) -> None:
    gpa = {"negative": -width, "end": SIZE, "straddle": SIZE - width + 1, "huge": 1 << 64}[where]
    if where == "straddle" and width == 1:
        gpa = SIZE
    with pytest.raises(GuestMemoryError):
        getattr(mem, f"read_u{width * 8}")(gpa)
    with pytest.raises(GuestMemoryError):
        getattr(mem, f"write_u{width * 8}")(gpa, 0xFF)
    assert mem.read(0, SIZE) == bytes(SIZE)


def test_edges_inside_ram_are_fine(mem: GuestPhysicalMemory) -> None:
    mem.write_u64(SIZE - 8, 7)
    assert mem.read_u64(SIZE - 8) == 7
    assert mem.read(SIZE, 0) == b""
    assert mem.read(SIZE - 1, 1) == b"\x00"


def test_fill(mem: GuestPhysicalMemory) -> None:
    mem.fill(0x100, 0x20, 0xCC)
    assert mem.read(0xFF, 0x22) == b"\x00" + b"\xcc" * 0x20 + b"\x00"
    mem.fill(0x108, 8)
    assert mem.read_u64(0x108) == 0
    for bad in (-1, 256):
        with pytest.raises(ValueError):
            mem.fill(0, 1, bad)


def test_error_pickles() -> None:
    err = pickle.loads(pickle.dumps(GuestMemoryError(0x10, 4, 0x1000)))
    assert (err.gpa, err.length, err.size) == (0x10, 4, 0x1000)
    assert "0x10" in str(err)


def test_close_is_idempotent_and_final(mem: GuestPhysicalMemory) -> None:
    mem.close()
    mem.close()
    assert mem.closed
    with pytest.raises(ValueError):
        mem.read(0, 1)
    with pytest.raises(ValueError):
        mem.read_u64(0)
    with pytest.raises(ValueError):
        mem.fill(0, 1)


def test_close_refuses_while_a_slice_is_alive(mem: GuestPhysicalMemory) -> None:
    piece = mem.view[0:16]
    with pytest.raises(BufferError):
        mem.close()
    assert not mem.closed
    mem.write_u8(0, 1)  # still usable
    assert piece[0] == 1
    piece.release()
    mem.close()
    assert mem.closed


def test_context_manager() -> None:
    with GuestPhysicalMemory(4096) as mem:
        mem.write_u32(0, 1)
    assert mem.closed
