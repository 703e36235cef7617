"""Decoding the instruction at an exit with iced-x86, into what VMX reports about it.

Register and segment numbers follow the SDM's encodings in exit qualifications and the
VM-exit instruction-information field (RAX=0, RCX=1, ... R15=15; ES=0 ... GS=5).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from iced_x86 import Decoder, Instruction, Mnemonic, OpKind, Register

from pyflank.intel_x64.exit_reasons import ExitReason

_MASK64 = (1 << 64) - 1

_GPR_NAMES = (
    ("RAX", "EAX", "AX", "AL"), ("RCX", "ECX", "CX", "CL"), ("RDX", "EDX", "DX", "DL"),
    ("RBX", "EBX", "BX", "BL"), ("RSP", "ESP", "SP", "SPL"), ("RBP", "EBP", "BP", "BPL"),
    ("RSI", "ESI", "SI", "SIL"), ("RDI", "EDI", "DI", "DIL"),
    *((f"R{n}", f"R{n}D", f"R{n}W", f"R{n}L") for n in range(8, 16)),
)  # fmt: skip
# iced register -> (SDM number, width in bytes)
GPR: dict[int, tuple[int, int]] = {
    getattr(Register, name): (number, width)
    for number, names in enumerate(_GPR_NAMES)
    for name, width in zip(names, (8, 4, 2, 1), strict=True)
}
SEGMENT: dict[int, int] = {
    Register.ES: 0, Register.CS: 1, Register.SS: 2, Register.DS: 3, Register.FS: 4, Register.GS: 5,
}  # fmt: skip
ADDRESS_SIZE_CODE = {2: 0, 4: 1, 8: 2}
CONTROL_REGISTERS = {getattr(Register, f"CR{n}"): n for n in (0, 2, 3, 4, 8)}
DEBUG_REGISTERS = {getattr(Register, f"DR{n}"): n for n in range(8)}

VMX_EXITS: dict[int, ExitReason] = {
    Mnemonic.VMCALL: ExitReason.VMCALL,
    Mnemonic.VMCLEAR: ExitReason.VMCLEAR,
    Mnemonic.VMLAUNCH: ExitReason.VMLAUNCH,
    Mnemonic.VMPTRLD: ExitReason.VMPTRLD,
    Mnemonic.VMPTRST: ExitReason.VMPTRST,
    Mnemonic.VMREAD: ExitReason.VMREAD,
    Mnemonic.VMRESUME: ExitReason.VMRESUME,
    Mnemonic.VMWRITE: ExitReason.VMWRITE,
    Mnemonic.VMXOFF: ExitReason.VMXOFF,
    Mnemonic.VMXON: ExitReason.VMXON,
    Mnemonic.INVEPT: ExitReason.INVEPT,
    Mnemonic.INVVPID: ExitReason.INVVPID,
    Mnemonic.VMFUNC: ExitReason.VMFUNC,
}
_IN = frozenset({Mnemonic.IN, Mnemonic.INSB, Mnemonic.INSW, Mnemonic.INSD})
_STRING_IO = frozenset(
    {Mnemonic.INSB, Mnemonic.INSW, Mnemonic.INSD, Mnemonic.OUTSB, Mnemonic.OUTSW, Mnemonic.OUTSD}
)


def decode(code: bytes, rip: int) -> Instruction:
    """The 64-bit instruction at the start of ``code`` (``ins.is_invalid`` if it is not one)."""
    return Decoder(64, code, ip=rip).decode()


@dataclass(frozen=True, slots=True)
class Operand:
    """A memory operand, in the pieces the instruction-information field reports."""

    segment: int
    base: int | None  # SDM register number, None when absent
    index: int | None
    scale_code: int  # log2 of the scale
    displacement: int  # sign-extended, or the whole RIP-relative offset
    address_size_code: int

    def linear(self, gprs: Sequence[int], segment_bases: Sequence[int]) -> int:
        """The linear address, given GPR values by SDM number and ES..GS bases."""
        address = self.displacement
        if self.base is not None:
            address += gprs[self.base]
        if self.index is not None:
            address += gprs[self.index] << self.scale_code
        width = (16, 32, 64)[self.address_size_code]
        address &= (1 << width) - 1
        return (address + segment_bases[self.segment]) & _MASK64


def memory_operand(ins: Instruction) -> Operand | None:
    """The instruction's memory operand, if it has one."""
    kinds = [ins.op_kind(i) for i in range(ins.op_count)]
    string = next((_STRING_OPERANDS[k] for k in kinds if k in _STRING_OPERANDS), None)
    if string is not None:
        # INS/OUTS/MOVS...: [seg:rSI] or [ES:rDI], no displacement.
        register, size = string
        segment = SEGMENT[Register.ES] if register == 7 else SEGMENT.get(ins.memory_segment, 3)
        return Operand(segment, register, None, 0, 0, ADDRESS_SIZE_CODE[size])
    if OpKind.MEMORY not in kinds:
        return None
    base = GPR.get(ins.memory_base)
    index = GPR.get(ins.memory_index)
    displacement = ins.memory_displacement
    if ins.is_ip_rel_memory_operand:
        # No base register names RIP: report base invalid and the resolved offset.
        base = None
        size = 8 if ins.memory_base == Register.RIP else 4
        displacement = ins.ip_rel_memory_address
    else:
        # Without a base or index register the operand is an absolute address (64-bit).
        size = base[1] if base else index[1] if index else 8
        if displacement >= 1 << 63:
            displacement -= 1 << 64
    return Operand(
        segment=SEGMENT.get(ins.memory_segment, 3),
        base=base[0] if base else None,
        index=index[0] if index else None,
        scale_code=(1, 2, 4, 8).index(ins.memory_index_scale),
        displacement=displacement,
        address_size_code=ADDRESS_SIZE_CODE[size],
    )


