"""Finding unicorn's ``CPUX86State`` and checking its layout (see ``register_file``).

Nothing exported gives its address.  Once per process, on a throwaway engine, registers
written through the API are searched for in the memory that ``uc_struct``'s pointers
lead to, through ``/proc/self/mem``: a read there fails cleanly where a stray pointer
would fault.  The same engine runs a few instructions to learn QEMU's numbering of the
condition-code states whose RFLAGS the exit path computes itself, checking the result
against ``uc_reg_read``, and two throwaway engines each raise a #GP whose error code
(the selector) shows where QEMU keeps the error code of the exception being raised, which
no API reports.  Every engine is then checked field by field before its register file is
used in place; if anything disagrees, the exit path goes through the API instead (and
exceptions report reconstructed error codes).
"""

from __future__ import annotations

import ctypes
import os
import struct
import threading
from dataclasses import dataclass
from typing import Any

from unicorn import unicorn_const as uc_const
from unicorn import x86_const as x86

from pyflank.backends.emu.engine import Uc, UcError
from pyflank.backends.emu.register_file import (
    CC_OP_AT,
    CR_AT,
    FLAGS_AT,
    HEAD_SIZE,
    QEMU_GPR_IDS,
    RIP_AT,
    SEGMENT_SIZE,
    SEGMENTS_AT,
    InPlace,
    RegisterFile,
    ThroughApi,
)
from pyflank.intel_x64.registers import RFLAGS_IF

_UC_STRUCT_SCAN = 4096  # bytes of uc_struct searched for the pointer to the CPU
_CPU_WINDOW = 0x20000  # bytes after a candidate pointer searched for the registers
_DR_WINDOW = 0x4000  # bytes of CPUX86State searched for DR7
_ERROR_CODE_WINDOW = 128  # bytes before DR7 searched for the error code (it precedes DR0)
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_GPRS_RIP = struct.Struct("<17Q")  # the start of the head: GPRs (QEMU order), RIP
_FS_BASE_AT = SEGMENTS_AT + 4 * SEGMENT_SIZE + 8
_GS_BASE_AT = SEGMENTS_AT + 5 * SEGMENT_SIZE + 8
_GDT_AT = SEGMENTS_AT + 8 * SEGMENT_SIZE
_IDT_AT = SEGMENTS_AT + 9 * SEGMENT_SIZE
_CODE = 0x1000
# STD; STC; CPUID (the flags all in cc_src); XOR ECX, ECX; CPUID (nothing live)
_FLAGS_PROGRAM = bytes.fromhex("fd f9 0fa2 31c9 0fa2")


@dataclass(frozen=True)
class Layout:
    """Where things are, the same for every engine of this process's unicorn."""

    cpu_pointer_at: int  # in uc_struct: the pointer to the CPU
    env_delta: int  # CPUX86State's distance from where that pointer points
    dr7_at: int  # in CPUX86State
    cc_op_clr: int  # QEMU's CC_OP_CLR
    cc_op_eflags: int  # QEMU's CC_OP_EFLAGS
    error_code_at: int | None  # in CPUX86State: the raised exception's error code


class _Memory:
    """Reads of this process's memory that fail instead of faulting."""

    def __init__(self) -> None:
        self._fd = os.open("/proc/self/mem", os.O_RDONLY)

    def read(self, address: int, size: int) -> bytes:
        if not 0 < address < 1 << 63:
            return b""
        try:
            return os.pread(self._fd, size, address)
        except OSError:
            return b""

    def pointer(self, address: int) -> int | None:
        data = self.read(address, 8)
        return int(_U64.unpack(data)[0]) if len(data) == 8 else None

    def close(self) -> None:
        os.close(self._fd)


def _handle(uc: Any) -> int:
    return int(uc._uch.value)


def _pattern(seed: int) -> tuple[int, ...]:
    """17 distinct values (16 GPRs and RIP) unlikely to be in memory by chance."""
    return tuple(0x5EED_0000_0000_0000 | seed << 20 | i << 8 | 0xA5 for i in range(17))


def _write_head(uc: Any, values: tuple[int, ...]) -> None:
    # One register at a time: a batch would leave the pattern in a buffer of our own.
    for reg, value in zip((*QEMU_GPR_IDS, x86.UC_X86_REG_RIP), values, strict=True):
        uc.reg_write(reg, value)


def _shows(uc: Any, memory: _Memory, env: int, values: tuple[int, ...]) -> bool:
    """Whether registers written now read back at ``env``."""
    _write_head(uc, values)
    return memory.read(env, RIP_AT + 8) == _GPRS_RIP.pack(*values)


