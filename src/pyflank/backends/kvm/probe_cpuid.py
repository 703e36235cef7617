"""Does the guest see the CPUID table that KVM_SET_CPUID2 set?  Measured at CPL0 and CPL3.

KVM cannot trap CPUID to user space, so the VMM's CPUID behaviour is a table
given to KVM_SET_CPUID2.  A page-table-based KVM runs CPL3 natively (CPUID
there is the host's) and may not apply the table in its emulator either; the
probe sets a table with a few marked values and reads back what a guest sees.
"""

from __future__ import annotations

import dataclasses
import struct
from dataclasses import dataclass

import keystone

from pyflank.backends.kvm import abi
from pyflank.backends.kvm.device import CpuidEntry, KvmSystem
from pyflank.backends.kvm.tiny import TinyGuest

_TABLE, _RESULTS, _USER_STACK = 0x60000, 0x70000, 0x7F000
_SIGNATURE = b"PyFlankProbe"
_MARK = 0x5A5A_0001
_LEAF1_ECX_SSE3, _LEAF1_ECX_VMX, _LEAF1_ECX_HYPERVISOR = 1 << 0, 1 << 5, 1 << 31
# Bits KVM recomputes from guest state at run time (OSXSAVE, MONITOR, APIC, OSPKE, ...).
_DYNAMIC = {
    (0x1, 0): (0xFF00_0000, 1 << 27 | 1 << 3, 1 << 9),  # ebx APIC ID, ecx, edx
    (0x7, 0): (0, 1 << 4, 0),
}
_QUERIES = ((0x0, 0), (0x1, 0), (0x7, 0), (0x4000_0000, 0), (0x4000_0001, 0), (0x8000_0001, 0))

_LOOP = """
    mov esi, {table}
    mov edi, {results}
    mov r8d, [rsi]
    add rsi, 4
next:
    test r8d, r8d
    jz done
    mov eax, [rsi]
    mov ecx, [rsi + 4]
    cpuid
    mov [rdi], eax
    mov [rdi + 4], ebx
    mov [rdi + 8], ecx
    mov [rdi + 12], edx
    add rsi, 8
    add rdi, 16
    dec r8d
    jmp next
done:
    hlt
"""
# iretq to ring 3 (selectors of longmode's GDT); the final HLT there faults into a
# triple fault (no IDT), which ends the run just as well.
_TO_RING3 = "push 0x2b; push {stack}; push 2; push 0x33; push {start}; iretq\n"


@dataclass(frozen=True)
class CpuidCheck:
    """What the guest saw for each marked leaf, against what KVM_SET_CPUID2 was given."""

    ran: bool
    mismatches: tuple[str, ...] = ()

    @property
    def honoured(self) -> bool:
        return self.ran and not self.mismatches

    def describe(self) -> str:
        if not self.ran:
            return "not measured (the guest did not finish)"
        if not self.mismatches:
            return "honoured"
        return "NOT fully honoured: " + "; ".join(self.mismatches)


def probe_table(supported: list[CpuidEntry]) -> list[CpuidEntry]:
    """The supported table with marks: our signature leaves, SSE3 off, VMX and hypervisor on."""
    table = [e for e in supported if not 0x4000_0000 <= e.function < 0x5000_0000]
    for i, e in enumerate(table):
        if e.function == 1:
            ecx = (e.ecx & ~_LEAF1_ECX_SSE3) | _LEAF1_ECX_VMX | _LEAF1_ECX_HYPERVISOR
            table[i] = dataclasses.replace(e, ecx=ecx)
    ebx, ecx, edx = struct.unpack("<3I", _SIGNATURE)
    table.append(CpuidEntry(0x4000_0000, 0, 0, 0x4000_0001, ebx, ecx, edx))
    table.append(CpuidEntry(0x4000_0001, 0, 0, _MARK, 0, 0, 0))
    return table


def _expected(table: list[CpuidEntry], leaf: int, subleaf: int) -> tuple[int, int, int, int]:
    for e in table:
        if e.function == leaf and (e.index == subleaf or not e.significant_index):
            return e.registers
    return (0, 0, 0, 0)


def _program(user: bool) -> bytes:
    ks = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64)
    loop, _ = ks.asm(_LOOP.format(table=_TABLE, results=_RESULTS), 0x10040 if user else 0x10000)
    if not user:
        return bytes(loop)
    pre, _ = ks.asm(_TO_RING3.format(stack=_USER_STACK, start=0x10040), 0x10000)
    return bytes(pre).ljust(0x40, b"\x90") + bytes(loop)


def check_cpuid(
    system: KvmSystem, supported: list[CpuidEntry], *, user: bool, timeout: float
) -> CpuidCheck:
    table = probe_table(supported)
    with TinyGuest(system, _program(user), user=False) as guest:
        guest.vcpu.set_cpuid2(table)
        mem = guest.memory
        mem.write_u32(_TABLE, len(_QUERIES))
        for i, (leaf, subleaf) in enumerate(_QUERIES):
            mem.write_u32(_TABLE + 4 + 8 * i, leaf)
            mem.write_u32(_TABLE + 8 + 8 * i, subleaf)
        reason = guest.run(timeout)
        if reason not in (abi.KVM_EXIT_HLT, abi.KVM_EXIT_SHUTDOWN):
            return CpuidCheck(False)
        mismatches = []
        for i, (leaf, subleaf) in enumerate(_QUERIES):
            seen = struct.unpack_from("<4I", mem.read(_RESULTS + 16 * i, 16))
            want = _expected(table, leaf, subleaf)
            ignore = _DYNAMIC.get((leaf, subleaf), (0, 0, 0))
            ignore4 = (0, *ignore)
            for reg, s, w, skip in zip("abcd", seen, want, ignore4, strict=True):
                if (s ^ w) & ~skip:
                    mismatches.append(f"leaf {leaf:#x}.{subleaf} e{reg}x: set {w:#x}, saw {s:#x}")
        return CpuidCheck(True, tuple(mismatches))
