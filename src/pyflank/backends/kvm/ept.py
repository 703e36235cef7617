"""EPT on KVM, as far as memory slots express it.

KVM knows guest memory only as slots: a range of guest-physical pages on host memory,
readable and writable, or read-only (``KVM_MEM_READONLY``).  So the EPT view becomes a
layout of slots: pages the EPT lets be read and written are an ordinary slot, pages it
lets be read only a read-only slot, pages it allows nothing (or misconfigures) no slot at
all.  An access KVM cannot complete from a slot -- a write to a read-only one, anything
to a hole -- comes to user space as MMIO, and becomes the EPT violation (or
misconfiguration) it stands for, with the qualification and addresses the processor's
analysis gives (``processor.ept``).  What slots cannot say is refused, naming the gap:
a page that may be read but not executed, or executed only ('ept_execute'), and pages the
EPT maps elsewhere than their own address.

An MMIO exit is the middle of an instruction: KVM finishes it at the next KVM_RUN.  If
the EPT then allows the access (the handler lifted it) and the handler left the guest
where it was, the access is completed against guest RAM -- the value read is memory's,
the value written lands in it -- and the guest goes on after the instruction, which ran
once; otherwise it completes as MMIO (reads all ones, writes go nowhere) under the
handler's plan.
"""

from __future__ import annotations

import ctypes
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyflank.backends.kvm.policy import GAPS
from pyflank.intel_x64 import decode as vmx_decode
from pyflank.intel_x64.accesses import instruction_accesses
from pyflank.intel_x64.registers import CR0_PG, EFER_LMA, EFER_NXE
from pyflank.memory.ept import EXECUTE, READ, WRITE
from pyflank.processor.ept import EPT_VIOLATION, GuestPaging, analyse
from pyflank.processor.ept import violation as bare_violation

if TYPE_CHECKING:
    from pyflank.backends.kvm.device import KvmVm
    from pyflank.backends.kvm.structs import KvmSregs
    from pyflank.memory import GuestPhysicalMemory
    from pyflank.processor import ExitInformation
    from pyflank.processor.ept import EptView

KVM_MEM_READONLY = 1 << 1
_PAGE = 0x1000


class EptGap(ValueError):
    """The EPT asks for something memory slots cannot do."""


@dataclass(frozen=True, slots=True)
class Slot:
    gpa: int
    size: int
    flags: int


def slot_layout(view: EptView | None, ram_size: int) -> list[Slot]:
    """The memory slots that make KVM enforce ``view`` over guest RAM (None: all of it)."""
    if view is None:
        return [Slot(0, ram_size, 0)]
    slots: list[Slot] = []
    for run in view.runs:
        if run.start >= ram_size:
            break
        end = min(run.end, ram_size)
        allowed = 0 if run.misconfiguration else run.permissions
        if not allowed & READ:
            if allowed & EXECUTE:
                raise _gap("ept_execute", f"execute-only pages at {run.start:#x}")
            continue  # a hole: every access exits
        if not allowed & EXECUTE:
            raise _gap("ept_execute", f"pages at {run.start:#x} may be read but not executed")
        if run.delta:
            raise EptGap(
                f"the EPT maps guest-physical {run.start:#x} to host-physical "
                f"{run.start + run.delta:#x}: the KVM backend runs identity translations only"
            )
        flags = 0 if allowed & WRITE else KVM_MEM_READONLY
        if slots and slots[-1].flags == flags and slots[-1].gpa + slots[-1].size == run.start:
            slots[-1] = Slot(slots[-1].gpa, end - slots[-1].gpa, flags)
        else:
            slots.append(Slot(run.start, end - run.start, flags))
    return slots


def _gap(name: str, what: str) -> EptGap:
    return EptGap(f"{what}: KVM gap '{name}': {GAPS[name]}")


class MemorySlots:
    """The slots of one KVM VM over ``memory``: slot 0 is all of RAM until EPT cuts it."""

    def __init__(self, vm: KvmVm, memory: GuestPhysicalMemory) -> None:
        self.vm = vm
        self.memory = memory
        self._slots: dict[Slot, int] = {Slot(0, memory.size, 0): 0}
        self._free: list[int] = []
        self._next = 1

    def apply(self, view: EptView | None) -> None:
        """Lay the slots out as ``view`` says (refused, unchanged, if slots cannot say it)."""
        wanted = slot_layout(view, self.memory.size)
        stale = [slot for slot in self._slots if slot not in wanted]
        for slot in stale:  # KVM refuses overlapping slots: the old ones go first
            number = self._slots.pop(slot)
            self.vm.set_user_memory_region(number, slot.gpa, 0, 0)
            self._free.append(number)
        for slot in wanted:
            if slot in self._slots:
                continue
            number = self._free.pop() if self._free else self._take()
            address = self.memory.address + slot.gpa
            self.vm.set_user_memory_region(number, slot.gpa, slot.size, address, slot.flags)
            self._slots[slot] = number

    def _take(self) -> int:
        number, self._next = self._next, self._next + 1
        return number


def mmio_exit(
    view: EptView,
    memory: GuestPhysicalMemory,
    sregs: KvmSregs,
    regs: Sequence[int],
    code: bytes,
    start: int,
    gpa: int,
    write: bool,
) -> ExitInformation:
    """The EPT exit an MMIO exit at guest-physical ``gpa`` stands for, with the linear
    address where the instruction at ``start`` (its bytes: ``code``) gives it."""
    ins = vmx_decode.decode(code, start)
    kind = WRITE if write else READ
    fallback = bare_violation(view, gpa, kind, ins.len)
    if ins.is_invalid:
        return fallback
    paging = GuestPaging(
        memory,
        cr3=sregs.cr3,
        paging=bool(sregs.cr0 & CR0_PG and sregs.efer & EFER_LMA),
        nxe=bool(sregs.efer & EFER_NXE),
    )
    bases = (0, 0, 0, 0, sregs.fs.base, sregs.gs.base)
    verdict = analyse(view, paging, instruction_accesses(ins, regs, bases), gpa, ins.len)
    found = verdict.exit
    # KVM's word on the address stands: the analysis only adds what KVM does not say.
    if found is None or found.guest_physical_address != gpa:
        return fallback
    if found.reason == EPT_VIOLATION and not found.qualification & kind:
        return fallback
    return found


@dataclass
class PendingAccess:
    """The guest-physical access an MMIO exit left for KVM to complete."""

    gpa: int
    length: int
    write: bool

    def allowed(self, view: EptView | None, memory: GuestPhysicalMemory) -> bool:
        """Whether the EPT now lets the access reach guest RAM (never with EPT off: then
        the access was to no RAM at all)."""
        if view is None or not memory.contains(self.gpa, self.length):
            return False
        needed = WRITE if self.write else READ
        first, last = view.permissions(self.gpa), view.permissions(self.gpa + self.length - 1)
        return first & last & needed == needed

    def back_with_ram(self, memory: GuestPhysicalMemory, data: int) -> None:
        """Complete the access against guest RAM: the read's data from it, the write into it
        (``data``: the address of the exit's data bytes)."""
        if self.write:
            memory.write(self.gpa, ctypes.string_at(data, self.length))
        else:
            ctypes.memmove(data, memory.read(self.gpa, self.length), self.length)
