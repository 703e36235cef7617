"""The register file of unicorn's CPU, read and written in place by the exit path.

Each exit reads the general registers and checks whether any other state it saves moved.
Through ``uc_reg_read_batch`` that is a ctypes call (~0.4 us) and a struct unpack on the
way in and another call on the way out.  unicorn's own ``uc_reg_read`` of a general
register is a load from QEMU's ``CPUX86State``, whose head is (target/i386/cpu.h)::

      0  regs[16]        RAX RCX RDX RBX RSP RBP RSI RDI R8..R15
    128  eip
    136  eflags, cc_dst, cc_src, cc_src2, cc_op, df     (RFLAGS, evaluated lazily)
    176  hflags, hflags2, segs[6], ldt, tr, gdt, idt, cr[5]
    464

and ``dr[7]`` lies further on.  So the exit path copies those 464 bytes (and DR7) out in
place: the general registers, RIP and eflags are unpacked from them; the bytes after them
are compared with those of the last exit (``raw.endswith(seen)``, where ``seen`` starts
after the condition-code values when none of them is live, as after XOR r,r), and only
when something differs is any of it looked at again (see ``capture``).  General registers
are written back in place too, which is all that ``uc_reg_write`` does for them.
``register_probe`` finds the address and checks the layout; where it cannot,
``ThroughApi`` gives the same view with batch calls.
"""

from __future__ import annotations

import ctypes
import functools
import struct
from collections.abc import Callable
from typing import Final, Protocol

from unicorn import x86_const as x86

from pyflank.backends.emu.engine import MMR_IDS, SYSTEM_IDS, RegisterBatch

# CPUX86State offsets (see the module docstring).
RIP_AT: Final = 128
FLAGS_AT: Final = 136
CC_AT: Final = 144  # cc_dst, cc_src, cc_src2: dead in some states
CC_OP_AT: Final = 168
SYSTEM_AT: Final = 176
HEAD_SIZE: Final = 464
SEGMENT_SIZE: Final = 24  # SegmentCache: selector (u32), base (u64), limit (u32), flags (u32)
SEGMENTS_AT: Final = 184  # ES CS SS DS FS GS, then LDTR TR GDTR IDTR
CR_AT: Final = SEGMENTS_AT + 10 * SEGMENT_SIZE
DF_MASK: Final = 0x400
ZF_PF: Final = 0x44
HF_INHIBIT_IRQ: Final = 1 << 3  # in hflags (SYSTEM_AT): STI/MOV SS shadow

# The general registers in QEMU's order, then RIP: the first 136 bytes of a head.
QEMU_GPR_IDS: Final = (
    x86.UC_X86_REG_RAX, x86.UC_X86_REG_RCX, x86.UC_X86_REG_RDX, x86.UC_X86_REG_RBX,
    x86.UC_X86_REG_RSP, x86.UC_X86_REG_RBP, x86.UC_X86_REG_RSI, x86.UC_X86_REG_RDI,
    x86.UC_X86_REG_R8, x86.UC_X86_REG_R9, x86.UC_X86_REG_R10, x86.UC_X86_REG_R11,
    x86.UC_X86_REG_R12, x86.UC_X86_REG_R13, x86.UC_X86_REG_R14, x86.UC_X86_REG_R15,
)  # fmt: skip
HEAD_VALUES: Final = struct.Struct("<18Q")  # the GPRs (QEMU order), RIP, eflags
GPRS: Final = struct.Struct("<16Q")
# Matches no head (``raw.endswith(NEVER_SEEN)`` is false): what was seen is unknown.
NEVER_SEEN: Final = bytes(HEAD_SIZE + 1)
_U64 = struct.Struct("<Q")
_U32 = struct.Struct("<I")
_FLAGS = struct.Struct("<QQQQIi")  # eflags, cc_dst, cc_src, cc_src2, cc_op, df


class RawHead(Protocol):
    @property
    def raw(self) -> bytes: ...


