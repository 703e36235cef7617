"""EPT on the software CPU: what a nested page fault (``nested``) becomes.

The NPT stopped an access of the instruction at RIP, before it did anything.  The
processor's analysis (``processor.ept.analyse``) replays that instruction's accesses
against the EPT: the first one it forbids is the exit (an EPT violation with its
qualification and addresses, or an EPT misconfiguration).  When it forbids none, the NPT
was stricter than the EPT (an execute-only page, a guest page walk on a page the guest
may only read): the page is let through for one instruction, which is stepped.  When no
access of the instruction touches the page, QEMU stopped ahead of it -- it translates
blocks of several instructions, and an instruction fetch from a later page faults as the
block is translated, with RIP at the block's start -- so the guest is stepped one
instruction at a time up to the one that does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyflank.backends.emu import cpu_msrs, svm
from pyflank.intel_x64 import decode as dec
from pyflank.intel_x64.accesses import instruction_accesses
from pyflank.intel_x64.msrs import IA32_EFER
from pyflank.intel_x64.registers import CR0_PG, EFER_LMA, EFER_NXE
from pyflank.memory.ept import FETCH, READ, WRITE
from pyflank.processor.ept import GuestPaging, analyse, violation

if TYPE_CHECKING:
    from pyflank.backends.emu.capture import StateCapture
    from pyflank.backends.emu.engine import Engine
    from pyflank.memory import GuestPhysicalMemory
    from pyflank.processor import ExitInformation
    from pyflank.processor.ept import EptView

_Q = struct.Struct("<Q")
_FS, _GS = 10, 11  # in ``StateCapture.system``
_NPF_WRITE, _NPF_FETCH = 1 << 1, 1 << 4  # EXITINFO1 (the #NPF error code)


@dataclass(frozen=True, slots=True)
class StepOver:
    """Let the instruction at RIP run one step: ``widen`` its page first (None: stepping
    up to the instruction the fault belongs to)."""

    widen: int | None


def fault_address(engine: Engine) -> int:
    """The guest-physical address of the last nested page fault (VMCB EXITINFO2)."""
    value: int = _Q.unpack(engine.read_physical(svm.PAGE_FAULT_ADDRESS, 8))[0]
    return value


def nested_fault(
    engine: Engine,
    capture: StateCapture,
    memory: GuestPhysicalMemory,
    view: EptView,
    *,
    stepping: int | None,
) -> ExitInformation | StepOver:
    """The exit a nested page fault at RIP makes, or how to let the instruction through;
    ``stepping``: the RIP of the instruction being stepped (a fault inside a step belongs
    to it), else None."""
    gpa = fault_address(engine)
    regs, _, moved = capture.capture()
    if moved:  # (the capture consumed them: the exit record, or the next, reports them)
        capture.noted.update(moved)
    rip = regs[16]
    ins = dec.decode(engine.fetch(rip), rip)
    system = capture.system
    efer = cpu_msrs.read_msr(engine, IA32_EFER) & ~svm.EFER_SVME
    paging = GuestPaging(
        memory,
        cr3=system[1],
        paging=bool(system[0] & CR0_PG and efer & EFER_LMA),
        nxe=bool(efer & EFER_NXE),
    )
    bases = (0, 0, 0, 0, system[_FS], system[_GS])
    verdict = analyse(view, paging, instruction_accesses(ins, regs, bases), gpa, ins.len)
    if verdict.exit is not None:
        return verdict.exit
    if verdict.explains:
        return StepOver(gpa)
    if stepping == rip:
        # An access the decoder does not list (a descriptor-table read, ...): the EPT
        # decides on what the fault says, and there is no linear address to report.
        kind = _kind(capture)
        if view.permissions(gpa) & kind != kind:
            return violation(view, gpa, kind, ins.len)
        return StepOver(gpa)
    return StepOver(None)


def _kind(capture: StateCapture) -> int:
    error = capture.registers.error_code
    code = 0 if error is None else error.value
    if code & _NPF_FETCH:
        return FETCH
    return WRITE if code & _NPF_WRITE else READ
