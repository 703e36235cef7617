"""How the software CPU enforces EPT: an AMD nested page table (NPT) under the SVM guest.

QEMU walks an NPT for every guest-physical access of an SVM guest with nested paging on
-- the guest's own page-table reads included -- and a forbidden one is a #VMEXIT(NPF)
before the instruction has done anything, with the guest-physical address in EXITINFO2:
the precise stop an EPT violation needs.  So the VMCB of every full entry points its
nested CR3 at a table built here from the processor's ``EptView``: a page the EPT lets
be read is present, writable if the EPT allows writes, execute-disabled unless it allows
fetches.  What an NPT cannot say (execute-only pages; QEMU also walks guest paging
structures as writes) is left stricter, and the fault handler lets the access through
when the EPT allows it (``widen``, for one instruction).

The table lives above guest RAM in the engine's private space: a PML4, one PDPT, a page
directory per GiB and a page table per 2 MiB of RAM, at fixed places.  A 2 MiB region
whose pages all have the same outcome is one large page.  The engine's private region is
mapped too, as one 1 GiB page: pyflank never lets QEMU's #VMEXIT run (the hooks take
every intercept first), so nested paging stays on for the VM-entry stub; and for the same
reason it stays on once it was: without EPT every page of RAM is allowed everything.

With nested paging on, unicorn's own translation of a guest address (``uc_vmem_read``,
behind ``Engine.fetch``) may walk into a nested fault, which QEMU raises by jumping out of
the call -- through the Python hook that made it.  So once the table exists, instruction
bytes are read through the guest's paging in Python (``fetch``), from guest RAM.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Final

from unicorn import unicorn_const as uc_const
from unicorn import x86_const as x86

from pyflank.backends.emu import cpu_msrs, svm
from pyflank.backends.emu.engine import MAX_INSTRUCTION, Engine, EngineError
from pyflank.intel_x64.paging import guest_linear
from pyflank.memory import GuestPhysicalMemory
from pyflank.memory.ept import EXECUTE, READ, WRITE

if TYPE_CHECKING:
    from pyflank.processor.ept import EptView

NPT_BASE: Final = svm.HOST_BASE + 0x10_0000
_PAGE, _LARGE, _GIB = 0x1000, 0x20_0000, 0x4000_0000
_P, _RW, _US, _ACCESSED, _PS = 1 << 0, 1 << 1, 1 << 2, 1 << 5, 1 << 7
_NX = 1 << 63
_TABLE = _P | _RW | _US | _ACCESSED
_Q = struct.Struct("<Q")
_PAGES = struct.Struct("<512Q")
_EFER = 0xC000_0080


def npt_entry(permissions: int, frame: int, *, large: bool = False) -> int:
    """The NPT entry giving ``frame`` what the EPT ``permissions`` allow, or stricter."""
    if not permissions & READ:
        return 0  # not present: every access stops (execute-only too)
    entry = frame | _P | _US | _ACCESSED
    if permissions & WRITE:
        entry |= _RW
    if not permissions & EXECUTE:
        entry |= _NX
    return entry | _PS if large else entry


class NestedPaging:
    """The NPT of one engine over ``ram_size`` bytes of guest RAM."""

    def __init__(self, engine: Engine, memory: GuestPhysicalMemory) -> None:
        self.engine = engine
        self.memory = memory
        ram_size = self.ram_size = memory.size
        self.view: EptView | None = None  # what the table enforces now (None: EPT off)
        self._gibs = -(-ram_size // _GIB)
        self._regions = -(-ram_size // _LARGE)
        self._mapped = False
        self._split: set[int] = set()  # regions whose directory entry points at a table
        self._widened: set[int] = set()  # pages allowed more than the EPT says, for a step

    @property
    def cr3(self) -> int | None:
        """The nested CR3 for the VMCB, or None while EPT was never on."""
        return NPT_BASE if self._mapped else None

    def _directory(self, gib: int) -> int:
        return NPT_BASE + (2 + gib) * _PAGE

    def _table(self, region: int) -> int:
        return NPT_BASE + (2 + self._gibs + region) * _PAGE

    def apply(self, view: EptView | None) -> None:
        """Enforce ``view`` from the next instruction on (None: EPT off)."""
        if view is None:
            if self.view is not None:
                self.view = None
                for region in range(self._regions):
                    self._write_open(region)
                self._split.clear()
                self.flush()
            return
        if not self._mapped:
            self._map()
        previous, self.view = self.view, view
        pieces: dict[int, list[tuple[int, int]]] = {}
        for start, end in view.changes(previous):
            end = min(end, self.ram_size)
            while start < end:
                region = start // _LARGE
                stop = min(end, (region + 1) * _LARGE)
                pieces.setdefault(region, []).append((start, stop))
                start = stop
        for page in self._widened:  # back to what the EPT says
            pieces.setdefault(page // _LARGE, []).append((page, page + _PAGE))
        self._widened.clear()
        for region, ranges in sorted(pieces.items()):
            self._update_region(view, region, ranges)
        if pieces:
            self.flush()

    def _update_region(self, view: EptView, region: int, ranges: list[tuple[int, int]]) -> None:
        """Bring 2 MiB ``region`` up to ``view`` where ``ranges`` changed: entry by entry
        in a table it has already (a region hooked once is likely hooked again), else the
        whole region."""
        start = region * _LARGE
        if region not in self._split:
            self._write_region(view, region)
            return
        table = self._table(region)
        for first, end in ranges:
            entries = [npt_entry(self._page(view, gpa), gpa) for gpa in range(first, end, _PAGE)]
            where = table + (first - start) // _PAGE * 8
            self.engine.write_physical(where, struct.pack(f"<{len(entries)}Q", *entries))

    def _slot(self, region: int) -> int:
        return self._directory(region * _LARGE // _GIB) + (region % 512) * 8

    def _write_open(self, region: int) -> None:
        """Everything allowed on 2 MiB ``region`` (EPT off)."""
        entry = region * _LARGE | _P | _RW | _US | _ACCESSED | _PS
        self.engine.write_physical(self._slot(region), _Q.pack(entry))

    def _map(self) -> None:
        pages = 3 + self._gibs + self._regions
        self.engine.map_private(NPT_BASE, pages * _PAGE)
        pdpt = NPT_BASE + _PAGE
        self.engine.write_physical(NPT_BASE, _Q.pack(pdpt | _TABLE))
        entries = [self._directory(gib) | _TABLE for gib in range(self._gibs)]
        self.engine.write_physical(pdpt, struct.pack(f"<{len(entries)}Q", *entries))
        # The private region: its own PDPT (under the PML4 entry of HOST_BASE), a 1 GiB page.
        private = self._table(self._regions)
        self.engine.write_physical(
            NPT_BASE + (svm.HOST_BASE >> 39 & 0x1FF) * 8, _Q.pack(private | _TABLE)
        )
        host_page = svm.HOST_BASE & ~(_GIB - 1) | _P | _RW | _US | _ACCESSED | _PS
        self.engine.write_physical(private + (svm.HOST_BASE >> 30 & 0x1FF) * 8, _Q.pack(host_page))
        self._mapped = True
        self.engine.fetch = self.fetch  # type: ignore[method-assign]

    def fetch(self, rip: int) -> bytes:
        """Up to 15 instruction bytes at guest-virtual ``rip``, read through the guest's
        paging in guest RAM (``Engine.fetch``'s contract, without unicorn's translation)."""
        e = self.engine
        efer = cpu_msrs.read_msr(e, _EFER) & ~svm.EFER_SVME
        cr0, cr3 = e.read(x86.UC_X86_REG_CR0), e.read(x86.UC_X86_REG_CR3)
        linear = guest_linear(self.memory, cr0=cr0, cr3=cr3, efer=efer)
        return linear.read_available(rip, MAX_INSTRUCTION)

    def _write_region(self, view: EptView, region: int, *, table: bool = False) -> None:
        """The directory entry of 2 MiB ``region``: a large page where every page has the
        same outcome (unless ``table``), else a page table."""
        start = region * _LARGE
        slot = self._slot(region)
        run = view.at(start)
        uniform = not table and run is not None and run.end >= start + _LARGE
        if uniform and run is not None:
            permissions = 0 if run.misconfiguration else run.permissions
            if permissions & READ and run.delta:
                raise _remapped(start, run.delta)
            self.engine.write_physical(slot, _Q.pack(npt_entry(permissions, start, large=True)))
            self._split.discard(region)
            return
        entries = [npt_entry(self._page(view, gpa), gpa) for gpa in _pages(start)]
        self.engine.write_physical(self._table(region), _PAGES.pack(*entries))
        self.engine.write_physical(slot, _Q.pack(self._table(region) | _TABLE))
        self._split.add(region)

    def _page(self, view: EptView, gpa: int) -> int:
        if gpa >= self.ram_size:
            return 0
        run = view.at(gpa)
        if run is None or run.misconfiguration:
            return 0
        if run.permissions & READ and run.delta:
            raise _remapped(gpa, run.delta)
        return run.permissions

    def widen(self, gpa: int) -> None:
        """Let the next accesses to ``gpa``'s page through, whatever they are, until the
        next ``restore`` (one instruction's worth: the fault handler steps it)."""
        if self.view is None:
            return
        if gpa >= self.ram_size:
            raise EngineError(f"the guest accessed guest-physical {gpa:#x}, which is not RAM")
        region = gpa // _LARGE
        if region not in self._split:
            self._write_region(self.view, region, table=True)
        page = gpa & ~(_PAGE - 1)
        entry = page | _P | _RW | _US | _ACCESSED
        self.engine.write_physical(
            self._table(region) + (page % _LARGE) // _PAGE * 8, _Q.pack(entry)
        )
        self._widened.add(page)
        self.flush()

    def restore(self) -> None:
        """Back to what the EPT says for every page ``widen`` let through."""
        if not self._widened or self.view is None:
            self._widened.clear()
            return
        for page in sorted(self._widened):
            self._update_region(self.view, page // _LARGE, [(page, page + _PAGE)])
        self._widened.clear()
        self.flush()

    @property
    def widened(self) -> bool:
        return bool(self._widened)

    def flush(self) -> None:
        """Drop the engine's cached translations (its TLB), which hold NPT permissions."""
        self.engine.uc.ctl(uc_const.UC_CTL_TLB_FLUSH, uc_const.UC_CTL_IO_WRITE)


def _pages(start: int) -> range:
    return range(start, start + _LARGE, _PAGE)


def _remapped(gpa: int, delta: int) -> EngineError:
    return EngineError(
        f"the EPT maps guest-physical {gpa:#x} to host-physical {gpa + delta:#x}: the "
        "software CPU runs identity EPT translations only"
    )
