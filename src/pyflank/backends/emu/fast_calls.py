"""SYSCALL, SYSENTER and SYSEXIT, which the software CPU carries out itself (SDM Vol. 2B).

unicorn's SYSCALL and SYSENTER only call a hook and step past the instruction, and its AMD
processor model makes SYSENTER and SYSEXIT #UD in 64-bit mode, where pyflank's Intel model
has them.  So the hooks (or the #UD intercept) stop at the instruction, and the run loop
loads what it leaves -- always a privilege change, so through a full VM entry.  All three
load CS and SS with fixed, flat attributes from MSRs, never from a descriptor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Final

from iced_x86 import Mnemonic

from pyflank.backends.emu.guest_state import SEGMENT_FIELDS
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.registers import (
    AR_DB,
    AR_DPL_SHIFT,
    AR_G,
    AR_L,
    AR_P,
    AR_S,
    RFLAGS_FIXED1,
    RFLAGS_IF,
    RFLAGS_RF,
    RFLAGS_VM,
)

_RCX, _RDX, _R11 = 1, 2, 11  # in the SDM's register numbering
_FLAT_CODE = 0xB | AR_S | AR_P | AR_G  # execute/read, accessed
_RING0_CODE64 = _FLAT_CODE | AR_L
_RING3_CODE64 = _FLAT_CODE | AR_L | 3 << AR_DPL_SHIFT
_RING3_CODE32 = _FLAT_CODE | AR_DB | 3 << AR_DPL_SHIFT
_FLAT_DATA = 0x3 | AR_S | AR_P | AR_DB | AR_G  # read/write, accessed
_FLAT_LIMIT = 0xFFFF_FFFF
ReadMsr = Callable[[int], int]


class FastCall(Enum):
    SYSCALL = "syscall"
    SYSENTER = "sysenter"
    SYSEXIT = "sysexit"  # to 32-bit code in ring 3
    SYSEXIT64 = "sysexit64"  # REX.W SYSEXIT: to 64-bit code in ring 3


# The ones QEMU's AMD model refuses in 64-bit mode (#UD), by mnemonic.
UNKNOWN_TO_QEMU: Final = {
    Mnemonic.SYSENTER: FastCall.SYSENTER,
    Mnemonic.SYSEXIT: FastCall.SYSEXIT,
    Mnemonic.SYSEXITQ: FastCall.SYSEXIT64,
}


@dataclass(frozen=True, slots=True)
class GuestSyscall:
    """A fast system call for the run loop to carry out; ``next_rip``: past it."""

    next_rip: int
    kind: FastCall = FastCall.SYSCALL


@dataclass(frozen=True, slots=True)
class CallLanding:
    """Where a fast system call goes: the CS/SS fields it loads (VMCS encoding -> value),
    the general registers (SDM order), RIP, RSP and RFLAGS."""

    segments: dict[int, int]
    gprs: tuple[int, ...]
    rip: int
    rsp: int
    rflags: int


def sysenter_fault(read: ReadMsr, kind: FastCall, cpl: int) -> bool:
    """SDM: SYSENTER and SYSEXIT are #GP(0) with IA32_SYSENTER_CS[15:2] zero, and SYSEXIT
    outside ring 0 (SYSCALL's #UD conditions are the caller's: they need CS)."""
    if read(msrs.IA32_SYSENTER_CS) & 0xFFFC == 0:
        return True
    return kind in (FastCall.SYSEXIT, FastCall.SYSEXIT64) and cpl != 0


def land(call: GuestSyscall, read: ReadMsr, gprs: tuple[int, ...], rflags: int) -> CallLanding:
    """The state after ``call`` in IA-32e mode, from the MSRs ``read`` returns.

    SYSCALL: ring 0 at LSTAR with CS/SS from STAR, RCX = the next RIP, R11 = RFLAGS,
    RFLAGS masked by SFMASK.  SYSENTER: ring 0 at SYSENTER_EIP/ESP with CS/SS from
    SYSENTER_CS; IF, VM and RF cleared.  SYSEXIT: ring 3 at RDX/RCX with CS/SS above
    SYSENTER_CS (64-bit code with REX.W, else 32-bit code and EDX/ECX).
    """
    regs = list(gprs)
    kind = call.kind
    masked = 0
    if kind is FastCall.SYSCALL:
        selector = read(msrs.IA32_STAR) >> 32 & 0xFFFF
        cs, ss, rip, rsp = selector & 0xFFFC, selector + 8, read(msrs.IA32_LSTAR), regs[4]
        masked = read(msrs.IA32_FMASK) | RFLAGS_RF
        regs[_RCX], regs[_R11] = call.next_rip, rflags & ~RFLAGS_RF
        code = _RING0_CODE64
    elif kind is FastCall.SYSENTER:
        cs = read(msrs.IA32_SYSENTER_CS) & 0xFFFC
        ss, rip, rsp = cs + 8, read(msrs.IA32_SYSENTER_EIP), read(msrs.IA32_SYSENTER_ESP)
        masked = RFLAGS_IF | RFLAGS_VM | RFLAGS_RF
        code = _RING0_CODE64
    else:
        base = read(msrs.IA32_SYSENTER_CS) & 0xFFFC
        if kind is FastCall.SYSEXIT64:
            cs, ss, rip, rsp = base + 32 | 3, base + 40 | 3, regs[_RDX], regs[_RCX]
            code = _RING3_CODE64
        else:
            cs, ss = base + 16 | 3, base + 24 | 3
            rip, rsp = regs[_RDX] & 0xFFFF_FFFF, regs[_RCX] & 0xFFFF_FFFF
            code = _RING3_CODE32
    stack = _FLAT_DATA | (ss & 3) << AR_DPL_SHIFT
    segments: dict[int, int] = {}
    for fields, selector, rights in ((SEGMENT_FIELDS[1], cs, code), (SEGMENT_FIELDS[2], ss, stack)):
        sel_field, base_field, limit_field, rights_field = fields
        segments.update({sel_field: selector, base_field: 0, limit_field: _FLAT_LIMIT})
        segments[rights_field] = rights
    return CallLanding(segments, tuple(regs), rip, rsp, rflags & ~masked | RFLAGS_FIXED1)
