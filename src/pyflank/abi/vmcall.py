"""The vmcall ABI of Bareflank 1.1 as pyflank speaks it: magic, versions, opcodes, data types,
buffer sizes, return codes, and what each opcode reads and returns in ``vmcall_registers_t``.

Everything a guest and the VMM must agree on is here once; ``pyflank.abi.generate`` writes
the guest headers (``pyflank_abi.inc``, ``pyflank.h``) from it.
"""

from __future__ import annotations

from collections.abc import Callable
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
    """``r00``: what the guest asks for."""

    VERSIONS = 1
    REGISTERS = 2
    DATA = 3
    EVENT = 4
    START = 5
    STOP = 6
    UNITTEST = 10


class VmcallVersionIndex(IntEnum):
    """``r02`` of VERSIONS: whose version the guest asks for."""

    PROTOCOL = 0
    BAREFLANK = 1
    USER = 10


class VmcallDataType(IntEnum):
    """``r04`` (request) and ``r07`` (reply) of DATA: how the buffer is to be read."""

    NONE = 0
    STRING_UNFORMATTED = 1
    STRING_JSON = 2
    BINARY_UNFORMATTED = 10


# The guest SDK's short names for the data types (VMCALL_DATA_JSON, PYFLANK_DATA_JSON).
DATA_TYPE_SDK_NAMES: Final = {
    VmcallDataType.NONE: "NONE",
    VmcallDataType.STRING_UNFORMATTED: "STRING",
    VmcallDataType.STRING_JSON: "JSON",
    VmcallDataType.BINARY_UNFORMATTED: "BINARY",
}


@dataclass(slots=True)
class VmcallRegisters:
    """r00-r15 of ``vmcall_registers_t``; on Intel r00-r12 travel in guest registers.

    ``r00`` is the opcode, ``r01`` the magic number on the way in and the status on the
    way out; what the others mean depends on the opcode (``SIGNATURES``).
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
        """r00..r15 in order."""
        return tuple(getattr(self, f.name) for f in fields(self))


SLOTS: Final = tuple(f.name for f in fields(VmcallRegisters))
OPCODE_SLOT: Final = "r00"
MAGIC_SLOT: Final = "r01"
STATUS_SLOT: Final = "r01"  # the status comes back where the magic number went in


@dataclass(frozen=True)
class Signature:
    """What one opcode reads (``inputs``) and returns (``outputs``): (name, slot) pairs.

    The names are the guest SDK's: macro arguments in assembly, parameters and result
    accessors in C.
    """

    def describe(self, register: Callable[[str], str]) -> str:
        """``in (r02 = rcx) -> out (r03 = rbx)``, with ``register`` naming a slot's register."""
        if self.note:
            return self.note
        inputs = ", ".join(f"{a} ({s} = {register(s)})" for a, s in self.inputs)
        outputs = ", ".join(f"{a} ({s} = {register(s)})" for a, s in self.outputs)
        return (inputs or "no arguments") + (f" -> {outputs}" if outputs else "")

    opcode: VmcallOpcode
    inputs: tuple[tuple[str, str], ...] = ()
    outputs: tuple[tuple[str, str], ...] = ()
    note: str = ""  # for the headers, where the pairs do not say it all

    def slot(self, name: str) -> str:
        """The slot (``"r05"``) of the argument or result called ``name``."""
        for argument, slot in self.inputs + self.outputs:
            if argument == name:
                return slot
        raise KeyError(f"{self.opcode.name} has no argument {name!r}")

    def index(self, name: str) -> int:
        """The index (0-15) of ``name``'s slot in ``vmcall_registers_t``."""
        return SLOTS.index(self.slot(name))


SIGNATURES: Final = {
    s.opcode: s
    for s in (
        Signature(
            VmcallOpcode.VERSIONS,
            inputs=(("index", "r02"),),
            outputs=(("major", "r03"), ("minor", "r04"), ("patch", "r05")),
        ),
        Signature(VmcallOpcode.REGISTERS, note="r02-r12 as the guest left them, logged"),
        Signature(
            VmcallOpcode.DATA,
            inputs=(
                ("in_type", "r04"),
                ("in_addr", "r05"),
                ("in_size", "r06"),
                ("out_addr", "r08"),
                ("out_size", "r09"),
            ),
            outputs=(("reply_type", "r07"), ("reply_size", "r09")),
        ),
        Signature(VmcallOpcode.EVENT, inputs=(("index", "r02"),)),
        Signature(VmcallOpcode.START),
        Signature(VmcallOpcode.STOP),
        Signature(VmcallOpcode.UNITTEST, inputs=(("index", "r02"),)),
    )
}
DATA: Final = SIGNATURES[VmcallOpcode.DATA]
