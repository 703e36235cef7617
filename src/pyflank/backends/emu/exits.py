"""The VM exits: unicorn hooks that stop the guest before an instruction retires.

Two kinds of hook deliver exits, and they resume differently:

* instruction hooks (CPUID, IN/OUT, RDTSC/RDTSCP) run inside the helper that executes the
  instruction.  The hook can set general registers and skip the instruction, but QEMU
  then runs on to the end of the translation block.  So when the handler only set
  registers and stepped past the instruction (``advance_rip``), that is done in place;
  anything else (another RIP, an injected event, changed guest state, halt) *drains*: the
  CPU state is saved, guest RAM turns read-only so the rest of the block cannot write
  memory, emulation stops at the block's end, and the run loop restores the saved state
  and makes the VM entry itself.
* exception-kind hooks (SVM intercepts, #UD for VMX instructions, guest exceptions) are
  precise: the block was left before the instruction.  A simple resume writes the
  registers and RIP in place; anything else stops emulation for the run loop.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from iced_x86 import Mnemonic
from unicorn import x86_const as x86

from pyflank.backends.emu import decode as dec
from pyflank.backends.emu import svm
from pyflank.backends.emu.engine import read_code
from pyflank.backends.emu.events import (
    ERROR_CODE_VECTORS,
    VECTOR_BP,
    VECTOR_DB,
    VECTOR_GP,
    VECTOR_PF,
    VECTOR_UD,
)
from pyflank.backends.emu.page_faults import page_fault_error_code
from pyflank.backends.emu.register_file import HEAD_VALUES
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.cpu import wrmsr_fault
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.msrs import VMCS_BACKED_MSRS
from pyflank.intel_x64.qualifications import InterruptionType
from pyflank.intel_x64.vmcs import VmcsState

if TYPE_CHECKING:
    from pyflank.backends.base import PortIo
    from pyflank.backends.emu.engine import Engine
    from pyflank.backends.emu.exit_info import ExitRecorder
    from pyflank.backends.emu.policy import ExitPolicy
    from pyflank.backends.emu.register_file import RawHead
    from pyflank.exit_handler import ExitHandlerIntelX64, StateSave
    from pyflank.intel_x64.vmcs import Vmcs
    from pyflank.memory import GuestPhysicalMemory

_LAUNCHED = VmcsState.LAUNCHED
_CPUID = int(ExitReason.CPUID)
_RDTSC = int(ExitReason.RDTSC)
_RDTSCP = int(ExitReason.RDTSCP)
_IO = int(ExitReason.IO_INSTRUCTION)
_SKIP = 1
_CPUID_INFO: Final = (_CPUID, 0, 2, 0, 0, 0, 0, 0, 0)  # an unprefixed CPUID's, prebuilt
_OPCODE: Final = b"\x0f\xa2"  # CPUID
_unpack_head = HEAD_VALUES.unpack_from
_MSR_LOW_END, _MSR_HIGH_BASE, _MSR_HIGH_END = 0x2000, 0xC000_0000, 0xC000_2000
# Quick lengths of the unprefixed encodings; anything else goes through the decoder.
_QUICK_LENGTH: Final = {
    b"\x0f\xa2": 2,  # CPUID
    b"\x0f\x31": 2,  # RDTSC
    b"\x0f\x32": 2,  # RDMSR
    b"\x0f\x30": 2,  # WRMSR
    b"\x0f\x08": 2,  # INVD
    b"\x0f\x09": 2,  # WBINVD
}
_IO_QUICK: Final = {  # unprefixed IN/OUT opcode -> (length, is IN, port is an immediate)
    0xE4: (2, True, True), 0xE5: (2, True, True), 0xE6: (2, False, True),
    0xE7: (2, False, True), 0xEC: (1, True, False), 0xED: (1, True, False),
    0xEE: (1, False, False), 0xEF: (1, False, False),
}  # fmt: skip
# SDM order of the GPRs in qualifications, as indexes into the saved register list.
SDM_GPR_ORDER: Final = (0, 2, 3, 1, -1, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)


def sdm_gprs(regs: tuple[int, ...]) -> list[int]:
    """GPR values in SDM numbering (RSP from its own slot)."""
    return [regs[i] if i >= 0 else regs[16] for i in SDM_GPR_ORDER]


class ExitHooks:
    """The hook half of ``EmuVcpu``, which provides what is declared here."""

    engine: Engine
    handler: ExitHandlerIntelX64
    exits: int
    trace: list[tuple[int, int]] | None
    _last_exit_reason: int
    state: StateSave
    vmcs: Vmcs
    policy: ExitPolicy
    record: ExitRecorder
    memory: GuestPhysicalMemory
    ports: PortIo
    stop_reason: object
    _draining: bool
    _needs_entry: bool
    # The register file in place (see register_file) and what the last exit saw in it.
    _head: RawHead
    _dr7: ctypes.c_uint64
    _write_gprs: Callable[..., None]
    _code_at: ctypes.c_uint64
    _code2: ctypes.Array[ctypes.c_char]
    _code2_args: tuple[object, ...]
    _seen: bytes
    _seen_regs: tuple[int, int, int, int]

    def _save(self) -> tuple[int, ...]:
        raise NotImplementedError

    def _store_moved(self, raw: bytes, v: tuple[int, ...]) -> None:
        raise NotImplementedError

    def _dispatch(self, reason: int, rip: int) -> None:
        raise NotImplementedError

    def _drain(self) -> None:
        raise NotImplementedError

    def _stop_for_entry(self) -> None:
        raise NotImplementedError

    def _fail(self, exc: BaseException) -> None:
        raise NotImplementedError

    def _guest_hlt(self, next_rip: int) -> None:
        raise NotImplementedError

    def _guest_exception(
        self,
        vector: int,
        kind: InterruptionType,
        error: int | None,
        address: int,
        length: int = 0,
        *,
        precise: bool = True,
    ) -> None:
        raise NotImplementedError

    def read_msr(self, msr: int) -> int:
        raise NotImplementedError

    def write_msr(self, msr: int, value: int) -> None:
        raise NotImplementedError

    def _length(self, code: bytes, rip: int) -> int:
        quick = _QUICK_LENGTH.get(code[:2])
        if quick is not None:
            return quick
        return int(dec.decode(code, rip).len)

    # -- completion ---------------------------------------------------------------------
    def _simple_resume(self, regs: tuple[int, ...]) -> bool:
        vmcs = self.vmcs
        return vmcs.state is _LAUNCHED and not vmcs.dirty and self.state.rsp == regs[16]

    def _gprs(self) -> list[int]:
        s = self.state
        return [
            s.rax, s.rbx, s.rcx, s.rdx, s.rbp, s.rsi, s.rdi, s.r08,
            s.r09, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15,
        ]  # fmt: skip

    def _finish_in_helper(self, regs: tuple[int, ...], next_rip: int) -> None:
        """End an instruction-hook exit: in place if simple, else drain to the run loop."""
        s = self.state
        vmcs = self.vmcs
        rsp = regs[16]
        if vmcs.state is _LAUNCHED and not vmcs.dirty and s.rip == next_rip and s.rsp == rsp:
            self._write_gprs(
                s.rax, s.rcx, s.rdx, s.rbx, rsp, s.rbp, s.rsi, s.rdi,
                s.r08, s.r09, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15,
            )  # fmt: skip
        else:
            self._drain()

    def _finish_precise(self, regs: tuple[int, ...]) -> None:
        """End an exception-kind exit: registers and RIP in place, or stop for the loop."""
        if self._simple_resume(regs):
            self.engine.loaded.write([*self._gprs(), self.state.rip])
        else:
            self._stop_for_entry()

    # -- CPUID, RDTSC, RDTSCP -------------------------------------------------------------
    def _on_cpuid(self, _uc: int, _data: int) -> int:
        # The hottest path there is: ``_save`` and the completion are written out here.
        try:
            if self._draining:
                return _SKIP
            raw = self._head.raw
            v = _unpack_head(raw)
            s = self.state
            (
                s.rax, s.rcx, s.rdx, s.rbx, s.rsp, s.rbp, s.rsi, s.rdi,
                s.r08, s.r09, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15, s.rip, eflags,
            ) = v  # fmt: skip
            rip = v[16]
            rsp = v[4]
            if (rip, rsp, eflags, self._dr7.value) != self._seen_regs or not raw.endswith(
                self._seen
            ):
                self._store_moved(raw, v)
            # The hook fires only for CPUID, so 0F A2 at RIP is all of it; else prefixes.
            self._code_at.value = rip
            if (
                rip & 0xFFF != 0xFFF
                and not read_code(*self._code2_args)
                and self._code2.raw == _OPCODE
            ):
                length = 2
                info = _CPUID_INFO
            else:
                length = self._length(self.engine.fetch(rip), rip)
                info = (_CPUID, 0, length, 0, 0, 0, 0, 0, 0)
            record = self.record
            if info is not record.last:
                record.store(info)
            self.exits += 1
            self._last_exit_reason = _CPUID
            if self.trace is not None:
                self.trace.append((_CPUID, rip))
            self.handler.dispatch()
            vmcs = self.vmcs
            if (
                vmcs.state is _LAUNCHED
                and not vmcs.dirty
                and s.rip == rip + length
                and s.rsp == rsp
            ):
                self._write_gprs(
                    s.rax, s.rcx, s.rdx, s.rbx, rsp, s.rbp, s.rsi, s.rdi,
                    s.r08, s.r09, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15,
                )  # fmt: skip
            else:
                self._drain()
        except BaseException as exc:  # noqa: BLE001 - must not unwind into unicorn
            self._fail(exc)
        return _SKIP

    def _on_rdtsc(self, _uc: int, _data: int) -> int:
        try:
            if self._draining:
                return _SKIP
            regs = self._save()
            rip = regs[15]
            length = self._length(self.engine.fetch(rip), rip)
            self.record.exit(_RDTSC, 0, length)
            self._dispatch(_RDTSC, rip)
            self._finish_in_helper(regs, rip + length)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        return _SKIP

    def _on_rdtscp(self, _uc: int, _data: int) -> int:
        try:
            if self._draining:
                return _SKIP
            policy = self.policy
            if policy.rdtscp_enabled and not policy.rdtsc:
                return 0  # runs natively
            regs = self._save()
            rip = regs[15]
            length = int(dec.decode(self.engine.fetch(rip), rip).len)
            if not policy.rdtscp_enabled:
                # SDM: with "enable RDTSCP" 0, RDTSCP is an invalid opcode.
                self._guest_exception(
                    VECTOR_UD, InterruptionType.HARDWARE_EXCEPTION, None, rip, precise=False
                )
                return _SKIP
            self.record.exit(_RDTSCP, 0, length)
            self._dispatch(_RDTSCP, rip)
            self._finish_in_helper(regs, rip + length)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        return _SKIP

    # -- IN, OUT, INS, OUTS -----------------------------------------------------------------
    def _io_exits(self, port: int, size: int) -> bool:
        policy = self.policy
        if policy.io_unconditional:
            return True
        bitmaps = policy.io_bitmaps
        if bitmaps is None:
            return False
        read = self.memory.read_u8
        for p in range(port, port + size):
            if p > 0xFFFF:
                return True  # SDM: an access that wraps around exits
            base = bitmaps[p >> 15]
            if read(base + ((p & 0x7FFF) >> 3)) >> (p & 7) & 1:
                return True
        return False

    def _on_in(self, _uc: int, port: int, size: int, _data: int) -> int:
        try:
            if self._draining:
                return 0
            mask = (1 << (8 * size)) - 1
            if self.policy.io_exits and self._io_exits(port, size):
                return self._io_exit(port, size) & mask
            return self.ports.io_read(port, size) & mask
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
            return 0

    def _on_out(self, _uc: int, port: int, size: int, value: int, _data: int) -> None:
        try:
            if self._draining:
                return
            if self.policy.io_exits and self._io_exits(port, size):
                self._io_exit(port, size)
                return
            self.ports.io_write(port, size, value)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _io_exit(self, port: int, size: int) -> int:
        """An I/O-instruction exit; returns what an IN hook hands back to the CPU."""
        regs = self._save()
        rip = regs[15]
        code = self.engine.fetch(rip)
        quick = _IO_QUICK.get(code[0]) if code else None
        info = gla = 0
        if quick is not None:
            length, is_in, immediate = quick
            string = rep = False
        else:
            ins = dec.decode(code, rip)
            access = dec.io_access(ins)
            length, is_in, immediate = ins.len, access.is_in, access.immediate
            string, rep = access.string, access.rep
            operand = access.operand
            if operand is not None:
                info = operand.address_size_code << 7 | operand.segment << 15
                bases = (0, 0, 0, 0, regs[28], regs[29])  # 64-bit mode: only FS/GS have bases
                gla = operand.linear(sdm_gprs(regs), bases)
        qualification = (
            (size - 1)
            | int(is_in) << 3
            | int(string) << 4
            | int(rep) << 5
            | int(immediate) << 6
            | port << 16
        )
        self.record.exit(_IO, qualification, length, info, gla)
        self._dispatch(_IO, rip)
        if string:
            self._drain()  # the block would go on to move the data and step RSI/RDI/RCX
            return 0
        self._finish_in_helper(regs, rip + length)
        return self.state.rax

    # -- SVM intercepts and exceptions ------------------------------------------------------
    def _on_interrupt(self, _uc: int, number: int, _data: int) -> None:
        try:
            if self._draining:
                return
            if number >= svm.SVM_EXCEPTION_BASE:
                self._intercept(number - svm.SVM_EXCEPTION_BASE)
            else:
                self._exception(number)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _on_invalid(self, _uc: int, _data: int) -> bool:
        try:
            if self._draining:
                return True
            regs = self._save()
            rip = regs[15]
            ins = dec.decode(self.engine.fetch(rip), rip)
            reason = None if ins.is_invalid else dec.VMX_EXITS.get(ins.mnemonic)
            if reason is ExitReason.VMFUNC and not self.policy.vmfunc_enabled:
                reason = None  # SDM: VMFUNC is #UD unless "enable VM functions" is 1
            if reason is None:
                self._guest_exception(VECTOR_UD, InterruptionType.HARDWARE_EXCEPTION, None, rip)
                return True
            qualification, info = dec.vmx_instruction_information(ins)
            self.record.exit(int(reason), qualification, ins.len, info)
            self._dispatch(int(reason), rip)
            self._finish_precise(regs)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        return True

    def _intercept(self, code: int) -> None:
        regs = self._save()
        rip = regs[15]
        fetched = self.engine.fetch(rip)
        if code == svm.SVM_EXIT_MSR:
            self._msr(regs, fetched)
        elif code == svm.SVM_EXIT_HLT:
            length = 1 if fetched[:1] == b"\xf4" else int(dec.decode(fetched, rip).len)
            if self.policy.hlt:
                self._instruction_exit(ExitReason.HLT, regs, length)
            else:
                self._guest_hlt(rip + length)
        elif code == svm.SVM_EXIT_WBINVD:
            length = self._length(fetched, rip)
            if dec.decode(fetched, rip).mnemonic == Mnemonic.INVD:
                self._instruction_exit(ExitReason.INVD, regs, length)
            elif self.policy.wbinvd:
                self._instruction_exit(ExitReason.WBINVD, regs, length)
            else:
                self._step(regs, rip + length)
        else:
            self._intercept_rare(code, regs, fetched)

    def _intercept_rare(self, code: int, regs: tuple[int, ...], fetched: bytes) -> None:
        rip = regs[15]
        ins = dec.decode(fetched, rip)
        if code == svm.SVM_EXIT_INVLPG:
            operand = dec.memory_operand(ins)
            bases = (0, 0, 0, 0, regs[28], regs[29])
            address = operand.linear(sdm_gprs(regs), bases) if operand else 0
            self._instruction_exit(ExitReason.INVLPG, regs, ins.len, address)
        elif code == svm.SVM_EXIT_PAUSE:
            self._instruction_exit(ExitReason.PAUSE, regs, ins.len)
        elif code == svm.SVM_EXIT_RDPMC:
            self._instruction_exit(ExitReason.RDPMC, regs, ins.len)
        elif code in (svm.SVM_EXIT_CR3_READ, svm.SVM_EXIT_CR3_WRITE, svm.SVM_EXIT_CR8_READ,
                      svm.SVM_EXIT_CR8_WRITE):  # fmt: skip
            cr, load, gpr = dec.control_register_access(ins)
            value = sdm_gprs(regs)[gpr]
            if cr == 3 and load and value in self.policy.cr3_targets:
                self.engine.write(x86.UC_X86_REG_CR3, value)  # SDM: a CR3-target value loads
                self._step(regs, rip + ins.len)
                return
            qualification = cr | (0 if load else 1) << 4 | gpr << 8
            self._instruction_exit(ExitReason.CONTROL_REGISTER_ACCESS, regs, ins.len, qualification)
        elif svm.SVM_EXIT_DR_READ <= code < svm.SVM_EXIT_DR_WRITE + 16:
            dr, load, gpr = dec.debug_register_access(ins)
            qualification = dr | (0 if load else 1) << 4 | gpr << 8
            self._instruction_exit(ExitReason.MOV_DR, regs, ins.len, qualification)
        else:
            raise RuntimeError(f"unexpected SVM intercept {code:#x} at {rip:#x}")

    def _instruction_exit(
        self, reason: int, regs: tuple[int, ...], length: int, qualification: int = 0
    ) -> None:
        self.record.exit(int(reason), qualification, length)
        self._dispatch(int(reason), regs[15])
        self._finish_precise(regs)

    def _step(self, regs: tuple[int, ...], next_rip: int) -> None:
        """Retire an intercepted instruction that does not exit (hardware behaviour)."""
        self.state.rip = next_rip
        self.engine.loaded.write([*regs[:15], next_rip])

    # -- RDMSR / WRMSR ------------------------------------------------------------------
    def _msr_exits(self, msr: int, write: bool) -> bool:
        bitmap = self.policy.msr_bitmap
        if bitmap is None:
            return True
        if msr < _MSR_LOW_END:
            offset = 0
        elif _MSR_HIGH_BASE <= msr < _MSR_HIGH_END:
            offset, msr = 1024, msr - _MSR_HIGH_BASE
        else:
            return True  # SDM: MSRs outside both ranges always exit
        offset += 2048 if write else 0
        return bool(self.memory.read_u8(bitmap + offset + (msr >> 3)) >> (msr & 7) & 1)

    def _msr(self, regs: tuple[int, ...], fetched: bytes) -> None:
        rip = regs[15]
        write = fetched[:2] == b"\x0f\x30"
        length = self._length(fetched, rip)
        msr = regs[2] & 0xFFFF_FFFF
        if self._msr_exits(msr, write):
            reason = ExitReason.WRMSR if write else ExitReason.RDMSR
            self._instruction_exit(reason, regs, length)
            return
        # Not an exit: the access reaches the processor's own MSR.
        if write:
            value = (regs[3] & 0xFFFF_FFFF) << 32 | regs[0] & 0xFFFF_FFFF
            if wrmsr_fault(self.handler.m_cpu, msr, value) is not None:
                self._guest_exception(VECTOR_GP, InterruptionType.HARDWARE_EXCEPTION, 0, rip)
                return
            self.write_msr(msr, value)
            backed = VMCS_BACKED_MSRS.get(msr)
            if backed is not None:
                self.vmcs.processor_write(backed.field, value)
        else:
            value = self.read_msr(msr)
            self.state.rax, self.state.rdx = value & 0xFFFF_FFFF, value >> 32
            regs = (self.state.rax, regs[1], regs[2], self.state.rdx, *regs[4:])
        self._step(regs, rip + length)

    # -- guest exceptions -----------------------------------------------------------------
    def _exception(self, vector: int) -> None:
        """An exception the guest raised (never #UD: that comes through ``_on_invalid``)."""
        regs = self._save()
        rip = regs[15]
        kind = InterruptionType.HARDWARE_EXCEPTION
        address = rip
        # INT n, INT3 and INT1 report RIP past the instruction: find which one it was.
        before = self.engine.fetch(rip - 2)[:2] if rip >= 2 else b""
        if vector == VECTOR_BP and before[1:] == b"\xcc":
            kind, address = InterruptionType.SOFTWARE_EXCEPTION, rip - 1
        elif vector == VECTOR_DB and before[1:] == b"\xf1":
            kind, address = InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION, rip - 1
        elif before == bytes((0xCD, vector)) or vector >= 32:
            kind = InterruptionType.SOFTWARE_INTERRUPT
            address = rip - 2
            if vector == VECTOR_BP:
                kind = InterruptionType.SOFTWARE_EXCEPTION
        error = (
            self._error_code(vector, regs) if kind is InterruptionType.HARDWARE_EXCEPTION else None
        )
        self._guest_exception(vector, kind, error, address, rip - address)

    def _error_code(self, vector: int, regs: tuple[int, ...]) -> int | None:
        if vector not in ERROR_CODE_VECTORS:
            return None
        if vector == VECTOR_PF:
            return page_fault_error_code(
                self.engine, self.memory, self.vmcs.read(f.GUEST_IA32_EFER), regs
            )
        return 0  # unicorn does not report error codes; 0 is what #GP/#SS/#AC mostly push
