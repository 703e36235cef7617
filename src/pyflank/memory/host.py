"""The VMM's host-physical memory: guest RAM, and pages of the VMM's own the guest cannot reach.

A VMM keeps the structures the processor reads by physical address -- EPT tables above
all -- in memory its guest has no mapping of.  pyflank's guest RAM is host-physical
``[0, ram.size)`` (the very pages unicorn and KVM run the guest on); ``HostMemory`` adds
the VMM's own pages from ``VMM_BASE`` on, a reservation of anonymous memory whose pages
cost nothing until they are touched.  Tables may live in guest RAM too (as MSR and I/O
bitmaps do): every host-physical address resolves to one or the other.
"""

from __future__ import annotations

import threading
from typing import Final

from pyflank.memory.physical import PAGE_SIZE, GuestMemoryError, GuestPhysicalMemory

VMM_BASE: Final = 0x40_0000_0000  # 256 GiB: above any guest RAM, below a 39-bit MAXPHYADDR
DEFAULT_VMM_PAGES: Final = 4096  # 16 MiB reserved


class HostMemory:
    """Host-physical memory: ``ram`` at 0 and ``vmm_pages`` pages of the VMM's at ``VMM_BASE``.

    ``allocate_page`` hands out zeroed VMM pages (thread-safe: the vCPUs of a VM may share
    one); ``read_u64``/``write_u64``/``read``/``write`` take host-physical addresses.
    """

    def __init__(self, ram: GuestPhysicalMemory, vmm_pages: int = DEFAULT_VMM_PAGES) -> None:
        self.ram = ram
        self.vmm = GuestPhysicalMemory(vmm_pages * PAGE_SIZE)
        self._next = 0
        self._free: list[int] = []
        self._lock = threading.Lock()

    def allocate_page(self) -> int:
        """A zeroed page of VMM memory: its host-physical address."""
        with self._lock:
            if self._free:
                offset = self._free.pop()
            elif self._next < self.vmm.size:
                offset, self._next = self._next, self._next + PAGE_SIZE
            else:
                raise GuestMemoryError(VMM_BASE + self._next, PAGE_SIZE, self.vmm.size)
        self.vmm.fill(offset, PAGE_SIZE)
        return VMM_BASE + offset

    def free_page(self, hpa: int) -> None:
        """Give back a page ``allocate_page`` handed out."""
        if not self.is_vmm(hpa, PAGE_SIZE) or hpa % PAGE_SIZE:
            raise ValueError(f"{hpa:#x} is not a page of VMM memory")
        with self._lock:
            self._free.append(hpa - VMM_BASE)

    @property
    def pages_used(self) -> int:
        return self._next // PAGE_SIZE - len(self._free)

    def is_vmm(self, hpa: int, length: int = 1) -> bool:
        """Whether ``[hpa, hpa + length)`` is VMM memory (not guest RAM)."""
        return self.vmm.contains(hpa - VMM_BASE, length)

    def contains(self, hpa: int, length: int = 1) -> bool:
        return self.ram.contains(hpa, length) or self.is_vmm(hpa, length)

    def _resolve(self, hpa: int, length: int) -> tuple[GuestPhysicalMemory, int]:
        if hpa >= VMM_BASE:
            return self.vmm, hpa - VMM_BASE
        return self.ram, hpa

    def read_u64(self, hpa: int) -> int:
        memory, offset = self._resolve(hpa, 8)
        return memory.read_u64(offset)

    def write_u64(self, hpa: int, value: int) -> None:
        memory, offset = self._resolve(hpa, 8)
        memory.write_u64(offset, value)

    def read(self, hpa: int, length: int) -> bytes:
        memory, offset = self._resolve(hpa, length)
        return memory.read(offset, length)

    def write(self, hpa: int, data: bytes) -> None:
        memory, offset = self._resolve(hpa, len(data))
        memory.write(offset, data)
