"""The fast system calls' landings, from synthetic MSRs and registers (SDM Vol. 2B)."""

from __future__ import annotations

from pyflank.backends.emu.fast_calls import FastCall, GuestSyscall, land, sysenter_fault
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs

MSRS = {
    msrs.IA32_STAR: 0x0023_0010 << 32,
    msrs.IA32_LSTAR: 0xFFFF_FFFF_8100_0000,
    msrs.IA32_FMASK: 0x47700,
    msrs.IA32_SYSENTER_CS: 0x10,
    msrs.IA32_SYSENTER_EIP: 0xFFFF_FFFF_8200_0000,
    msrs.IA32_SYSENTER_ESP: 0xFFFF_C900_0000_8000,
}
GPRS = tuple(0x1111_0000_0000_0000 + i for i in range(16))  # RAX, RCX, RDX, ...


def test_syscall() -> None:
    out = land(GuestSyscall(0x40_1002), MSRS.__getitem__, GPRS, 0x10246 | 1 << 10)
    assert (out.rip, out.rsp) == (MSRS[msrs.IA32_LSTAR], GPRS[4])
    assert (out.gprs[1], out.gprs[11]) == (0x40_1002, 0x246 | 1 << 10)  # RCX, R11 (no RF)
    assert out.rflags == 0x46  # IF, DF (SFMASK) and RF cleared
    assert (out.segments[f.GUEST_CS_SELECTOR], out.segments[f.GUEST_SS_SELECTOR]) == (0x10, 0x18)
    assert out.segments[f.GUEST_CS_ACCESS_RIGHTS] == 0xA09B
    assert out.segments[f.GUEST_SS_ACCESS_RIGHTS] == 0xC093


def test_sysenter_and_the_two_sysexits() -> None:
    entered = land(GuestSyscall(0, FastCall.SYSENTER), MSRS.__getitem__, GPRS, 0x10202)
    assert (entered.rip, entered.rsp, entered.rflags) == (
        MSRS[msrs.IA32_SYSENTER_EIP], MSRS[msrs.IA32_SYSENTER_ESP], 0x2,
    )  # fmt: skip
    assert entered.gprs == GPRS  # SYSENTER keeps RCX and R11
    back = land(GuestSyscall(0, FastCall.SYSEXIT64), MSRS.__getitem__, GPRS, 0x2)
    assert (back.rip, back.rsp) == (GPRS[2], GPRS[1])  # RDX, RCX
    assert (back.segments[f.GUEST_CS_SELECTOR], back.segments[f.GUEST_SS_SELECTOR]) == (
        0x33, 0x3B,
    )  # fmt: skip
    assert back.segments[f.GUEST_CS_ACCESS_RIGHTS] == 0xA0FB  # 64-bit ring-3 code
    legacy = land(GuestSyscall(0, FastCall.SYSEXIT), MSRS.__getitem__, GPRS, 0x2)
    assert (legacy.rip, legacy.rsp) == (GPRS[2] & 0xFFFF_FFFF, GPRS[1] & 0xFFFF_FFFF)
    assert legacy.segments[f.GUEST_CS_SELECTOR] == 0x23
    assert legacy.segments[f.GUEST_CS_ACCESS_RIGHTS] == 0xC0FB  # 32-bit ring-3 code
    assert legacy.segments[f.GUEST_SS_ACCESS_RIGHTS] == 0xC0F3


def test_sysenter_faults() -> None:
    no_cs = {**MSRS, msrs.IA32_SYSENTER_CS: 3}.__getitem__
    assert sysenter_fault(no_cs, FastCall.SYSENTER, 3)
    assert not sysenter_fault(MSRS.__getitem__, FastCall.SYSENTER, 3)
    assert sysenter_fault(MSRS.__getitem__, FastCall.SYSEXIT64, 3)
    assert not sysenter_fault(MSRS.__getitem__, FastCall.SYSEXIT64, 0)
