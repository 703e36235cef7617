"""Exit qualifications and event-information fields, decoded and encoded.

Handlers decode what the processor stored on a VM exit; a backend (the
software CPU) builds the same values with ``encode``.  ``decode`` keeps only
the bits the SDM defines, so ``encode(decode(x)) == x & DEFINED_BITS``.

Layouts: Intel SDM Vol. 3, "Exit Qualification for VM Exits" (control-register
accesses, MOV DR, I/O instructions, EPT violations) and "Information for VM
Exits Due to Vectored Events" / "VM-Entry Controls for Event Injection".
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Final

GPR_NAMES: Final[tuple[str, ...]] = (
    "rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
    "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
"""General-purpose registers in the order the SDM numbers them in qualifications."""


def _check_range(what: str, value: int, limit: int) -> None:
    if not 0 <= value < limit:
        raise ValueError(f"{what} out of range: {value}")


def _flags(**flags: bool) -> str:
    return " ".join(name for name, is_set in flags.items() if is_set)


# -- control-register accesses (exit reason 28) ------------------------------------


class CrAccessType(IntEnum):
    MOV_TO_CR = 0
    MOV_FROM_CR = 1
    CLTS = 2
    LMSW = 3


class LmswOperandType(IntEnum):
    REGISTER = 0
    MEMORY = 1


@dataclass(frozen=True, slots=True)
class ControlRegisterAccess:
    """Bits 3:0 CR number, 5:4 access type, 6 LMSW operand type, 11:8 GPR, 31:16 LMSW data."""

    DEFINED_BITS: ClassVar[int] = 0xFFFF_0F7F

    control_register: int
    access_type: CrAccessType
    gpr: int = 0
    lmsw_operand_type: LmswOperandType = LmswOperandType.REGISTER
    lmsw_source_data: int = 0

    def __post_init__(self) -> None:
        _check_range("control register", self.control_register, 16)
        _check_range("general-purpose register", self.gpr, 16)
        _check_range("LMSW source data", self.lmsw_source_data, 1 << 16)

    @classmethod
    def decode(cls, value: int) -> ControlRegisterAccess:
        return cls(
            control_register=value & 0xF,
            access_type=CrAccessType((value >> 4) & 0x3),
            lmsw_operand_type=LmswOperandType((value >> 6) & 0x1),
            gpr=(value >> 8) & 0xF,
            lmsw_source_data=(value >> 16) & 0xFFFF,
        )

    def encode(self) -> int:
        return (
            self.control_register
            | self.access_type << 4
            | self.lmsw_operand_type << 6
            | self.gpr << 8
            | self.lmsw_source_data << 16
        )

    def describe(self) -> str:
        cr = f"cr{self.control_register}"
        gpr = GPR_NAMES[self.gpr]
        match self.access_type:
            case CrAccessType.MOV_TO_CR:
                return f"mov {cr}, {gpr}"
            case CrAccessType.MOV_FROM_CR:
                return f"mov {gpr}, {cr}"
            case CrAccessType.CLTS:
                return "clts"
            case CrAccessType.LMSW:
                source = self.lmsw_operand_type.name.lower()
                return f"lmsw {self.lmsw_source_data:#06x} (from {source})"

    def __str__(self) -> str:
        return self.describe()


# -- MOV DR (exit reason 29) ---------------------------------------------------------


class DrAccessDirection(IntEnum):
    MOV_TO_DR = 0
    MOV_FROM_DR = 1


@dataclass(frozen=True, slots=True)
class MovDrAccess:
    """Bits 2:0 debug register, 4 direction, 11:8 GPR."""

    DEFINED_BITS: ClassVar[int] = 0x0F17

    debug_register: int
    direction: DrAccessDirection
    gpr: int

    def __post_init__(self) -> None:
        _check_range("debug register", self.debug_register, 8)
        _check_range("general-purpose register", self.gpr, 16)

    @classmethod
    def decode(cls, value: int) -> MovDrAccess:
        return cls(
            debug_register=value & 0x7,
            direction=DrAccessDirection((value >> 4) & 0x1),
            gpr=(value >> 8) & 0xF,
        )

    def encode(self) -> int:
        return self.debug_register | self.direction << 4 | self.gpr << 8

    def describe(self) -> str:
        dr, gpr = f"dr{self.debug_register}", GPR_NAMES[self.gpr]
        if self.direction is DrAccessDirection.MOV_TO_DR:
            return f"mov {dr}, {gpr}"
        return f"mov {gpr}, {dr}"

    def __str__(self) -> str:
        return self.describe()


# -- I/O instructions (exit reason 30) ----------------------------------------------


class IoDirection(IntEnum):
    OUT = 0
    IN = 1


class IoOperandEncoding(IntEnum):
    DX = 0
    IMMEDIATE = 1


# Bits 2:0 hold size - 1; the value 2 (a 3-byte access) does not occur.
_IO_SIZES: Final[dict[int, int]] = {0: 1, 1: 2, 3: 4}
_IO_SIZE_CODES: Final[dict[int, int]] = {size: code for code, size in _IO_SIZES.items()}


@dataclass(frozen=True, slots=True)
class IoInstruction:
    """Bits 2:0 size-1, 3 direction, 4 string, 5 REP, 6 operand encoding, 31:16 port."""

    DEFINED_BITS: ClassVar[int] = 0xFFFF_007F

    size: int
    direction: IoDirection
    port: int
    string: bool = False
    rep: bool = False
    operand_encoding: IoOperandEncoding = IoOperandEncoding.DX

    def __post_init__(self) -> None:
        if self.size not in _IO_SIZE_CODES:
            raise ValueError(f"I/O access size must be 1, 2 or 4 bytes, not {self.size}")
        _check_range("port", self.port, 1 << 16)

    @classmethod
    def decode(cls, value: int) -> IoInstruction:
        code = value & 0x7
        if code not in _IO_SIZES:
            raise ValueError(f"reserved I/O access-size encoding {code}")
        return cls(
            size=_IO_SIZES[code],
            direction=IoDirection((value >> 3) & 0x1),
            string=bool(value & (1 << 4)),
            rep=bool(value & (1 << 5)),
            operand_encoding=IoOperandEncoding((value >> 6) & 0x1),
            port=(value >> 16) & 0xFFFF,
        )

    def encode(self) -> int:
        return (
            _IO_SIZE_CODES[self.size]
            | self.direction << 3
            | int(self.string) << 4
            | int(self.rep) << 5
            | self.operand_encoding << 6
            | self.port << 16
        )

    def describe(self) -> str:
        mnemonic = "in" if self.direction is IoDirection.IN else "out"
        if self.string:
            mnemonic = ("rep " if self.rep else "") + ("ins" if mnemonic == "in" else "outs")
        via = "imm8" if self.operand_encoding is IoOperandEncoding.IMMEDIATE else "dx"
        return f"{mnemonic} port {self.port:#06x} ({self.size} byte(s), port in {via})"

    def __str__(self) -> str:
        return self.describe()


# -- EPT violations (exit reason 48) -------------------------------------------------

_EPT_VIOLATION_BITS: Final[dict[str, int]] = {
    "data_read": 0,
    "data_write": 1,
    "instruction_fetch": 2,
    # Bits 5:3 are the permissions of the EPT entries (ANDed along the walk).
    "readable": 3,
    "writable": 4,
    "executable": 5,
    "user_mode_executable": 6,
    "guest_linear_address_valid": 7,
    # Meaningful only when bit 7 is set; clear means a paging-structure access.
    "translated_access": 8,
    "user_mode_linear_address": 9,
    "writable_linear_address": 10,
    "execute_disable_linear_address": 11,
    "nmi_unblocking": 12,
    "shadow_stack_access": 13,
    "supervisor_shadow_stack": 14,
    "guest_paging_verification": 15,
    "asynchronous": 16,
}


@dataclass(frozen=True, slots=True)
class EptViolation:
    """The EPT-violation exit qualification, one flag per defined bit (0..16)."""

    DEFINED_BITS: ClassVar[int] = 0x1_FFFF

    data_read: bool = False
    data_write: bool = False
    instruction_fetch: bool = False
    readable: bool = False
    writable: bool = False
    executable: bool = False
    user_mode_executable: bool = False
    guest_linear_address_valid: bool = False
    translated_access: bool = False
    user_mode_linear_address: bool = False
    writable_linear_address: bool = False
    execute_disable_linear_address: bool = False
    nmi_unblocking: bool = False
    shadow_stack_access: bool = False
    supervisor_shadow_stack: bool = False
    guest_paging_verification: bool = False
    asynchronous: bool = False

    @classmethod
    def decode(cls, value: int) -> EptViolation:
        return cls(**{name: bool(value >> bit & 1) for name, bit in _EPT_VIOLATION_BITS.items()})

    def encode(self) -> int:
        value = 0
        for name, bit in _EPT_VIOLATION_BITS.items():
            if getattr(self, name):
                value |= 1 << bit
        return value

    @property
    def paging_structure_access(self) -> bool:
        """The access was to a guest paging-structure entry, not the translated address."""
        return self.guest_linear_address_valid and not self.translated_access

    def describe(self) -> str:
        access = _flags(read=self.data_read, write=self.data_write, fetch=self.instruction_fetch)
        permissions = (("r", self.readable), ("w", self.writable), ("x", self.executable))
        allowed = "".join(letter if is_set else "-" for letter, is_set in permissions)
        text = f"ept violation: {access or 'no access'} (ept allows {allowed})"
        if self.paging_structure_access:
            text += " during a guest page walk"
        extra = _flags(
            gla_valid=self.guest_linear_address_valid,
            nmi_unblocking=self.nmi_unblocking,
            shadow_stack=self.shadow_stack_access,
            guest_paging_verification=self.guest_paging_verification,
            asynchronous=self.asynchronous,
        )
        return f"{text} {extra}".rstrip()

    def __str__(self) -> str:
        return self.describe()


# -- interruption information (exit, IDT-vectoring and entry fields) ----------------


class InterruptionType(IntEnum):
    EXTERNAL_INTERRUPT = 0
    RESERVED = 1
    NMI = 2
    HARDWARE_EXCEPTION = 3
    SOFTWARE_INTERRUPT = 4
    PRIVILEGED_SOFTWARE_EXCEPTION = 5
    SOFTWARE_EXCEPTION = 6
    OTHER_EVENT = 7


EXCEPTION_MNEMONICS: Final[dict[int, str]] = {
    0: "#DE", 1: "#DB", 2: "NMI", 3: "#BP", 4: "#OF", 5: "#BR", 6: "#UD", 7: "#NM",
    8: "#DF", 9: "CSO", 10: "#TS", 11: "#NP", 12: "#SS", 13: "#GP", 14: "#PF",
    16: "#MF", 17: "#AC", 18: "#MC", 19: "#XM", 20: "#VE", 21: "#CP",
    28: "#HV", 29: "#VC", 30: "#SX",
}  # fmt: skip
"""Exception vector -> mnemonic (SDM Vol. 3, "Exception and Interrupt Vectors")."""


@dataclass(frozen=True, slots=True)
class InterruptionInformation:
    """Bits 7:0 vector, 10:8 type, 11 error code valid, 12 NMI unblocking, 31 valid.

    The same layout serves the VM-exit interruption-information, IDT-vectoring
    information and VM-entry interruption-information fields; on entry bit 11
    means "deliver error code" and bit 12 must be 0.
    """

    DEFINED_BITS: ClassVar[int] = 0x8000_1FFF

    vector: int
    type: InterruptionType
    error_code_valid: bool = False
    nmi_unblocking: bool = False
    valid: bool = True

    def __post_init__(self) -> None:
        _check_range("vector", self.vector, 256)

    @classmethod
    def decode(cls, value: int) -> InterruptionInformation:
        return cls(
            vector=value & 0xFF,
            type=InterruptionType((value >> 8) & 0x7),
            error_code_valid=bool(value & (1 << 11)),
            nmi_unblocking=bool(value & (1 << 12)),
            valid=bool(value & (1 << 31)),
        )

    def encode(self) -> int:
        return (
            self.vector
            | self.type << 8
            | int(self.error_code_valid) << 11
            | int(self.nmi_unblocking) << 12
            | int(self.valid) << 31
        )

    def describe(self) -> str:
        name = ""
        if self.type in (InterruptionType.HARDWARE_EXCEPTION, InterruptionType.NMI):
            name = f" {EXCEPTION_MNEMONICS.get(self.vector, '')}".rstrip()
        text = f"vector {self.vector}{name} {self.type.name.lower()}"
        extra = _flags(
            error_code=self.error_code_valid,
            nmi_unblocking=self.nmi_unblocking,
            invalid=not self.valid,
        )
        return f"{text} {extra}".rstrip()

    def __str__(self) -> str:
        return self.describe()
