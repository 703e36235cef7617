"""EPT in the processor model: the walked EPT of a VM entry, and what one instruction's
memory accesses make of it (an EPT violation, a misconfiguration, or nothing).

``EptModel`` walks the tree the EPTP points at (``memory.ept``) into an ``EptView``:
the outcome of every guest-physical page, as runs.  Engines enforce a view (a nested
page table on the software CPU, memory slots on KVM); when their mechanism stops an
access, ``analyse`` replays the instruction's accesses in the order the processor makes
them -- its fetch, then each data access, each through the guest's page walk (entries
read, accessed and dirty flags written) before the access itself -- and names the first
one the EPT forbids, with the SDM's exit qualification (access kind, the permissions the
page had, whether the guest-linear address is valid and whether the access was to the
translation or to a paging-structure entry, the linear address's own rights).  No access
forbidden means the engine stopped one the EPT allows (its mechanism is coarser): the
engine lets the instruction through.

The model is of a processor without a TLB: every access walks.
"""

from __future__ import annotations

import bisect
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.memory import (
    ACCESSED,
    DIRTY,
    GuestPhysicalMemory,
    PageFault,
    is_canonical,
)
from pyflank.memory.ept import EXECUTE, FETCH, READ, WRITE, EptReader, EptRun
from pyflank.memory.host import HostMemory
from pyflank.memory.paging import NX, PAGE_SIZE_4K, USER, WRITABLE, walk
from pyflank.processor.records import ExitInformation

if TYPE_CHECKING:
    from pyflank.intel_x64.accesses import Access

EPT_VIOLATION: Final = int(ExitReason.EPT_VIOLATION)
EPT_MISCONFIGURATION: Final = int(ExitReason.EPT_MISCONFIGURATION)
_MASK64 = (1 << 64) - 1
_PAGE = PAGE_SIZE_4K
# Exit-qualification bits (SDM Table "Exit Qualification for EPT Violations").
_GLA_VALID, _TRANSLATED = 1 << 7, 1 << 8
_USER_LINEAR, _WRITABLE_LINEAR, _XD_LINEAR = 1 << 9, 1 << 10, 1 << 11


class EptView:
    """The outcome of every guest-physical page under one EPTP, as sorted runs."""

    __slots__ = ("_starts", "eptp", "runs")

    def __init__(self, eptp: int, runs: list[EptRun]) -> None:
        self.eptp = eptp
        self.runs = runs
        self._starts = [run.start for run in runs]

    def at(self, gpa: int) -> EptRun | None:
        """The run holding ``gpa`` (None beyond the walked space)."""
        index = bisect.bisect_right(self._starts, gpa) - 1
        if index < 0:
            return None
        run = self.runs[index]
        return run if gpa < run.end else None

    def permissions(self, gpa: int) -> int:
        run = self.at(gpa)
        return 0 if run is None or run.misconfiguration else run.permissions

    def changes(self, previous: EptView | None) -> list[tuple[int, int]]:
        """The ``[start, end)`` ranges whose outcome differs from ``previous`` (all of it
        without one)."""
        if previous is None:
            return [(run.start, run.end) for run in self.runs]
        cuts = sorted({*self._starts, *previous._starts, self.runs[-1].end})
        changed: list[tuple[int, int]] = []
        for start, end in itertools.pairwise(cuts):
            mine, theirs = self.at(start), previous.at(start)
            same = mine is not None and theirs is not None and mine.same_outcome(theirs)
            if not same:
                if changed and changed[-1][1] == start:
                    changed[-1] = (changed[-1][0], end)
                else:
                    changed.append((start, end))
        return changed

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EptView):
            return NotImplemented
        return self.runs == other.runs

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"EptView(eptp={self.eptp:#x}, {len(self.runs)} runs)"


class EptModel:
    """Walks a vCPU's EPT at VM entry: the view the engine enforces until the next entry
    that loads an EPTP or follows an INVEPT."""

    def __init__(self, host: HostMemory, *, physical_width: int, execute_only: bool) -> None:
        self.reader = EptReader(host, physical_width=physical_width, execute_only=execute_only)
        self.limit = 1 << physical_width

    def view(self, eptp: int) -> EptView:
        try:
            runs = self.reader.runs(eptp, self.limit)
        except Exception as exc:  # noqa: BLE001 - tables the processor cannot read at all
            why = f"the EPT tables cannot be read ({exc})"
            runs = [EptRun(0, self.limit, 0, 0, why)]
        return EptView(eptp, runs)


# -- one instruction's accesses --------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class GuestPaging:
    """The guest's paging at the instruction: RAM, CR3, whether paging (IA-32e) is on, NXE."""

    memory: GuestPhysicalMemory
    cr3: int
    paging: bool
    nxe: bool = True