# String-instruction operand kinds -> (SDM register number, address size in bytes).
_STRING_OPERANDS = {
    OpKind.MEMORY_SEG_SI: (6, 2),
    OpKind.MEMORY_SEG_ESI: (6, 4),
    OpKind.MEMORY_SEG_RSI: (6, 8),
    OpKind.MEMORY_ESDI: (7, 2),
    OpKind.MEMORY_ESEDI: (7, 4),
    OpKind.MEMORY_ESRDI: (7, 8),
}


def _reg_number(register: int) -> int:
    return GPR[register][0]


def vmx_instruction_information(ins: Instruction) -> tuple[int, int]:
    """(exit qualification, instruction information) of a VMX instruction (SDM 28.2.5)."""
    operand = memory_operand(ins)
    info = 0
    qualification = 0
    if operand is not None:
        info |= operand.scale_code | operand.address_size_code << 7 | operand.segment << 15
        info |= (operand.index if operand.index is not None else 0) << 18
        info |= (operand.index is None) << 22
        info |= (operand.base if operand.base is not None else 0) << 23
        info |= (operand.base is None) << 27
        qualification = operand.displacement & _MASK64
    mnemonic = ins.mnemonic
    if mnemonic in (Mnemonic.VMREAD, Mnemonic.VMWRITE):
        # VMREAD r/m64, r64 and VMWRITE r64, r/m64: reg2 names the field, reg1 the data.
        data, field = (0, 1) if mnemonic == Mnemonic.VMREAD else (1, 0)
        info |= _reg_number(ins.op_register(field)) << 28
        if operand is None:
            info |= 1 << 10 | _reg_number(ins.op_register(data)) << 3
    elif mnemonic in (Mnemonic.INVEPT, Mnemonic.INVVPID):
        info |= _reg_number(ins.op0_register) << 28
    return qualification, info


@dataclass(frozen=True, slots=True)
class IoAccess:
    size: int
    is_in: bool
    string: bool
    rep: bool
    immediate: bool
    operand: Operand | None


def io_access(ins: Instruction) -> IoAccess:
    """What an IN/OUT/INS/OUTS does, for the I/O qualification and instruction information."""
    mnemonic = ins.mnemonic
    string = mnemonic in _STRING_IO
    if string:
        size = {Mnemonic.INSB: 1, Mnemonic.OUTSB: 1, Mnemonic.INSW: 2, Mnemonic.OUTSW: 2}.get(
            mnemonic, 4
        )
    else:
        data = ins.op0_register if mnemonic == Mnemonic.IN else ins.op1_register
        size = GPR[data][1]
    return IoAccess(
        size=size,
        is_in=mnemonic in _IN,
        string=string,
        rep=string and (ins.has_rep_prefix or ins.has_repne_prefix),
        immediate=any(ins.op_kind(i) == OpKind.IMMEDIATE8 for i in range(ins.op_count)),
        operand=memory_operand(ins) if string else None,
    )


def control_register_access(ins: Instruction) -> tuple[int, bool, int]:
    """(CR number, True for a load into the CR, GPR number) of MOV to/from CR."""
    if ins.op0_register in CONTROL_REGISTERS:
        return CONTROL_REGISTERS[ins.op0_register], True, _reg_number(ins.op1_register)
    return CONTROL_REGISTERS[ins.op1_register], False, _reg_number(ins.op0_register)


def debug_register_access(ins: Instruction) -> tuple[int, bool, int]:
    """(DR number, True for a move into the DR, GPR number) of MOV to/from DR."""
    if ins.op0_register in DEBUG_REGISTERS:
        return DEBUG_REGISTERS[ins.op0_register], True, _reg_number(ins.op1_register)
    return DEBUG_REGISTERS[ins.op1_register], False, _reg_number(ins.op0_register)
