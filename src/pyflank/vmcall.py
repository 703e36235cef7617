"""The vmcall ABI shared by the guest, ``bfm`` and the exit handler (Bareflank 1.1)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from enum import IntEnum
from typing import Final

VMCALL_MAGIC_NUMBER: Final = 0xB045EACDACD52E22
VMCALL_VERSION: Final = 1  # the protocol version
VMCALL_IN_BUFFER_SIZE: Final = 32 * 4096
VMCALL_OUT_BUFFER_SIZE: Final = 32 * 4096

BF_VMCALL_SUCCESS: Final = 0
BF_VMCALL_FAILURE: Final = 0x8000001000000000

REGISTER_MASK: Final = 0xFFFF_FFFF_FFFF_FFFF


class VmcallOpcode(IntEnum):
    VERSIONS = 1
    REGISTERS = 2
    DATA = 3
    EVENT = 4
    START = 5
    STOP = 6
    UNITTEST = 10


class VmcallVersionIndex(IntEnum):
    PROTOCOL = 0
    BAREFLANK = 1
    USER = 10


class VmcallDataType(IntEnum):
    NONE = 0
    STRING_UNFORMATTED = 1
    STRING_JSON = 2
    BINARY_UNFORMATTED = 10


@dataclass(slots=True)
class VmcallRegisters:
    """r00-r15 of ``vmcall_registers_t``; on Intel r00-r12 travel in guest GPRs.

    DATA uses r04 input type, r05/r06 input address/size, r07 output type,
    r08/r09 output address/size.
    """

    r00: int = 0
    r01: int = 0
    r02: int = 0
    r03: int = 0
    r04: int = 0
    r05: int = 0
    r06: int = 0
    r07: int = 0
    r08: int = 0
    r09: int = 0
    r10: int = 0
    r11: int = 0
    r12: int = 0
    r13: int = 0
    r14: int = 0
    r15: int = 0

    def as_tuple(self) -> tuple[int, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))


# vmcall_registers_t slot -> guest register (StateSave attribute), Intel x64.
INTEL_X64_REGISTER_MAP: Final = (
    ("r00", "rax"),
    ("r01", "rdx"),
    ("r02", "rcx"),
    ("r03", "rbx"),
    ("r04", "rsi"),
    ("r05", "r08"),
    ("r06", "r09"),
    ("r07", "r10"),
    ("r08", "r11"),
    ("r09", "r12"),
    ("r10", "r13"),
    ("r11", "r14"),
    ("r12", "r15"),
)
EVENT_REGISTER_MAP: Final = (("r02", "rcx"),)