class RegisterFile(Protocol):
    """A view of the registers an exit saves.

    ``head.raw``: the 16 GPRs in QEMU's order, RIP and a word that changes with RFLAGS
    (``HEAD_VALUES``), then the rest of the flags' inputs (up to ``system_at``), then
    bytes that change whenever a system register does; ``dr7.value`` changes with DR7
    where the head does not cover it.  ``compared_from(raw)``: where the bytes compared
    between exits start.  ``rflags(raw)``: RFLAGS where the head alone gives it, else
    None.  ``write_gprs`` takes the 16 GPRs in QEMU's order.  ``error_code``: the error
    code of the exception being raised (an intercept's), where it can be read.
    """

    head: RawHead
    dr7: ctypes.c_uint64
    system_at: int
    write_gprs: Callable[..., None]
    error_code: ctypes.c_uint32 | None

    def compared_from(self, raw: bytes) -> int: ...

    def rflags(self, raw: bytes) -> int | None: ...

    def interrupt_shadow(self, raw: bytes) -> bool: ...  # blocking by STI or MOV SS


class InPlace:
    """The register file read and written where unicorn keeps it (``env``)."""

    system_at = SYSTEM_AT

    def __init__(
        self,
        env: int,
        dr7_at: int,
        cc_op_clr: int,
        cc_op_eflags: int,
        error_code_at: int | None = None,
    ) -> None:
        array = (ctypes.c_char * HEAD_SIZE).from_address(env)
        self.env = env  # the address of CPUX86State, for native code (``pyflank.native``)
        self.error_code = (
            None if error_code_at is None else ctypes.c_uint32.from_address(env + error_code_at)
        )
        self.head: RawHead = array
        self.dr7 = ctypes.c_uint64.from_address(env + dr7_at)
        # A memoryview exports its buffer faster than a ctypes array; a partial of a C
        # method costs no Python frame.
        view = memoryview(array).cast("B")
        self.write_gprs: Callable[..., None] = functools.partial(GPRS.pack_into, view, 0)
        self._clr, self._eflags = cc_op_clr, cc_op_eflags
        self.cc_op_clr = cc_op_clr

    def compared_from(self, raw: bytes) -> int:
        # XOR r,r leaves no condition-code value live: a loop's counter left in cc_dst
        # would otherwise look like an RFLAGS change at every exit.
        return CC_OP_AT if _U32.unpack_from(raw, CC_OP_AT)[0] == self._clr else CC_AT

    def interrupt_shadow(self, raw: bytes) -> bool:
        """QEMU's HF_INHIBIT_IRQ: the instruction after STI or MOV SS takes no interrupt."""
        return bool(_U32.unpack_from(raw, SYSTEM_AT)[0] & HF_INHIBIT_IRQ)

    def rflags(self, raw: bytes) -> int | None:
        """QEMU's ``cpu_compute_eflags`` for the two states whose flags need no helper:
        after XOR r,r (nothing live: ZF and PF) and after POPF/STC & co. (all in cc_src).
        """
        eflags, _dst, src, _src2, cc_op, df = _FLAGS.unpack_from(raw, FLAGS_AT)
        if cc_op == self._clr:
            return int(eflags | ZF_PF | df & DF_MASK)
        if cc_op == self._eflags:
            return int(eflags | src | df & DF_MASK)
        return None


class ThroughApi:
    """The same view through ``uc_reg_read_batch``: RFLAGS, then the system registers."""

    system_at = FLAGS_AT + 8

    def __init__(self, handle: ctypes.c_void_p) -> None:
        ids = (*QEMU_GPR_IDS, x86.UC_X86_REG_RIP, x86.UC_X86_REG_RFLAGS, *SYSTEM_IDS)
        self._batch = RegisterBatch(handle, ids, MMR_IDS)
        self._gprs = RegisterBatch(handle, QEMU_GPR_IDS)
        self.head: RawHead = self
        self.dr7 = ctypes.c_uint64(0)  # DR7 is in the batch
        self.error_code: ctypes.c_uint32 | None = None  # no API reports it
        self.write_gprs: Callable[..., None] = self._write

    @property
    def raw(self) -> bytes:
        self._batch.read()
        return self._batch.buffer.raw + self._batch.mmr_bytes()

    def compared_from(self, raw: bytes) -> int:
        return self.system_at

    def interrupt_shadow(self, raw: bytes) -> bool:
        return False  # not reachable through the API: taken as no shadow

    def rflags(self, raw: bytes) -> int | None:
        return int(_U64.unpack_from(raw, FLAGS_AT)[0])

    def _write(self, *values: int) -> None:
        self._gprs.write(values)
