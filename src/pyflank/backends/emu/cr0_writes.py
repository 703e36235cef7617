"""What a guest's write to CR0 does when the VMM owns some of its bits (SDM 25.3, "Changes
to Instruction Behavior in VMX Non-Root Operation", MOV to CR0, CLTS, LMSW).

With a CR0 guest/host mask the engine holds the CR0 the guest sees (the read shadow's
bits where the mask is set), so reads need nothing; every write is intercepted and
decided here: a VM exit when it would change a masked bit from its shadow value, a #GP
when the CR0 it makes breaks the rules (VMX's fixed bits included), else the write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from iced_x86 import Instruction, Mnemonic, OpKind

from pyflank.intel_x64 import decode as dec
from pyflank.intel_x64.cpu import VMX_CAPABILITY_MSRS
from pyflank.intel_x64.msrs import EFER_LMA, EFER_LME, IA32_VMX_CR0_FIXED0, IA32_VMX_CR0_FIXED1
from pyflank.intel_x64.qualifications import ControlRegisterAccess, CrAccessType, LmswOperandType
from pyflank.intel_x64.registers import CR0_CD, CR0_NW, CR0_PE, CR0_PG, CR0_TS, CR4_PAE

_FIXED0 = VMX_CAPABILITY_MSRS[IA32_VMX_CR0_FIXED0]  # the processor model's
_FIXED1 = VMX_CAPABILITY_MSRS[IA32_VMX_CR0_FIXED1]
_LMSW_BITS = 0xF  # PE, MP, EM, TS


@dataclass(frozen=True, slots=True)
class Cr0Write:
    """The outcome: ``exit`` (with the exit qualification and, for LMSW from memory, the
    operand's linear address), ``fault`` (#GP(0)), or the ``value`` to load."""

    value: int = 0
    exit: bool = False
    qualification: int = 0
    linear_address: int = 0
    fault: bool = False


def cr0_write(
    ins: Instruction,
    visible: int,
    *,
    mask: int,
    shadow: int,
    real_owned: int,
    cr4: int,
    efer: int,
    unrestricted: bool,
    register: Callable[[int], int],
    memory_word: Callable[[Instruction], tuple[int, int]],
) -> Cr0Write:
    """Decide the CR0 write ``ins`` makes.  ``visible``: the CR0 the guest sees now;
    ``real_owned``: the real CR0's bits under ``mask``; ``register(n)``: GPR n;
    ``memory_word(ins)``: LMSW's memory operand (value, linear address)."""
    linear = 0
    if ins.mnemonic == Mnemonic.CLTS:
        new, access = visible & ~CR0_TS, ControlRegisterAccess(0, CrAccessType.CLTS)
    elif ins.mnemonic == Mnemonic.LMSW:
        if ins.op0_kind == OpKind.REGISTER:
            source, kind = register(dec.GPR[ins.op0_register][0]) & 0xFFFF, LmswOperandType.REGISTER
        else:
            (source, linear), kind = memory_word(ins), LmswOperandType.MEMORY
        # LMSW loads PE, MP, EM and TS and cannot clear PE.
        new = visible & ~_LMSW_BITS | source & _LMSW_BITS | visible & CR0_PE
        access = ControlRegisterAccess(0, CrAccessType.LMSW, 0, kind, source)
    else:
        _, _, gpr = dec.control_register_access(ins)
        # Outside long mode the register is 32 bits wide; in it, bits 63:32 must be 0.
        new = register(gpr) if efer & EFER_LMA else register(gpr) & 0xFFFF_FFFF
        access = ControlRegisterAccess(0, CrAccessType.MOV_TO_CR, gpr)
    if (new ^ shadow) & mask:
        return Cr0Write(exit=True, qualification=access.encode(), linear_address=linear)
    real = new & ~mask | real_owned
    fixed0 = _FIXED0 & ~(CR0_PE | CR0_PG) if unrestricted else _FIXED0
    broken = (
        new >> 32
        or real & fixed0 != fixed0
        or real & ~_FIXED1
        or (new & CR0_PG and not new & CR0_PE)
        or (new & CR0_NW and not new & CR0_CD)
        or (new & CR0_PG and efer & EFER_LME and not cr4 & CR4_PAE)
    )
    return Cr0Write(fault=True) if broken else Cr0Write(value=new)