def _find_env(uc: Any, memory: _Memory) -> tuple[int, int] | None:
    """(offset in uc_struct of the CPU pointer, offset from it of CPUX86State)."""
    handle = _handle(uc)
    values, check = _pattern(handle & 0xFFF), _pattern(~handle & 0xFFF)
    _write_head(uc, values)
    needle = _GPRS_RIP.pack(*values)
    words = memory.read(handle, _UC_STRUCT_SCAN)
    for at in range(0, len(words) - 7, 8):
        (pointer,) = _U64.unpack_from(words, at)
        if pointer & 7 or not 0x10000 <= pointer < 1 << 47:
            continue
        window = memory.read(pointer, _CPU_WINDOW)
        found = window.find(needle)
        while found >= 0:  # a copy of the values elsewhere does not follow a new write
            if _shows(uc, memory, pointer + found, check):
                return at, found
            _write_head(uc, values)
            found = window.find(needle, found + 1)
    return None


def _find_dr7(uc: Any, env: int, memory: _Memory) -> int | None:
    """DR7's offset: where two values written in turn both appear (no enable bits set)."""
    first, second = _U64.pack(0x5A5A_0400), _U64.pack(0x3C3C_0400)
    uc.reg_write(x86.UC_X86_REG_DR7, 0x5A5A_0400)
    window = memory.read(env, _DR_WINDOW)
    at = window.find(first, HEAD_SIZE)
    while at >= 0:
        if at % 8 == 0:
            uc.reg_write(x86.UC_X86_REG_DR7, 0x3C3C_0400)
            if memory.read(env + at, 8) == second:
                return at
            uc.reg_write(x86.UC_X86_REG_DR7, 0x5A5A_0400)
        at = window.find(first, at + 1)
    return None


def _cc_ops(uc: Any, env: int, dr7_at: int, memory: _Memory) -> tuple[int, int] | None:
    """(CC_OP_CLR, CC_OP_EFLAGS), each confirmed by RFLAGS computed as ``InPlace`` does."""
    seen: list[tuple[bytes, int]] = []

    def on_cpuid(engine: Any, _data: Any) -> int:
        seen.append((memory.read(env, HEAD_SIZE), engine.reg_read(x86.UC_X86_REG_RFLAGS)))
        return 1

    uc.mem_map(_CODE, 0x1000, uc_const.UC_PROT_ALL)
    uc.mem_write(_CODE, _FLAGS_PROGRAM)
    uc.hook_add(uc_const.UC_HOOK_INSN, on_cpuid, None, 1, 0, x86.UC_X86_INS_CPUID)
    uc.emu_start(_CODE, _CODE + len(_FLAGS_PROGRAM))
    if len(seen) != 2 or any(len(raw) != HEAD_SIZE for raw, _ in seen):
        return None
    ops = [_U32.unpack_from(raw, CC_OP_AT)[0] for raw, _ in seen]
    eflags_op, clr_op = ops
    view = InPlace(env, dr7_at, clr_op, eflags_op)
    if eflags_op == clr_op or any(view.rflags(raw) != api for raw, api in seen):
        return None
    return clr_op, eflags_op


def _selector_fault(selector: int) -> bytes:
    """MOV EAX, selector; MOV DS, EAX: #GP(selector) on an engine with an empty GDT."""
    return b"\xb8" + _U32.pack(selector) + b"\x8e\xd8"


def _error_code_offsets(uc: Any, env: int, dr7_at: int, memory: _Memory, selector: int) -> set[int]:
    """Where ``selector`` is, as a 32-bit word, near DR7 when its #GP reaches the hook."""
    seen: list[bytes] = []

    def on_interrupt(engine: Any, number: int, _data: Any) -> None:
        if number == 13:
            seen.append(memory.read(env + dr7_at - _ERROR_CODE_WINDOW, _ERROR_CODE_WINDOW))
        engine.emu_stop()

    code = _selector_fault(selector)
    uc.mem_write(_CODE, code)
    uc.hook_add(uc_const.UC_HOOK_INTR, on_interrupt)
    uc.emu_start(_CODE, _CODE + len(code))
    if len(seen) != 1 or len(seen[0]) != _ERROR_CODE_WINDOW:
        return set()
    window = seen[0]
    return {
        dr7_at - _ERROR_CODE_WINDOW + at
        for at in range(0, _ERROR_CODE_WINDOW, 4)
        if _U32.unpack_from(window, at)[0] == selector
    }


def _find_error_code(pointer_at: int, delta: int, dr7_at: int, memory: _Memory) -> int | None:
    """The error code's offset: the one place two fresh engines' #GPs leave theirs."""
    found: set[int] | None = None
    for selector in (0x1238, 0x2340):
        uc = Uc(uc_const.UC_ARCH_X86, uc_const.UC_MODE_64)
        uc.mem_map(_CODE, 0x1000, uc_const.UC_PROT_ALL)  # (unicorn makes its CPU now)
        cpu = memory.pointer(_handle(uc) + pointer_at)
        if cpu is None:
            return None
        offsets = _error_code_offsets(uc, cpu + delta, dr7_at, memory, selector)
        found = offsets if found is None else found & offsets
    return found.pop() if found is not None and len(found) == 1 else None


