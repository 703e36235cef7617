"""The memory accesses one instruction makes, in the order the processor makes them (its
fetch, then its reads, then its writes), from iced-x86's instruction information: what
the EPT analysis replays, and how a memory hook learns a write's size."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from iced_x86 import (
    Instruction,
    InstructionInfoFactory,
    MemorySizeExt,
    Mnemonic,
    OpAccess,
    UsedMemory,
)

from pyflank.intel_x64 import decode as dec
from pyflank.memory.ept import FETCH, READ, WRITE  # the access kinds

_MASK64 = (1 << 64) - 1
_READS = frozenset({OpAccess.READ, OpAccess.COND_READ})
_WRITES = frozenset({OpAccess.WRITE, OpAccess.COND_WRITE})
_BOTH = frozenset({OpAccess.READ_WRITE, OpAccess.READ_COND_WRITE})
_REP_STRING = frozenset(
    {
        Mnemonic.MOVSB, Mnemonic.MOVSW, Mnemonic.MOVSD, Mnemonic.MOVSQ, Mnemonic.STOSB,
        Mnemonic.STOSW, Mnemonic.STOSD, Mnemonic.STOSQ, Mnemonic.LODSB, Mnemonic.LODSW,
        Mnemonic.LODSD, Mnemonic.LODSQ, Mnemonic.CMPSB, Mnemonic.CMPSW, Mnemonic.CMPSD,
        Mnemonic.CMPSQ, Mnemonic.SCASB, Mnemonic.SCASW, Mnemonic.SCASD, Mnemonic.SCASQ,
        Mnemonic.INSB, Mnemonic.INSW, Mnemonic.INSD, Mnemonic.OUTSB, Mnemonic.OUTSW,
        Mnemonic.OUTSD,
    }
)  # fmt: skip
_ADDRESS_BITS = {1: 16, 2: 32, 3: 64}  # iced CodeSize -> address width
_info_factory = InstructionInfoFactory()


class Access(NamedTuple):
    """One memory access of an instruction: ``kind`` is READ, WRITE, READ | WRITE or FETCH."""

    linear: int
    size: int
    kind: int


def instruction_accesses(
    ins: Instruction, regs: Sequence[int], segment_bases: Sequence[int]
) -> list[Access]:
    """The memory accesses of ``ins`` in the order the processor makes them: its fetch,
    then its reads (read-modify-writes included), then its writes.  ``regs``: the GPRs by
    SDM number; ``segment_bases``: ES..GS.  A REP string instruction makes one
    iteration's accesses, none with RCX = 0."""
    accesses = [Access(ins.ip, ins.len, FETCH)]
    repeated = ins.has_rep_prefix or ins.has_repne_prefix
    if ins.mnemonic in _REP_STRING and repeated and regs[1] == 0:
        return accesses
    reads: list[Access] = []
    writes: list[Access] = []
    for used in _info_factory.info(ins).used_memory():
        access = used.access
        if access in _READS:
            kind, into = READ, reads
        elif access in _WRITES:
            kind, into = WRITE, writes
        elif access in _BOTH:
            kind, into = READ | WRITE, reads
        else:
            continue  # LEA, prefetches: no access
        size = MemorySizeExt.size(used.memory_size) or MemorySizeExt.size(ins.memory_size) or 1
        into.append(Access(_linear(used, ins, regs, segment_bases), size, kind))
    return accesses + reads + writes


def _linear(used: UsedMemory, ins: Instruction, regs: Sequence[int], bases: Sequence[int]) -> int:
    address = int(used.displacement)
    base, index = used.base, used.index
    if base in dec.GPR:
        address += regs[dec.GPR[base][0]]
    elif base != 0:  # RIP-relative
        address += ins.next_ip
    if index in dec.GPR:
        address += regs[dec.GPR[index][0]] * used.scale
    address &= (1 << _ADDRESS_BITS.get(used.address_size, 64)) - 1
    segment = dec.SEGMENT.get(used.segment)
    if segment is not None:
        address += bases[segment]
    return address & _MASK64
