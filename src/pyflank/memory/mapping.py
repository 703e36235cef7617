"""Guest-virtual buffers for exit handlers.

A handler that receives a guest pointer maps the whole buffer first; every page is walked up
front so that a bad pointer faults before the handler has read or written anything, the way
Bareflank's map functions fail before returning a span. The result is a snapshot of the
translation: later changes to the guest's page tables are not seen by an existing range.
"""

from __future__ import annotations

from pyflank.memory.paging import PageFault, PageFaultReason, translate
from pyflank.memory.physical import Buffer, GuestPhysicalMemory

_ADDRESS_SPACE = 1 << 64


class GuestVirtualRange:
    """``size`` bytes of guest-virtual memory at ``gva``, backed by guest-physical runs.

    Build one with :func:`map_guest_virtual`; offsets are relative to ``gva``.
    """

    def __init__(
        self,
        memory: GuestPhysicalMemory,
        gva: int,
        size: int,
        chunks: tuple[tuple[int, int], ...],
        writable: bool,
    ) -> None:
        self._memory = memory
        self.gva = gva
        self.size = size
        self.chunks = chunks
        self.writable = writable

    def __len__(self) -> int:
        return self.size

    def __bytes__(self) -> bytes:
        return self.read()

    def __repr__(self) -> str:
        mode = "rw" if self.writable else "ro"
        return f"GuestVirtualRange(gva={self.gva:#x}, size={self.size:#x}, {mode})"

    def read(self, offset: int = 0, length: int | None = None) -> bytes:
        if length is None:
            length = self.size - offset
        self._check(offset, length)
        return b"".join(self._memory.read(gpa, n) for gpa, n in self._runs(offset, length))

    def write(self, data: Buffer, offset: int = 0) -> None:
        if not self.writable:
            raise PermissionError(f"{self!r} was mapped read-only")
        view = memoryview(data).cast("B")
        self._check(offset, len(view))
        done = 0
        for gpa, n in self._runs(offset, len(view)):
            self._memory.write(gpa, view[done : done + n])
            done += n

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"[{offset:#x}, +{length:#x}) does not fit in a {self.size:#x}-byte range"
            )

    def _runs(self, offset: int, length: int) -> list[tuple[int, int]]:
        """The (gpa, length) pieces of chunks that cover ``[offset, offset + length)``."""
        runs: list[tuple[int, int]] = []
        start = 0
        for gpa, n in self.chunks:
            if length == 0:
                break
            if offset < start + n:
                skip = max(offset - start, 0)
                take = min(n - skip, length)
                runs.append((gpa + skip, take))
                offset += take
                length -= take
            start += n
        return runs


def map_guest_virtual(
    memory: GuestPhysicalMemory,
    cr3: int,
    gva: int,
    size: int,
    *,
    writable: bool,
    user: bool = False,
    wp: bool = True,
    nxe: bool = True,
) -> GuestVirtualRange:
    """Translate every page of ``[gva, gva + size)`` for a read (or write) access.

    Raises :class:`PageFault` for the first failing page; its ``gva`` is the first byte of
    the range on that page (``gva`` itself, or the page's base), as CR2 would report it. A
    page whose data lies outside guest RAM faults with ``OUTSIDE_RAM`` at level 0.
    ``ValueError`` for a non-positive size or a range running past the top of the 64-bit
    address space.
    """
    if size <= 0:
        raise ValueError(f"cannot map a guest-virtual range of size {size}")
    if gva < 0 or gva + size > _ADDRESS_SPACE:
        raise ValueError(f"[{gva:#x}, +{size:#x}) is not inside the 64-bit address space")
    chunks: list[tuple[int, int]] = []
    cursor, end = gva, gva + size
    while cursor < end:
        t = translate(memory, cr3, cursor, write=writable, user=user, wp=wp, nxe=nxe)
        # Consume the rest of this page in one step, whatever its size.
        n = min(t.page_size - (cursor & (t.page_size - 1)), end - cursor)
        if not memory.contains(t.gpa, n):
            raise PageFault(cursor, PageFaultReason.OUTSIDE_RAM)
        if chunks and chunks[-1][0] + chunks[-1][1] == t.gpa:
            chunks[-1] = (chunks[-1][0], chunks[-1][1] + n)
        else:
            chunks.append((t.gpa, n))
        cursor += n
    return GuestVirtualRange(memory, gva, size, tuple(chunks), writable)
