"""Guest-physical RAM: one anonymous host mapping shared by every backend.

The RAM lives in an anonymous ``mmap`` so the very same host pages can be handed to unicorn
(``mem_map_ptr``) and to KVM (``userspace_addr``): the exit handler, the software CPU and the
hardware CPU then all see one copy of guest memory and never need to synchronise.
"""

from __future__ import annotations

import ctypes
import mmap
import struct
from types import TracebackType

PAGE_SIZE = 4096

# Precompiled codecs keep the per-access cost to one C call; x86 is little-endian.
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")

Buffer = bytes | bytearray | memoryview


class GuestMemoryError(Exception):
    """An access that does not lie entirely inside guest RAM."""

    def __init__(self, gpa: int, length: int, size: int) -> None:
        self.gpa = gpa
        self.length = length
        self.size = size
        super().__init__(
            f"guest-physical access of {length} byte(s) at gpa {gpa:#x} "
            f"is outside guest RAM [0, {size:#x})"
        )

    def __reduce__(self) -> tuple[type[GuestMemoryError], tuple[int, int, int]]:
        # The default reduce would re-call __init__ with the message only.
        return (type(self), (self.gpa, self.length, self.size))


class GuestPhysicalMemory:
    """Zero-filled guest RAM covering guest-physical addresses ``[0, size)``.

    The ``write_uN`` helpers raise ``ValueError`` for values that do not fit in N bits
    (negative included) rather than masking: a silently truncated register or table entry
    is a far harder bug to find than an exception at the write.

    After :meth:`close` every accessor fails; backends that registered :attr:`address`
    with a CPU must drop that registration first, since the host pages go away.
    """

    def __init__(self, size: int) -> None:
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"guest RAM size must be a positive multiple of 4096, got {size}")
        self.size = size
        # Private and anonymous, in huge pages where the host allows them: a guest touching
        # its RAM costs a host page fault per 2 MiB instead of per 4 KiB (Linux on the
        # software CPU: tens of thousands of faults fewer), and the software CPU's accesses
        # miss the host TLB less.
        self._mmap = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        if hasattr(mmap, "MADV_HUGEPAGE"):
            self._mmap.madvise(mmap.MADV_HUGEPAGE)
        self.view = memoryview(self._mmap)
        # The ctypes object pins a buffer export; taking the address from a temporary lets
        # the export go at once so close() can unmap later.
        self.address: int = ctypes.addressof(ctypes.c_char.from_buffer(self._mmap))
        self._closed = False

    # -- bounds -------------------------------------------------------------------------

    def _check(self, gpa: int, length: int) -> None:
        # Python ints never wrap, so gpa + length also rejects "overflowing" ranges.
        if gpa < 0 or length < 0 or gpa + length > self.size:
            raise GuestMemoryError(gpa, length, self.size)

    def contains(self, gpa: int, length: int = 1) -> bool:
        """Whether ``[gpa, gpa + length)`` lies inside guest RAM."""
        return gpa >= 0 and length >= 0 and gpa + length <= self.size

    # -- bulk access --------------------------------------------------------------------

    def read(self, gpa: int, length: int) -> bytes:
        self._check(gpa, length)
        return self._mmap[gpa : gpa + length]

    def write(self, gpa: int, data: Buffer) -> None:
        if isinstance(data, memoryview) and (data.format != "B" or data.ndim != 1):
            data = data.cast("B")
        length = len(data)
        self._check(gpa, length)
        self.view[gpa : gpa + length] = data

    def find(self, pattern: bytes, start: int = 0, end: int | None = None) -> int:
        """The first guest-physical address in ``[start, end)`` where ``pattern`` begins,
        or -1 (searched in place: nothing of RAM is copied)."""
        if self._closed:
            raise ValueError("guest memory is closed")
        return self._mmap.find(pattern, start, self.size if end is None else end)

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        if not 0 <= byte <= 0xFF:
            raise ValueError(f"fill byte must be in [0, 255], got {byte}")
        self._check(gpa, length)
        if self._closed:
            raise ValueError("guest memory is closed")
        # memset avoids building a length-sized bytes object for large fills.
        ctypes.memset(self.address + gpa, byte, length)

    # -- scalar access ------------------------------------------------------------------

    def read_u8(self, gpa: int) -> int:
        if gpa < 0 or gpa >= self.size:
            raise GuestMemoryError(gpa, 1, self.size)
        return self.view[gpa]

    def read_u16(self, gpa: int) -> int:
        if gpa < 0 or gpa + 2 > self.size:
            raise GuestMemoryError(gpa, 2, self.size)
        value: int = _U16.unpack_from(self.view, gpa)[0]
        return value

    def read_u32(self, gpa: int) -> int:
        if gpa < 0 or gpa + 4 > self.size:
            raise GuestMemoryError(gpa, 4, self.size)
        value: int = _U32.unpack_from(self.view, gpa)[0]
        return value

    def read_u64(self, gpa: int) -> int:
        if gpa < 0 or gpa + 8 > self.size:
            raise GuestMemoryError(gpa, 8, self.size)
        value: int = _U64.unpack_from(self.view, gpa)[0]
        return value

    def write_u8(self, gpa: int, value: int) -> None:
        if not 0 <= value <= 0xFF:
            raise ValueError(f"value {value:#x} does not fit in 8 bits")
        if gpa < 0 or gpa >= self.size:
            raise GuestMemoryError(gpa, 1, self.size)
        self.view[gpa] = value

    def write_u16(self, gpa: int, value: int) -> None:
        if not 0 <= value <= 0xFFFF:
            raise ValueError(f"value {value:#x} does not fit in 16 bits")
        if gpa < 0 or gpa + 2 > self.size:
            raise GuestMemoryError(gpa, 2, self.size)
        _U16.pack_into(self.view, gpa, value)

    def write_u32(self, gpa: int, value: int) -> None:
        if not 0 <= value <= 0xFFFF_FFFF:
            raise ValueError(f"value {value:#x} does not fit in 32 bits")
        if gpa < 0 or gpa + 4 > self.size:
            raise GuestMemoryError(gpa, 4, self.size)
        _U32.pack_into(self.view, gpa, value)

    def write_u64(self, gpa: int, value: int) -> None:
        if not 0 <= value <= 0xFFFF_FFFF_FFFF_FFFF:
            raise ValueError(f"value {value:#x} does not fit in 64 bits")
        if gpa < 0 or gpa + 8 > self.size:
            raise GuestMemoryError(gpa, 8, self.size)
        _U64.pack_into(self.view, gpa, value)

    # -- lifetime -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Unmap the RAM. Idempotent.

        Raises ``BufferError`` (and stays open) while someone still holds a slice of
        :attr:`view`, because unmapping under a live buffer would be a use-after-free.
        """
        if self._closed:
            return
        self.view.release()
        try:
            self._mmap.close()
        except BufferError:
            self.view = memoryview(self._mmap)
            raise
        self._closed = True

    def __enter__(self) -> GuestPhysicalMemory:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"host {self.address:#x}"
        return f"GuestPhysicalMemory(size={self.size:#x}, {state})"
