"""unicorn, reached through its C API where the Python binding is too slow for an exit path.

The binding wraps every hook in two Python frames and converts every register through a
class lookup: about 2 us per register read on this machine.  The exit path instead keeps
pre-built ctypes arrays and arguments for ``uc_reg_read_batch`` / ``uc_reg_write_batch``
and ``uc_vmem_read``, and installs its hooks as plain ``CFUNCTYPE`` callbacks.  Even so a
ctypes call costs ~0.16 us plus ~0.04 us per argument, so the hottest exits read and
write the general registers in place instead (``register_file``).  Everything else
(mapping, contexts, one-off register access) goes through the binding.
"""

from __future__ import annotations

import ctypes
import struct
from collections.abc import Sequence
from typing import Any

import unicorn
from unicorn import unicorn_const as uc_const
from unicorn import x86_const as x86
from unicorn.unicorn_py3 import unicorn as _binding_module

# The binding ships py.typed but leaves most of its API unannotated: go through Any.
_binding: Any = _binding_module
_unicorn: Any = unicorn
Uc: Any = _unicorn.Uc
UcError: Any = _unicorn.UcError
_lib = ctypes.CDLL(_binding.uclib._name)
# Short calls made from inside hooks keep the GIL (PyDLL): the thread already holds it, and
# handing it over and back costs more than the call.  emu_start must release it.
_fast = ctypes.PyDLL(_binding.uclib._name)
_reg_read_batch = _fast.uc_reg_read_batch
_reg_read_batch.restype = ctypes.c_int
_reg_write_batch = _fast.uc_reg_write_batch
_reg_write_batch.restype = ctypes.c_int
_vmem_read = _fast.uc_vmem_read  # arguments passed as ready ctypes objects: no argtypes cost
_vmem_read.restype = ctypes.c_int
read_code: Any = _vmem_read  # uc_vmem_read, for ``Engine.code2_args``
_emu_start = _lib.uc_emu_start
_emu_start.argtypes = [
    ctypes.c_void_p,
    ctypes.c_uint64,
    ctypes.c_uint64,
    ctypes.c_uint64,
    ctypes.c_size_t,
]
_emu_start.restype = ctypes.c_int
_emu_stop = _lib.uc_emu_stop
_emu_stop.argtypes = [ctypes.c_void_p]
_emu_stop.restype = ctypes.c_int
emu_stop: Any = _emu_stop  # for ``stop_gate``'s hook
_hook_add = _lib.uc_hook_add
_hook_add.restype = ctypes.c_int
_hook_del = _lib.uc_hook_del
_hook_del.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_hook_del.restype = ctypes.c_int

# Callback shapes of the hooks the exit path uses (unicorn.h).
INSN_CB = ctypes.CFUNCTYPE(ctypes.c_uint32, ctypes.c_void_p, ctypes.c_void_p)  # CPUID, RDTSC(P)
IN_CB = ctypes.CFUNCTYPE(
    ctypes.c_uint32, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_void_p
)
OUT_CB = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p
)
INTR_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint32, ctypes.c_void_p)
SYSCALL_CB = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)
BLOCK_CB = ctypes.CFUNCTYPE(
    None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32, ctypes.c_void_p
)

# Ignored (the exit list is used instead): emulation runs until something stops it.
NO_END = 0
MAX_INSTRUCTION = 15
_PROT_EXEC = ctypes.c_int(uc_const.UC_PROT_EXEC)

# The registers saved at every exit, in this order: StateSave's GPRs, then RIP, RSP, RFLAGS,
# then the state a guest changes without exiting (control registers, selectors, bases).
GPR_IDS = (
    x86.UC_X86_REG_RAX, x86.UC_X86_REG_RBX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX,
    x86.UC_X86_REG_RBP, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDI, x86.UC_X86_REG_R8,
    x86.UC_X86_REG_R9, x86.UC_X86_REG_R10, x86.UC_X86_REG_R11, x86.UC_X86_REG_R12,
    x86.UC_X86_REG_R13, x86.UC_X86_REG_R14, x86.UC_X86_REG_R15,
)  # fmt: skip
SYSTEM_IDS = (
    x86.UC_X86_REG_CR0, x86.UC_X86_REG_CR3, x86.UC_X86_REG_CR4, x86.UC_X86_REG_DR7,
    x86.UC_X86_REG_ES, x86.UC_X86_REG_CS, x86.UC_X86_REG_SS, x86.UC_X86_REG_DS,
    x86.UC_X86_REG_FS, x86.UC_X86_REG_GS, x86.UC_X86_REG_FS_BASE, x86.UC_X86_REG_GS_BASE,
)  # fmt: skip
SAVED_IDS = (*GPR_IDS, x86.UC_X86_REG_RIP, x86.UC_X86_REG_RSP, x86.UC_X86_REG_RFLAGS, *SYSTEM_IDS)
RIP_INDEX = len(GPR_IDS)
# Descriptor-table registers come back as uc_x86_mmr (selector, base, limit, flags).
MMR_IDS = (x86.UC_X86_REG_GDTR, x86.UC_X86_REG_IDTR, x86.UC_X86_REG_LDTR, x86.UC_X86_REG_TR)
# The GPRs in the SDM's numbering (RAX, RCX, RDX, RBX, RSP, RBP, RSI, RDI, R8-R15), as
# exit records and entry plans order them; a resume writes them, then RIP.
SDM_GPR_IDS = (
    x86.UC_X86_REG_RAX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX, x86.UC_X86_REG_RBX,
    x86.UC_X86_REG_RSP, x86.UC_X86_REG_RBP, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDI,
    x86.UC_X86_REG_R8, x86.UC_X86_REG_R9, x86.UC_X86_REG_R10, x86.UC_X86_REG_R11,
    x86.UC_X86_REG_R12, x86.UC_X86_REG_R13, x86.UC_X86_REG_R14, x86.UC_X86_REG_R15,
)  # fmt: skip
RESUME_IDS = (*SDM_GPR_IDS, x86.UC_X86_REG_RIP)


