"""The #PF error code of a guest page fault, which unicorn does not report.

The access that faulted is reconstructed from CR2 and the instruction: a fetch if CR2 lies
in the instruction's bytes; otherwise a write if the instruction only writes memory, or
if it reads and writes and the read would succeed; otherwise a read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from iced_x86 import InstructionInfoFactory, OpAccess
from unicorn import x86_const as x86

from pyflank.intel_x64.decode import decode
from pyflank.intel_x64.registers import CR0_WP, EFER_NXE
from pyflank.memory import PageFault, PageFaultReason, translate
from pyflank.processor.delivery import page_fault_error

if TYPE_CHECKING:
    from pyflank.backends.emu.engine import Engine
    from pyflank.memory import GuestPhysicalMemory

_MAX_INSTRUCTION = 15
_INFO = InstructionInfoFactory()
_READS = frozenset(
    {OpAccess.READ, OpAccess.COND_READ, OpAccess.READ_WRITE, OpAccess.READ_COND_WRITE}
)
_WRITES = frozenset(
    {OpAccess.WRITE, OpAccess.COND_WRITE, OpAccess.READ_WRITE, OpAccess.READ_COND_WRITE}
)


def page_fault_error_code(
    engine: Engine, memory: GuestPhysicalMemory, efer: int, rip: int, system: Sequence[int]
) -> int:
    """The error code of the #PF the instruction at ``rip`` just raised (``system``: CR0,
    CR3, CR4, DR7, then the selectors ES..GS)."""
    cr2 = engine.read(x86.UC_X86_REG_CR2)
    cr0, cr3, cs = system[0], system[1], system[5]
    user = cs & 3 == 3
    wp = bool(cr0 & CR0_WP)
    nxe = bool(efer & EFER_NXE)
    fetch = rip <= cr2 < rip + _MAX_INSTRUCTION
    attempts: tuple[tuple[bool, bool], ...]
    if fetch:
        attempts = ((False, True),)
    else:
        reads, writes = memory_accesses(engine.fetch(rip), rip)
        attempts = ((False, False), (True, False)) if reads or not writes else ((True, False),)
    reason = PageFaultReason.NOT_PRESENT
    write = False
    for write, execute in attempts:
        try:
            translate(memory, cr3, cr2, write=write, user=user, execute=execute, wp=wp, nxe=nxe)
        except PageFault as fault:
            reason = fault.reason
            break
    return page_fault_error(reason, write=write, fetch=fetch and nxe, user=user)


def memory_accesses(code: bytes, rip: int) -> tuple[bool, bool]:
    """(reads memory, writes memory) of the instruction at the start of ``code``."""
    ins = decode(code, rip)
    reads = writes = False
    for used in _INFO.info(ins).used_memory():
        access = used.access
        reads = reads or access in _READS
        writes = writes or access in _WRITES
    return reads, writes
