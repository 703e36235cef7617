"""KVM_EXIT_IO: the doorbell VMCALL, an I/O-instruction exit, or a platform device access.

This is the backend's hottest path (a doorbell loop, a guest hammering a port), so it
reads the exit as one 64-bit word of ``kvm_run`` (direction, size, port, count) instead
of four ctypes fields, finds the instruction in the ``IoSites`` cache with one dict
lookup, and uses only plain ints: IntFlag/IntEnum arithmetic costs microseconds on a
nested KVM.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import Any

from pyflank.backends.base import PortIo
from pyflank.backends.kvm import abi
from pyflank.backends.kvm import owed as debt
from pyflank.backends.kvm.device import KvmVcpuFd
from pyflank.backends.kvm.exit_record import ExitRecords
from pyflank.backends.kvm.io_sites import IoSite, IoSites, access_of
from pyflank.backends.kvm.owed import Owed
from pyflank.backends.kvm.regs import VcpuRegisters
from pyflank.backends.kvm.structs import ExitIo, KvmRun
from pyflank.memory import GuestPhysicalMemory
from pyflank.processor import ExitPolicy, ExitRecord

_OUT = abi.KVM_EXIT_IO_OUT
# kvm_run's I/O exit as 64-bit words: [direction, size, port, count] then data_offset.
IO_WORD = (KvmRun.exit.offset + ExitIo.direction.offset) // 8
DATA_OFFSET_WORD = (KvmRun.exit.offset + ExitIo.data_offset.offset) // 8
_ACCESS = 0xFFFF_FFFF
_SIZE = 0xFF << 8
ONE_BYTE_OUT_MASK = ~(0xFFFF << 16)  # all but the port
ONE_BYTE_OUT = 1 << 32 | 1 << 8 | _OUT


class IoExits:
    """The KVM_EXIT_IO handling of one vCPU; what the exit leaves KVM owing goes to ``owed``."""

    def __init__(
        self,
        fd: KvmVcpuFd,
        registers: VcpuRegisters,
        records: ExitRecords,
        owed: Owed,
        ports: PortIo,
        memory: GuestPhysicalMemory,
        *,
        doorbell_port: int | None,
        complete: Callable[[], None],
    ) -> None:
        self.records = records
        self.registers = registers
        self._sdm_order, self._doorbell_order = records.sdm_order, records.doorbell_order
        self.owed = owed
        self.ports = ports
        self.memory = memory
        self._complete = complete
        self._io_write = ports.io_write
        self.sites = IoSites(memory)
        self._lookup = self.sites.lookup
        # The ctypes views of the registers never change: bound once, read per exit.
        self._regs, self._sregs = registers.regs, registers.sregs
        page = (ctypes.c_char * fd.mmap_size).from_address(ctypes.addressof(fd.run_page))
        self._bytes = memoryview(page).cast("B")  # the data of port I/O is in the mapping too
        self._words = self._bytes.cast("Q")
        self._run_address = ctypes.addressof(page)
        # What the exit controls say about port I/O (SDM 25.1.3).
        self._all_exit = False
        self._bitmaps: tuple[int, int] | None = None
        # The doorbell's exit word, any size: an OUT of one item to the port.
        self._doorbell = (
            -1 if doorbell_port is None else 1 << 32 | access_of(doorbell_port, 0, out=True)
        )
        self.doorbell_word = self._doorbell  # for the native loop

    def set_policy(self, policy: ExitPolicy) -> None:
        self._all_exit = policy.io_unconditional
        self._bitmaps = policy.io_bitmaps

    def exit(self) -> ExitRecord | None:
        """One KVM_EXIT_IO: an exit record, or None when a device took the access."""
        io = self._words[IO_WORD]
        regs = self._regs
        owed = self.owed
        if io & ~_SIZE == self._doorbell:  # the guest's VMCALL; RDI carries what RDX would
            access = io & _ACCESS
            site = self._lookup((regs.rip, self._sregs.cr3, access)) or self._site(access, 1)
            # An OUT that KVM did not emulate is skipped on the next KVM_RUN if RIP is unchanged.
            owed.kind = debt.UNLESS_MOVED if site.pending else debt.NOTHING
            owed.at = site.start
            info, order = site.vmcall, self._doorbell_order
        elif self._all_exit or (
            self._bitmaps is not None and self._bitmap_says_exit(io >> 16 & 0xFFFF, io >> 8 & 0xFF)
        ):
            access = io & _ACCESS
            site = self._lookup((regs.rip, self._sregs.cr3, access)) or self._site(access, io >> 32)
            # KVM still owes an IN its data (or a VMX-path OUT its skip): complete, then impose.
            owed.kind = debt.COMPLETION if site.pending else debt.NOTHING
            info, order = site.io, self._sdm_order
        else:
            if io & ONE_BYTE_OUT_MASK == ONE_BYTE_OUT:  # the commonest device access
                self._io_write(io >> 16 & 0xFFFF, 1, self._bytes[self._words[DATA_OFFSET_WORD]])
            else:
                self._device(io >> 16 & 0xFFFF, io >> 8 & 0xFF, io >> 32, io & 0xFF == _OUT)
            return None
        # ``ExitRecords.make``, spelled out: a frame costs.
        registers = self.registers
        values = registers.read_gprs()
        guest = None
        image = registers.sregs_image()
        if image != registers.sregs_seen:
            guest = self.records.moved(image)
        # An ExitRecord's fields as a plain tuple: the processor unpacks it by position.
        record: Any = (info, order(values), site.start, values[17], guest, "", -1)
        return record  # type: ignore[no-any-return]

    def _site(self, access: int, count: int) -> IoSite:
        """Where the instruction is, decoded on a cache miss (callers try ``_lookup`` first)."""
        regs, sregs = self._regs, self._sregs
        site = self._lookup((regs.rip, sregs.cr3, access))
        if site is None:
            site = self.sites.find(regs, sregs, access=access, count=count,
                                   complete=self._complete)  # fmt: skip
        return site

    def _bitmap_says_exit(self, port: int, size: int) -> bool:
        """SDM 26.1.3: exit if any byte of the access has its bit set, or the range wraps."""
        bitmaps = self._bitmaps
        assert bitmaps is not None
        if port + size > 0x10000:
            return True
        memory = self.memory
        for p in range(port, port + size):
            gpa = bitmaps[p >> 15] + (p & 0x7FFF) // 8
            if not memory.contains(gpa) or memory.read_u8(gpa) >> (p % 8) & 1:
                return True
        return False

    def _device(self, port: int, size: int, count: int, out: bool) -> None:
        """No exit: the platform's devices take the access, as the hardware bus would."""
        offset = self._words[DATA_OFFSET_WORD]
        if size == 1 and count == 1 and not out:  # one-byte reads: no bytes objects
            self._bytes[offset] = self.ports.io_read(port, 1) & 0xFF
            return
        address = self._run_address + offset
        if out:
            data = ctypes.string_at(address, size * count)
            for i in range(0, size * count, size):
                self.ports.io_write(port, size, int.from_bytes(data[i : i + size], "little"))
        else:
            data = b"".join(
                self.ports.io_read(port, size).to_bytes(size, "little") for _ in range(count)
            )
            ctypes.memmove(address, data, len(data))
