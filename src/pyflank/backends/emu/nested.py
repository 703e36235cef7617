"""How the software CPU enforces EPT: an AMD nested page table (NPT) under the SVM guest.

QEMU walks an NPT for every guest-physical access of an SVM guest with nested paging on
-- the guest's own page-table reads included -- and a forbidden one is a #VMEXIT(NPF)
before the instruction has done anything, with the guest-physical address in EXITINFO2:
the precise stop an EPT violation needs.  So the VMCB of every full entry points its
nested CR3 at a table built here from the processor's ``EptView``: a page the EPT lets
be read and executed is present, writable if the EPT allows writes; any other page is
not present.  What an NPT does not say (a page that may be read but not executed, or
executed only; QEMU also walks guest paging structures as writes) is left stricter, and
the fault handler lets the access through when the EPT allows it (``widen``, for one
instruction).  Execute-disable is never used: see ``npt_entry``.

A table lives above guest RAM in the engine's private space: a PML4, one PDPT, a page
directory per GiB and a page table per 2 MiB of RAM, at fixed places.  A 2 MiB region
whose pages all have the same outcome is one large page.  The engine's private region is
mapped too, as one 1 GiB page: pyflank never lets QEMU's #VMEXIT run (the hooks take
every intercept first), so nested paging stays on for the VM-entry stub; and for the same
reason it stays on once it was: without EPT every page of RAM is allowed everything.

There is one table per EPT pointer the guest ran under (a few, the least recently used
made over when more are needed): a handler switching between EPT views switches tables,
which costs a VM entry, not a table rewrite.

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
from pyflank.intel_x64.msrs import IA32_EFER
from pyflank.intel_x64.paging import guest_linear
from pyflank.memory import GuestPhysicalMemory
from pyflank.memory.ept import EXECUTE, READ, WRITE

if TYPE_CHECKING:
    from pyflank.processor.ept import EptView

NPT_BASE: Final = svm.HOST_BASE + 0x10_0000
_PAGE, _LARGE, _GIB = 0x1000, 0x20_0000, 0x4000_0000
_P, _RW, _US, _ACCESSED, _PS = 1 << 0, 1 << 1, 1 << 2, 1 << 5, 1 << 7
_TABLE = _P | _RW | _US | _ACCESSED
_Q = struct.Struct("<Q")
_PAGES = struct.Struct("<512Q")


def npt_entry(permissions: int, frame: int, *, large: bool = False) -> int:
    """The NPT entry giving ``frame`` what the EPT ``permissions`` allow, or stricter."""
    if permissions & (READ | EXECUTE) != READ | EXECUTE:
        # Not present: every access stops.  Never execute-disable: QEMU's nested walk of a
        # guest paging structure on an execute-disabled page dereferences a null pointer
        # (get_hphys, "*prot &= ~PAGE_EXEC" with no prot), and any page can be one.
        return 0
    entry = frame | _P | _US | _ACCESSED
    if permissions & WRITE:
        entry |= _RW
    return entry | _PS if large else entry


_TREES = 8  # nested page tables kept, one per EPT pointer


class _Tree:
    """One nested page table at ``base``: what view it enforces, which regions it split."""

    def __init__(self, engine: Engine, base: int, ram_size: int) -> None:
        self.engine = engine
        self.base = base
        self.ram_size = ram_size
        self.gibs = -(-ram_size // _GIB)
        self.regions = -(-ram_size // _LARGE)
        self.view: EptView | None = None  # None: everything allowed (EPT off)
        self.split: set[int] = set()  # regions whose directory entry points at a table
        pdpt = base + _PAGE
        engine.write_physical(base, _Q.pack(pdpt | _TABLE))
        entries = [self._directory(gib) | _TABLE for gib in range(self.gibs)]
        engine.write_physical(pdpt, struct.pack(f"<{len(entries)}Q", *entries))
        # The private region: its own PDPT (under the PML4 entry of HOST_BASE), a 1 GiB page.
        private = self._table(self.regions)
        engine.write_physical(base + (svm.HOST_BASE >> 39 & 0x1FF) * 8, _Q.pack(private | _TABLE))
        host_page = svm.HOST_BASE & ~(_GIB - 1) | _P | _RW | _US | _ACCESSED | _PS
        engine.write_physical(private + (svm.HOST_BASE >> 30 & 0x1FF) * 8, _Q.pack(host_page))
        self.open()

    @staticmethod
    def pages(ram_size: int) -> int:
        return 3 + -(-ram_size // _GIB) + -(-ram_size // _LARGE)

    def _directory(self, gib: int) -> int:
        return self.base + (2 + gib) * _PAGE

    def _table(self, region: int) -> int:
        return self.base + (2 + self.gibs + region) * _PAGE

    def _slot(self, region: int) -> int:
        return self._directory(region * _LARGE // _GIB) + (region % 512) * 8

    def open(self) -> None:
        """Everything allowed everywhere (EPT off)."""
        for region in range(self.regions):
            entry = region * _LARGE | _P | _RW | _US | _ACCESSED | _PS
            self.engine.write_physical(self._slot(region), _Q.pack(entry))
        self.split.clear()
        self.view = None

    def apply(self, view: EptView, widened: set[int]) -> bool:
        """Enforce ``view`` (and undo the ``widened`` pages); whether anything changed."""
        previous, self.view = self.view, view
        pieces: dict[int, list[tuple[int, int]]] = {}
        for start, end in view.changes(previous):
            end = min(end, self.ram_size)
            while start < end:
                region = start // _LARGE
                stop = min(end, (region + 1) * _LARGE)
                pieces.setdefault(region, []).append((start, stop))
                start = stop
        for page in widened:
            pieces.setdefault(page // _LARGE, []).append((page, page + _PAGE))
        for region, ranges in sorted(pieces.items()):
            self.update_region(view, region, ranges)
        return bool(pieces)

    def update_region(self, view: EptView, region: int, ranges: list[tuple[int, int]]) -> None:
        """Bring 2 MiB ``region`` up to ``view`` where ``ranges`` changed: entry by entry
        in a table it has already (a region hooked once is likely hooked again), else the
        whole region."""
        start = region * _LARGE
        if region not in self.split:
            self.write_region(view, region)
            return
        table = self._table(region)
        for first, end in ranges:
            entries = [npt_entry(self._page(view, gpa), gpa) for gpa in range(first, end, _PAGE)]
            where = table + (first - start) // _PAGE * 8
            self.engine.write_physical(where, struct.pack(f"<{len(entries)}Q", *entries))

    def write_region(self, view: EptView, region: int, *, table: bool = False) -> None:
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
            self.split.discard(region)
            return
        entries = [npt_entry(self._page(view, gpa), gpa) for gpa in _pages(start)]
        self.engine.write_physical(self._table(region), _PAGES.pack(*entries))
        self.engine.write_physical(slot, _Q.pack(self._table(region) | _TABLE))
        self.split.add(region)

    def _page(self, view: EptView, gpa: int) -> int:
        if gpa >= self.ram_size:
            return 0
        run = view.at(gpa)
        if run is None or run.misconfiguration:
            return 0
        if run.permissions & READ and run.delta:
            raise _remapped(gpa, run.delta)
        return run.permissions

    def widen(self, page: int) -> None:
        """Everything allowed on ``page`` (in a page table of its region)."""
        region = page // _LARGE
        if region not in self.split:
            assert self.view is not None
            self.write_region(self.view, region, table=True)
        entry = page | _P | _RW | _US | _ACCESSED
        where = self._table(region) + (page % _LARGE) // _PAGE * 8
        self.engine.write_physical(where, _Q.pack(entry))


class NestedPaging:
    """The nested page tables of one engine over ``memory`` (guest RAM)."""

    def __init__(self, engine: Engine, memory: GuestPhysicalMemory) -> None:
        self.engine = engine
        self.memory = memory
        self.ram_size = memory.size
        self.view: EptView | None = None  # what the current table enforces (None: EPT off)
        self._trees: dict[int | None, _Tree] = {}  # by EPT pointer (None: EPT off), LRU first
        self._tree: _Tree | None = None
        self._widened: set[int] = set()  # pages allowed more than the EPT says, for a step

    @property
    def cr3(self) -> int | None:
        """The nested CR3 for the VMCB, or None while EPT was never on."""
        return None if self._tree is None else self._tree.base

    def apply(self, view: EptView | None) -> None:
        """Enforce ``view`` from the next instruction on (None: EPT off)."""
        if view is None and self._tree is None:
            return
        self.view = view
        key = None if view is None else view.eptp
        tree = self._trees.pop(key, None) or self._new_tree()
        self._trees[key] = tree  # most recently used last
        old, widened = self._tree, self._widened
        self._widened = set()
        if old is not tree:
            self._undo(old, widened)
            widened = set()
        changed = tree.apply(view, widened) if view is not None else False
        if tree is not old or changed:
            self.flush()
        self._tree = tree

    @staticmethod
    def _undo(tree: _Tree | None, widened: set[int]) -> None:
        """``widened`` pages of ``tree`` back to what its view says."""
        if tree is None or tree.view is None:
            return
        for page in sorted(widened):
            tree.update_region(tree.view, page // _LARGE, [(page, page + _PAGE)])

    def _new_tree(self) -> _Tree:
        if self._tree is None:  # the first: room for every table, mapped once
            self.engine.map_private(NPT_BASE, _TREES * _Tree.pages(self.ram_size) * _PAGE)
            self.engine.fetch = self.fetch  # type: ignore[method-assign]
        if len(self._trees) < _TREES:
            base = NPT_BASE + len(self._trees) * _Tree.pages(self.ram_size) * _PAGE
            return _Tree(self.engine, base, self.ram_size)
        oldest = next(iter(self._trees))
        tree = self._trees.pop(oldest)
        tree.open()  # made over: written afresh for its new view
        return tree

    def fetch(self, rip: int) -> bytes:
        """Up to 15 instruction bytes at guest-virtual ``rip``, read through the guest's
        paging in guest RAM (``Engine.fetch``'s contract, without unicorn's translation)."""
        e = self.engine
        efer = cpu_msrs.read_msr(e, IA32_EFER) & ~svm.EFER_SVME
        cr0, cr3 = e.read(x86.UC_X86_REG_CR0), e.read(x86.UC_X86_REG_CR3)
        linear = guest_linear(self.memory, cr0=cr0, cr3=cr3, efer=efer)
        return linear.read_available(rip, MAX_INSTRUCTION)

    def widen(self, gpa: int) -> None:
        """Let the next accesses to ``gpa``'s page through, whatever they are, until the
        next ``restore`` (one instruction's worth: the fault handler steps it)."""
        if self.view is None or self._tree is None:
            return
        if gpa >= self.ram_size:
            raise EngineError(f"the guest accessed guest-physical {gpa:#x}, which is not RAM")
        page = gpa & ~(_PAGE - 1)
        self._tree.widen(page)
        self._widened.add(page)
        self.flush()

    def restore(self) -> None:
        """Back to what the EPT says for every page ``widen`` let through."""
        widened, self._widened = self._widened, set()
        if widened:
            self._undo(self._tree, widened)
            self.flush()

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
