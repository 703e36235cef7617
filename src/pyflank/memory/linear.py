"""Guest-linear memory, as the guest's own paging maps it: the one reader every part of
pyflank uses (event delivery, descriptor reads, instruction fetch, handler buffers).

``GuestLinear`` is made from the paging state of one moment (paging on, IA-32e mode,
CR0.WP, EFER.NXE, CR3; ``intel_x64.paging.guest_linear`` reads them from the registers):
without paging a linear address is physical; in IA-32e mode the 4-level walk of
``paging`` applies (32-bit and PAE paging are not modelled).  Accesses that cross pages
are walked page by page, so a fault names the first byte that faulted, as CR2 would.
"""

from __future__ import annotations

from collections.abc import Iterator

from pyflank.memory.mapping import GuestVirtualRange, map_guest_virtual
from pyflank.memory.paging import PageFault, PageFaultReason, translate
from pyflank.memory.physical import Buffer, GuestMemoryError, GuestPhysicalMemory

_PAGE = 0x1000
_MASK64 = (1 << 64) - 1


class PagingNotModelled(ValueError):
    """The guest uses a paging mode pyflank does not walk (32-bit or PAE paging)."""


class GuestLinear:
    """``memory`` through the paging of one moment: ``paging`` on, in IA-32e mode
    (``long_mode``) with the tables at ``cr3``, ``wp`` (CR0.WP) and ``nxe`` (EFER.NXE)."""

    __slots__ = ("cr3", "memory", "nxe", "paging", "wp")

    def __init__(
        self,
        memory: GuestPhysicalMemory,
        *,
        paging: bool,
        cr3: int = 0,
        long_mode: bool = True,
        wp: bool = True,
        nxe: bool = True,
    ) -> None:
        self.memory = memory
        self.cr3 = cr3
        self.paging = paging
        self.wp = wp
        self.nxe = nxe
        if paging and not long_mode:
            raise PagingNotModelled("32-bit and PAE paging are not modelled (IA-32e mode only)")

    def physical(
        self, address: int, *, write: bool = False, user: bool = False, execute: bool = False
    ) -> int:
        """The guest-physical address of one access to ``address``; ``PageFault`` if the
        paging refuses it (``OUTSIDE_RAM`` for a page not backed by RAM)."""
        address &= _MASK64
        if not self.paging:
            gpa = address
        else:
            gpa = translate(
                self.memory, self.cr3, address,
                write=write, user=user, execute=execute, wp=self.wp, nxe=self.nxe,
            ).gpa  # fmt: skip
        if not self.memory.contains(gpa):
            raise PageFault(address, PageFaultReason.OUTSIDE_RAM)
        return gpa

    def read(self, address: int, size: int, *, user: bool = False, execute: bool = False) -> bytes:
        """``size`` bytes at ``address``; ``PageFault`` at the first byte that faults."""
        out = bytearray()
        for gpa, n in self._pieces(address, size, write=False, user=user, execute=execute):
            out += self.memory.read(gpa, n)
        return bytes(out)

    def read_available(self, address: int, size: int, *, execute: bool = True) -> bytes:
        """Up to ``size`` bytes at ``address``, fewer where the mapping ends (code fetch)."""
        out = bytearray()
        try:
            for gpa, n in self._pieces(address, size, write=False, user=False, execute=execute):
                out += self.memory.read(gpa, n)
        except (PageFault, GuestMemoryError):
            pass
        return bytes(out)

    def read_before(self, address: int, size: int) -> bytes:
        """Up to ``size`` bytes ending at ``address`` (fewer if the page below is unmapped)."""
        start = max(address - size, 0)
        data = self.read_available(start, address - start)
        if len(data) == address - start:
            return data
        start = max(start, (address - 1) & ~(_PAGE - 1))
        data = self.read_available(start, address - start)
        return data if len(data) == address - start else b""

    def write(self, address: int, data: Buffer, *, user: bool = False) -> None:
        """Write ``data`` at ``address``: every page is walked before anything is written."""
        view = memoryview(data).cast("B")
        done = 0
        pieces = list(self._pieces(address, len(view), write=True, user=user, execute=False))
        for gpa, n in pieces:
            self.memory.write(gpa, view[done : done + n])
            done += n

    def map(
        self, address: int, size: int, *, writable: bool, user: bool = False
    ) -> GuestVirtualRange:
        """A mapped buffer (every page walked now): what handlers read and write."""
        if not self.paging:
            if size <= 0 or not self.memory.contains(address, size):
                raise PageFault(address, PageFaultReason.OUTSIDE_RAM)
            return GuestVirtualRange(self.memory, address, size, ((address, size),), writable)
        return map_guest_virtual(
            self.memory, self.cr3, address, size, writable=writable, user=user,
            wp=self.wp, nxe=self.nxe,
        )  # fmt: skip

    def _pieces(
        self, address: int, size: int, *, write: bool, user: bool, execute: bool
    ) -> Iterator[tuple[int, int]]:
        """(gpa, length) of each page's part of ``[address, address + size)``, in order."""
        while size > 0:
            n = min(size, _PAGE - (address & (_PAGE - 1)))
            gpa = self.physical(address, write=write, user=user, execute=execute)
            if not self.memory.contains(gpa, n):
                raise PageFault(address, PageFaultReason.OUTSIDE_RAM)
            yield gpa, n
            address = (address + n) & _MASK64
            size -= n