class Mmr(ctypes.Structure):
    _fields_ = (
        ("selector", ctypes.c_uint16),
        ("base", ctypes.c_uint64),
        ("limit", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    )


class EngineError(RuntimeError):
    """unicorn refused an operation the backend relies on."""


def _check(status: int, what: str) -> None:
    if status:
        raise EngineError(f"{what}: {UcError(status)}")


class RegisterBatch:
    """A fixed list of registers read or written with one C call.

    64-bit registers live in one buffer, unpacked with a precompiled ``struct`` (several
    times faster than slicing a ctypes array); descriptor-table registers (``mmr_ids``)
    are read by the same call into ``mmrs``.  The status is not checked on this path: the
    register ids are fixed and valid, and that is the only thing the call can reject.
    """

    def __init__(
        self, handle: ctypes.c_void_p, ids: Sequence[int], mmr_ids: Sequence[int] = ()
    ) -> None:
        count = len(ids) + len(mmr_ids)
        self._handle = handle
        self._count = ctypes.c_int(count)
        self._ids = (ctypes.c_int * count)(*ids, *mmr_ids)
        self.buffer = ctypes.create_string_buffer(8 * len(ids))
        self._codec = struct.Struct(f"<{len(ids)}Q")
        self.mmrs = (Mmr * len(mmr_ids))()
        base, mmr_base = ctypes.addressof(self.buffer), ctypes.addressof(self.mmrs)
        size = ctypes.sizeof(Mmr)
        self._ptrs = (ctypes.c_void_p * count)(
            *(base + 8 * i for i in range(len(ids))),
            *(mmr_base + size * i for i in range(len(mmr_ids))),
        )
        self._args = (self._handle, self._ids, self._ptrs, self._count)
        self._unpack = self._codec.unpack_from

    def read(self) -> tuple[int, ...]:
        _reg_read_batch(*self._args)
        values: tuple[int, ...] = self._unpack(self.buffer)
        return values

    def mmr_bytes(self) -> bytes:
        """The descriptor-table registers of the last read, raw (cheap to compare)."""
        return bytes(self.mmrs)

    def mmr_tuples(self) -> tuple[tuple[int, int, int, int], ...]:
        return tuple((m.selector, m.base, m.limit, m.flags) for m in self.mmrs)

    def write(self, values: Sequence[int]) -> None:
        self._codec.pack_into(self.buffer, 0, *values)
        _check(_reg_write_batch(*self._args), "reg write")


class Engine:
    """One unicorn x86-64 CPU (an AMD EPYC model, for its SVM intercepts) and its hooks."""

    def __init__(self) -> None:
        self.uc: Any = Uc(uc_const.UC_ARCH_X86, uc_const.UC_MODE_64)
        self.uc.ctl_set_cpu_model(x86.UC_CPU_X86_EPYC)
        # No end address: with one, unicorn translates end - 1 when emulation stops, and
        # the page fault that costs the guest is its CR2.  An empty exit list has no end.
        self.uc.ctl_exits_enabled(True)
        self.uc.ctl_set_exits([])
        self.handle = ctypes.c_void_p(self.uc._uch.value)  # the engine, for C calls
        self.tsc_aux: int | None = None  # cpu_msrs' copy; None: read it from the engine
        self._callbacks: dict[int, Any] = {}
        self.saved = RegisterBatch(self.handle, SAVED_IDS, MMR_IDS)
        self.resume_at = RegisterBatch(self.handle, RESUME_IDS)  # GPRs (SDM order), RIP
        self._code = ctypes.create_string_buffer(MAX_INSTRUCTION + 1)
        self._fetch_at = ctypes.c_uint64(0)
        self._fetch_size = ctypes.c_size_t(MAX_INSTRUCTION)
        # The first two bytes at ``code_at``: ``read_code(*code2_args)``, then
        # ``code2.raw``.  Prebuilt for the hot exits, whose unprefixed opcode decides
        # their length; the caller keeps the two bytes on one page.
        self.code_at = ctypes.c_uint64(0)
        self.code2 = (ctypes.c_char * 2)()
        self.code2_args = (self.handle, self.code_at, _PROT_EXEC, self.code2, ctypes.c_size_t(2))

    # -- memory -----------------------------------------------------------------------
    def map_host_memory(self, address: int, size: int, host_pointer: int) -> None:
        self.uc.mem_map_ptr(address, size, uc_const.UC_PROT_ALL, host_pointer)

    def map_private(self, address: int, size: int) -> None:
        self.uc.mem_map(address, size, uc_const.UC_PROT_ALL)

    def write_physical(self, address: int, data: bytes) -> None:
        self.uc.mem_write(address, data)

    def read_physical(self, address: int, size: int) -> bytes:
        return bytes(self.uc.mem_read(address, size))

    def protect(self, address: int, size: int, writable: bool) -> None:
        perms = uc_const.UC_PROT_ALL if writable else uc_const.UC_PROT_READ | uc_const.UC_PROT_EXEC
        self.uc.mem_protect(address, size, perms)

    def fetch(self, rip: int) -> bytes:
        """Up to 15 instruction bytes at guest-virtual ``rip`` (fewer where mapping ends)."""
        buf, at = self._code, self._fetch_at
        at.value = rip
        room = 0x1000 - (rip & 0xFFF)
        if room >= MAX_INSTRUCTION:
            if _vmem_read(self.handle, at, _PROT_EXEC, buf, self._fetch_size):
                return b""
            return buf.raw[:MAX_INSTRUCTION]
        # Across a page end: the next page may be unmapped, and a failed read leaves its
        # address in CR2 (unicorn translates like an access), so CR2 is put back.
        out = b""
        if _vmem_read(self.handle, at, _PROT_EXEC, buf, ctypes.c_size_t(room)):
            return out
        out = buf.raw[:room]
        cr2 = self.read(x86.UC_X86_REG_CR2)
        at.value = rip + room
        rest = ctypes.c_size_t(MAX_INSTRUCTION - room)
        if _vmem_read(self.handle, at, _PROT_EXEC, buf, rest) == 0:
            out += buf.raw[: MAX_INSTRUCTION - room]
        else:
            self.write(x86.UC_X86_REG_CR2, cr2)
        return out

    # -- registers ----------------------------------------------------------------------
    def read(self, reg: int) -> int:
        value: int = self.uc.reg_read(reg)
        return value

    def write(self, reg: int, value: int) -> None:
        self.uc.reg_write(reg, value)

    def write_mmr(self, reg: int, selector: int, base: int, limit: int, flags: int) -> None:
        self.uc.reg_write(reg, (selector, base, limit, flags))

    def read_msr_raw(self, msr: int) -> int:
        value: int = self.uc.msr_read(msr)
        return value

    def write_msr_raw(self, msr: int, value: int) -> None:
        self.uc.msr_write(msr, value)

    # -- execution ----------------------------------------------------------------------
    def start(self, rip: int) -> int:
        """Run from ``rip`` until stopped; the unicorn status (0 = stopped cleanly)."""
        status: int = _emu_start(self.handle, rip, NO_END, 0, 0)
        return status

    def stop(self) -> None:
        _emu_stop(self.handle)

    def context_save(self) -> Any:
        return self.uc.context_save()

    def context_restore(self, context: Any) -> None:
        self.uc.context_restore(context)
        self.tsc_aux = None

    # -- hooks --------------------------------------------------------------------------
    def hook(
        self,
        kind: int,
        callback: Any,
        *extra: ctypes.c_int,
        begin: int = 1,
        end: int = 0,
        user_data: int = 0,
    ) -> int:
        """Add a hook; it fires for addresses in [begin, end] (every address: begin > end)."""
        handle = _binding.uc_hook_h()
        status = _hook_add(
            self.handle,
            ctypes.byref(handle),
            ctypes.c_int(kind),
            callback,
            ctypes.c_void_p(user_data),
            ctypes.c_uint64(begin),
            ctypes.c_uint64(end),
            *extra,
        )
        _check(status, f"hook_add({kind})")
        self._callbacks[handle.value] = callback  # ctypes callbacks must outlive the hook
        return int(handle.value)

    def hook_instruction(self, instruction: int, callback: Any) -> int:
        return self.hook(uc_const.UC_HOOK_INSN, callback, ctypes.c_int(instruction))

    def unhook(self, handle: int) -> None:
        _check(_hook_del(self.handle, handle), "hook_del")
        self._callbacks.pop(handle, None)