def _discover() -> Layout | None:
    """The layout, learned on a throwaway engine."""
    uc = Uc(uc_const.UC_ARCH_X86, uc_const.UC_MODE_64)
    memory = _Memory()
    try:
        found = _find_env(uc, memory)
        if found is None:
            return None
        pointer_at, delta = found
        cpu = memory.pointer(_handle(uc) + pointer_at)
        if cpu is None:
            return None
        env = cpu + delta
        dr7_at = _find_dr7(uc, env, memory)
        if dr7_at is None:
            return None
        ops = _cc_ops(uc, env, dr7_at, memory)
        if ops is None:
            return None
        error_code_at = _find_error_code(pointer_at, delta, dr7_at, memory)
        return Layout(pointer_at, delta, dr7_at, *ops, error_code_at)
    finally:
        memory.close()


def _holds(uc: Any, env: int, layout: Layout, memory: _Memory) -> bool:
    """Registers written through the API read back at the offsets the exit path uses."""
    if not all(_shows(uc, memory, env, _pattern(seed)) for seed in (0x123, 0x456)):
        return False
    uc.reg_write(x86.UC_X86_REG_FS_BASE, 0xF5F5_1000)
    uc.reg_write(x86.UC_X86_REG_GS_BASE, 0x6565_2000)
    uc.reg_write(x86.UC_X86_REG_GDTR, (0, 0x6D7D_3000, 0x77, 0))
    uc.reg_write(x86.UC_X86_REG_IDTR, (0, 0x1D7D_4000, 0x55, 0))
    uc.reg_write(x86.UC_X86_REG_CR3, 0x3000)
    uc.reg_write(x86.UC_X86_REG_DR7, 0x7878_0400)
    uc.reg_write(x86.UC_X86_REG_RFLAGS, 0x2 | RFLAGS_IF | 0x41)  # IF, ZF, CF
    head = memory.read(env, HEAD_SIZE)
    if len(head) != HEAD_SIZE:
        return False
    expected = (
        (_FS_BASE_AT, _U64, 0xF5F5_1000),
        (_GS_BASE_AT, _U64, 0x6565_2000),
        (_GDT_AT + 8, _U64, 0x6D7D_3000),
        (_GDT_AT + 16, _U32, 0x77),
        (_IDT_AT + 8, _U64, 0x1D7D_4000),
        (_IDT_AT + 16, _U32, 0x55),
        (CR_AT + 3 * 8, _U64, 0x3000),
        (CR_AT, _U64, uc.reg_read(x86.UC_X86_REG_CR0)),
        (CR_AT + 4 * 8, _U64, uc.reg_read(x86.UC_X86_REG_CR4)),
        (FLAGS_AT + 16, _U64, 0x41),  # cc_src: the arithmetic flags written
        (CC_OP_AT, _U32, layout.cc_op_eflags),
    )
    for at, codec, value in expected:
        if codec.unpack_from(head, at)[0] != value:
            return False
    if not _U64.unpack_from(head, FLAGS_AT)[0] & RFLAGS_IF:
        return False
    return memory.read(env + layout.dr7_at, 8) == _U64.pack(0x7878_0400)


_PROBED = (
    *QEMU_GPR_IDS, x86.UC_X86_REG_RIP, x86.UC_X86_REG_RFLAGS, x86.UC_X86_REG_FS_BASE,
    x86.UC_X86_REG_GS_BASE, x86.UC_X86_REG_CR3, x86.UC_X86_REG_DR7,
    x86.UC_X86_REG_GDTR, x86.UC_X86_REG_IDTR,
)  # fmt: skip
_layout: Layout | None = None
_discovered = False
_lock = threading.Lock()


def _env_of(uc: Any) -> tuple[int, Layout] | None:
    """CPUX86State of ``uc`` and the layout, checked; None if not confirmed."""
    global _layout, _discovered  # the per-process layout, found once
    if not _discovered:
        _discovered = True
        _layout = _discover()
    if _layout is None:
        return None
    memory = _Memory()
    try:
        cpu = memory.pointer(_handle(uc) + _layout.cpu_pointer_at)
        if cpu is None:
            return None
        env = cpu + _layout.env_delta
        return (env, _layout) if _holds(uc, env, _layout, memory) else None
    finally:
        memory.close()


FORCE_API = "PYFLANK_EMU_REGISTERS"  # set to "api" to never use the register file in place


def register_file(uc: Any, handle: ctypes.c_void_p) -> RegisterFile:
    """The fastest checked view of ``uc``'s registers; call it on a fresh engine."""
    if os.environ.get(FORCE_API) == "api":
        return ThroughApi(handle)
    saved = [uc.reg_read(reg) for reg in _PROBED]
    try:
        with _lock:
            found = _env_of(uc)
    except (OSError, UcError):  # no /proc/self/mem; an engine that refused a probe
        found = None
    finally:
        for reg, value in zip(_PROBED, saved, strict=True):
            uc.reg_write(reg, value)
    if found is None:
        return ThroughApi(handle)
    env, layout = found
    return InPlace(env, layout.dr7_at, layout.cc_op_clr, layout.cc_op_eflags, layout.error_code_at)
