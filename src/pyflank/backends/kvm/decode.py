"""Finding the guest instruction behind a KVM exit, for the VMX exit-information fields.

KVM does not say where the instruction that exited starts, and it is not
consistent: an OUT that KVM's instruction emulator ran (always, at CPL0 under
a page-table-based KVM; string I/O everywhere) leaves RIP *after* the
instruction, while the VMX fast path leaves it *at* the instruction; an MMIO
write has RIP after, an MMIO read at.  These helpers decode guest code
forward from RIP, or backward from it (the shortest instruction that ends
exactly at RIP and fits every fact the exit reported), so the backend can
tell the two apart and report GUEST_RIP and the length as VMX would.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import iced_x86

from pyflank.backends.kvm.structs import KvmSregs
from pyflank.intel_x64.paging import guest_linear
from pyflank.memory import GuestLinear, GuestPhysicalMemory

MAX_INSTRUCTION_LENGTH: Final = 15

_LEGACY_PREFIXES: Final = frozenset({0x66, 0x67, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65})
# opcode -> (is_in, string, operand is imm8, byte sized)
_IO_OPCODES: Final[dict[int, tuple[bool, bool, bool, bool]]] = {
    0xE4: (True, False, True, True), 0xE5: (True, False, True, False),
    0xEC: (True, False, False, True), 0xED: (True, False, False, False),
    0xE6: (False, False, True, True), 0xE7: (False, False, True, False),
    0xEE: (False, False, False, True), 0xEF: (False, False, False, False),
    0x6C: (True, True, False, True), 0x6D: (True, True, False, False),
    0x6E: (False, True, False, True), 0x6F: (False, True, False, False),
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class IoMatch:
    """One I/O instruction: its length and the facts that go into the exit qualification."""

    length: int
    string: bool
    rep: bool
    immediate: bool


def parse_io(code: bytes, *, port: int, size: int, is_in: bool, dx: int) -> IoMatch | None:
    """The I/O instruction at the start of ``code``, if it is one that fits the exit."""
    i, operand16, rep = 0, False, False
    while i < len(code) and code[i] in _LEGACY_PREFIXES:
        operand16 |= code[i] == 0x66
        rep |= code[i] == 0xF3
        i += 1
    if i < len(code) and 0x40 <= code[i] <= 0x4F:  # REX: no meaning for I/O, but legal
        i += 1
    if i >= len(code) or code[i] not in _IO_OPCODES:
        return None
    op_in, string, immediate, byte = _IO_OPCODES[code[i]]
    length = i + 2 if immediate else i + 1
    op_size = 1 if byte else 2 if operand16 else 4
    if op_in != is_in or op_size != size or length > len(code):
        return None
    op_port = code[i + 1] if immediate else dx & 0xFFFF
    if op_port != port:
        return None
    return IoMatch(length, string, rep and string, immediate)


def io_ending_at(
    before: bytes, *, port: int, size: int, is_in: bool, dx: int, count: int = 1
) -> IoMatch | None:
    """The shortest I/O instruction that ends where ``before`` ends and fits the exit."""
    for length in range(1, min(len(before), MAX_INSTRUCTION_LENGTH) + 1):
        match = parse_io(before[-length:], port=port, size=size, is_in=is_in, dx=dx)
        if match is not None and match.length == length and (count == 1 or match.rep):
            return match
    return None


def instruction_length_at(code: bytes, rip: int) -> int:
    """Length of the instruction at ``rip`` (0 when it does not decode)."""
    decoder = iced_x86.Decoder(64, code, ip=rip)
    instr = decoder.decode()
    return 0 if instr.code == iced_x86.Code.INVALID else int(instr.len)


def memory_access_ending_at(before: bytes, rip: int, access_size: int) -> int:
    """Length of the shortest memory-operand instruction of ``access_size`` ending at ``rip``."""
    for length in range(1, min(len(before), MAX_INSTRUCTION_LENGTH) + 1):
        decoder = iced_x86.Decoder(64, before[-length:], ip=rip - length)
        instr = decoder.decode()
        if instr.code == iced_x86.Code.INVALID or instr.len != length:
            continue
        kinds = [instr.op_kind(k) for k in range(instr.op_count)]
        size = iced_x86.MemorySizeExt.size(instr.memory_size)
        if iced_x86.OpKind.MEMORY in kinds and size in (access_size, 0):
            return length
    return 0


def guest_code(memory: GuestPhysicalMemory, sregs: KvmSregs) -> GuestLinear:
    """Guest memory as the vCPU's paging maps it now (instruction fetch)."""
    return guest_linear(memory, cr0=sregs.cr0, cr3=sregs.cr3, efer=sregs.efer)