# -- the verdict -----------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Verdict:
    """What ``analyse`` found: ``exit`` is the exit the EPT makes (None: every access is
    allowed); ``explains``: whether one of the instruction's accesses touches the page the
    engine stopped on (if not, the engine stopped elsewhere, e.g. ahead of the instruction)."""

    exit: ExitInformation | None
    explains: bool


def analyse(
    view: EptView,
    paging: GuestPaging,
    accesses: Sequence[Access],
    stopped_gpa: int,
    length: int = 0,
) -> Verdict:
    """The first access the EPT forbids (a violation or a misconfiguration), in order;
    ``stopped_gpa``: where the engine stopped; ``length``: the instruction's length."""
    page = stopped_gpa & ~(_PAGE - 1)
    explains = False
    for access in accesses:
        for linear, size in _pieces(access.linear, access.size):
            found = _piece(view, paging, access.kind, linear, size, length)
            if found is None:
                return Verdict(None, explains)  # the guest's own paging faults first
            exit_info, touched = found
            explains = explains or page in touched
            if exit_info is not None:
                return Verdict(exit_info, True)
    return Verdict(None, explains)


def _pieces(linear: int, size: int) -> list[tuple[int, int]]:
    first = min(size, _PAGE - (linear & (_PAGE - 1)))
    pieces = [(linear, first)]
    if first < size:
        pieces.append(((linear + first) & _MASK64, size - first))
    return pieces


def _piece(
    view: EptView, paging: GuestPaging, kind: int, linear: int, size: int, length: int
) -> tuple[ExitInformation | None, set[int]] | None:
    """The exit one access to one page makes (with the pages it touched), None when the
    guest's paging does not map it (a page fault, not an EPT matter)."""
    touched: set[int] = set()
    rights = 0
    if paging.paging:
        if not is_canonical(linear):
            return None
        try:
            entries = walk(paging.memory, paging.cr3, linear, nxe=paging.nxe)
        except PageFault:
            return None
        for entry in entries:
            # The walk reads the entry, and writes it to set the accessed flag (and, at the
            # entry that maps the page, the dirty flag for a write) where they are clear.
            leaf = entry is entries[-1]
            sets_flags = not entry.value & ACCESSED or (
                leaf and kind & WRITE and not entry.value & DIRTY
            )
            needed = READ | WRITE if sets_flags else READ
            touched.add(entry.address & ~(_PAGE - 1))
            found = _check(view, entry.address, needed, linear, translated=False, length=length)
            if found is not None:
                return found, touched
        rights = _linear_rights([entry.value for entry in entries])
        level, _, value = entries[-1]
        span = 1 << (12 + 9 * (level - 1))
        frame = value & 0x000F_FFFF_FFFF_F000 & ~(span - 1)
        gpa = frame | linear & (span - 1)
    else:
        gpa = linear
    touched.add(gpa & ~(_PAGE - 1))
    needed = EXECUTE if kind == FETCH else kind
    found = _check(view, gpa, needed, linear, translated=True, length=length, rights=rights)
    return found, touched


def _linear_rights(values: list[int]) -> int:
    """Bits 9-11 of the qualification: the linear address's user, writable and XD rights."""
    bits = _USER_LINEAR | _WRITABLE_LINEAR
    for value in values:
        if not value & USER:
            bits &= ~_USER_LINEAR
        if not value & WRITABLE:
            bits &= ~_WRITABLE_LINEAR
        if value & NX:
            bits |= _XD_LINEAR
    return bits


def _check(
    view: EptView,
    gpa: int,
    needed: int,
    linear: int,
    *,
    translated: bool,
    length: int,
    rights: int = 0,
) -> ExitInformation | None:
    run = view.at(gpa)
    if run is not None and run.misconfiguration is not None:
        return ExitInformation(EPT_MISCONFIGURATION, 0, length, 0, 0, gpa)
    allowed = 0 if run is None else run.permissions
    if needed & ~allowed == 0:
        return None
    qualification = (needed & 7) | allowed << 3 | _GLA_VALID
    if translated:
        qualification |= _TRANSLATED | rights
    return ExitInformation(EPT_VIOLATION, qualification, length, 0, linear, gpa)


def violation(view: EptView, gpa: int, kind: int, length: int = 0) -> ExitInformation:
    """An EPT violation the engine reports without knowing the linear address (the
    guest-linear-address field is then invalid)."""
    run = view.at(gpa)
    if run is not None and run.misconfiguration is not None:
        return ExitInformation(EPT_MISCONFIGURATION, 0, length, 0, 0, gpa)
    allowed = 0 if run is None else run.permissions
    needed = EXECUTE if kind == FETCH else kind
    return ExitInformation(EPT_VIOLATION, (needed & 7) | allowed << 3, length, 0, 0, gpa)
