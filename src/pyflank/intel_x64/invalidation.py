"""The operands of an INVEPT or INVVPID exit (SDM "VM-Exit Instruction-Information Field as
Used for INVEPT, INVPCID, and INVVPID", and the instructions' descriptors).

The instruction-information field names the register that holds the invalidation type
(bits 31:28) and the pieces of the memory operand that holds the 128-bit descriptor:
scaling (1:0), address size (9:7), segment (17:15), index register (21:18, invalid when
bit 22 is set), base register (26:23, invalid when bit 27 is set); the displacement is
the exit qualification.  ``decode`` turns those, the general registers and the segment
bases into the request; the descriptor is read from guest-linear memory by the caller.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import IntEnum

_MASK64 = (1 << 64) - 1
_DESCRIPTOR = struct.Struct("<QQ")


class InveptType(IntEnum):
    SINGLE_CONTEXT = 1
    ALL_CONTEXT = 2


class InvvpidType(IntEnum):
    INDIVIDUAL_ADDRESS = 0
    SINGLE_CONTEXT = 1
    ALL_CONTEXT = 2
    SINGLE_CONTEXT_RETAINING_GLOBALS = 3


@dataclass(frozen=True, slots=True)
class MemoryOperand:
    """The memory operand of the instruction-information field, with its displacement."""

    scaling: int  # log2 of the scale
    address_size: int  # 0: 16-bit, 1: 32-bit, 2: 64-bit
    segment: int  # ES=0 ... GS=5
    index: int | None
    base: int | None
    register2: int  # the register of bits 31:28 (the invalidation type)
    displacement: int

    @classmethod
    def decode(cls, information: int, qualification: int) -> MemoryOperand:
        return cls(
            scaling=information & 0x3,
            address_size=information >> 7 & 0x7,
            segment=information >> 15 & 0x7,
            index=None if information >> 22 & 1 else information >> 18 & 0xF,
            base=None if information >> 27 & 1 else information >> 23 & 0xF,
            register2=information >> 28 & 0xF,
            displacement=qualification & _MASK64,
        )

    def linear(self, gprs: Sequence[int], segment_bases: Sequence[int]) -> int:
        """The operand's linear address (``gprs`` by SDM number, ``segment_bases`` ES..GS)."""
        address = self.displacement
        if self.base is not None:
            address += gprs[self.base]
        if self.index is not None:
            address += gprs[self.index] << self.scaling
        address &= (1 << (16, 32, 64)[min(self.address_size, 2)]) - 1
        return (address + segment_bases[self.segment]) & _MASK64


@dataclass(frozen=True, slots=True)
class Invalidation:
    """An INVEPT or INVVPID request: ``kind`` (``InveptType``/``InvvpidType``, or the raw
    value where it names none), the descriptor's two quadwords, and its linear address."""

    instruction: str  # "invept" or "invvpid"
    kind: InveptType | InvvpidType | int
    low: int  # INVEPT: the EPTP; INVVPID: the VPID in bits 15:0 (63:16 reserved)
    high: int  # INVEPT: reserved; INVVPID: the linear address
    descriptor_address: int

    @property
    def eptp(self) -> int:
        return self.low

    @property
    def vpid(self) -> int:
        return self.low & 0xFFFF

    @property
    def linear_address(self) -> int:
        return self.high

    @property
    def reserved_bits(self) -> int:
        """Descriptor bits the SDM reserves (INVEPT 127:64, INVVPID 63:16): nonzero ones
        make the instruction fail (VMfailValid, "invalid operand")."""
        return self.high if self.instruction == "invept" else self.low >> 16


def decode(
    instruction: str,
    information: int,
    qualification: int,
    gprs: Sequence[int],
    segment_bases: Sequence[int],
    read: Callable[[int, int], bytes],
) -> Invalidation:
    """The request of an ``instruction`` ("invept"/"invvpid") exit; ``read(address, size)``
    reads guest-linear memory (the descriptor)."""
    operand = MemoryOperand.decode(information, qualification)
    raw = gprs[operand.register2] & 0xFFFF_FFFF
    types: type[InveptType] | type[InvvpidType] = (
        InveptType if instruction == "invept" else InvvpidType
    )
    kind: InveptType | InvvpidType | int = types(raw) if raw in set(types) else raw
    address = operand.linear(gprs, segment_bases)
    low, high = _DESCRIPTOR.unpack(read(address, _DESCRIPTOR.size))
    return Invalidation(instruction, kind, low, high, address)
