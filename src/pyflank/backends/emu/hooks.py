"""The VM exits of the software CPU: unicorn hooks that stop the guest before an instruction
retires, and report it as an exit record.

Leaving unicorn's ``emu_start`` costs more than a whole exit, so a hook hands its record
to the processor right there (``decide``, a function of values handed in by the vCPU) and
carries out the entry plan in place when it can.  Two kinds of hook deliver exits, and
they resume differently:

* instruction hooks (CPUID, IN/OUT, RDTSC/RDTSCP) run inside the helper that executes the
  instruction.  The hook can set general registers and skip the instruction, but QEMU
  then runs on to the end of the translation block.  So when the plan only sets
  registers and steps past the instruction, that is done in place; anything else (another
  RIP, an event, changed guest state, a stop) *drains*: the CPU state is saved, guest RAM
  turns read-only so the rest of the block cannot write memory, emulation stops at the
  block's end, and the run loop restores the saved state and makes the VM entry itself.
* SVM intercepts (of instructions, and of every exception and software interrupt, which
  is how #UD brings the VMX instructions) are precise: the block was left before the
  instruction.  A simple plan writes the registers and RIP in place; anything else stops
  emulation for the run loop.

What the run loop must do next is left in ``outcome``.
"""

from __future__ import annotations

import functools
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from iced_x86 import Instruction, Mnemonic
from unicorn import unicorn_const as uc_const
from unicorn import x86_const as x86

from pyflank.backends.emu import cpu_msrs, svm
from pyflank.backends.emu import engine as eng
from pyflank.backends.emu.cr0_writes import cr0_write
from pyflank.backends.emu.engine import read_code
from pyflank.backends.emu.ept import StepOver, nested_fault
from pyflank.backends.emu.fast_calls import UNKNOWN_TO_QEMU, FastCall, GuestSyscall, sysenter_fault
from pyflank.backends.emu.guest_state import descriptor_fields, read_descriptor
from pyflank.backends.emu.nested import NestedPaging
from pyflank.backends.emu.page_faults import page_fault_error_code
from pyflank.backends.emu.register_file import HEAD_VALUES
from pyflank.backends.emu.stepping import Stepper
from pyflank.intel_x64 import decode as dec
from pyflank.intel_x64.cpu import MsrFault, wrmsr_fault
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.msrs import IA32_EFER, VMCS_BACKED_MSRS
from pyflank.intel_x64.paging import guest_linear
from pyflank.intel_x64.qualifications import InterruptionType
from pyflank.intel_x64.registers import AR_L, EFER_LMA, EFER_SCE, RFLAGS_IF
from pyflank.intel_x64.vectors import VECTOR_BP, VECTOR_DB, VECTOR_GP, VECTOR_PF, VECTOR_UD
from pyflank.processor import (
    EntryPlan,
    Event,
    ExitInformation,
    ExitPolicy,
    ExitRecord,
    Pause,
    Stop,
    StopReason,
    time,
)
from pyflank.processor.delivery import ERROR_CODE_VECTORS

if TYPE_CHECKING:
    from pyflank.backends.base import PortIo
    from pyflank.backends.emu.capture import StateCapture
    from pyflank.backends.emu.engine import Engine
    from pyflank.backends.emu.physical_cpu import EngineCpu
    from pyflank.memory import GuestPhysicalMemory

log = logging.getLogger("pyflank.backends.emu")
Decide = Callable[[ExitRecord], "EntryPlan | Stop"]


@dataclass(frozen=True, slots=True)
class GuestEvent:
    """An exception the guest raised that does not exit: delivered by the run loop."""

    event: Event
    rip: int  # of the instruction that raised it


class Stepped:
    """The single step's trap came: the stepped instruction completed (``stepping``)."""


STEPPED: Final = Stepped()
Outcome = EntryPlan | Stop | ExitRecord | GuestEvent | Pause | GuestSyscall | Stepped | StepOver

_GUEST_HLT = StopReason.GUEST_HLT
_MASK64 = (1 << 64) - 1
_EFER_SCE_LMA = EFER_SCE | EFER_LMA
_CPUID = int(ExitReason.CPUID)
_RDTSC = int(ExitReason.RDTSC)
_RDTSCP = int(ExitReason.RDTSCP)
_IO = int(ExitReason.IO_INSTRUCTION)
_EXCEPTION = int(ExitReason.EXCEPTION_OR_NMI)
_SKIP = 1
_VALID = 1 << 31
_SOFTWARE_INTERRUPT = InterruptionType.SOFTWARE_INTERRUPT
_EXCEPTION_INTERCEPTS = range(svm.SVM_EXIT_EXCP_BASE, svm.SVM_EXIT_EXCP_BASE + 32)
_VECTOR_OF = 4  # INTO's
_Q = struct.Struct("<Q")
_CPUID_INFO: Final = ExitInformation(_CPUID, 0, 2)  # an unprefixed CPUID's, prebuilt
_OPCODE: Final = b"\x0f\xa2"  # CPUID
_unpack_head = HEAD_VALUES.unpack_from
_MSR_LOW_END, _MSR_HIGH_BASE, _MSR_HIGH_END = 0x2000, 0xC000_0000, 0xC000_2000
_FS, _GS = 10, 11  # FS/GS bases in ``StateCapture.system``
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


def _undecided(record: ExitRecord) -> EntryPlan | Stop:
    raise RuntimeError("no processor attached to this vCPU")


def _length(code: bytes, rip: int) -> int:
    quick = _QUICK_LENGTH.get(code[:2])
    if quick is not None:
        return quick
    return int(dec.decode(code, rip).len)


class ExitHooks:
    """The hooks of one engine, and what the last one left the run loop to do."""

    __slots__ = (
        "_callbacks",
        "_code2",
        "_code2_args",
        "_code_at",
        "_dr7",
        "_drain_context",
        "_head",
        "_progress",
        "_rdtsc_cb",
        "_rdtsc_hook",
        "_read_code",
        "_write_gprs",
        "capture",
        "cpu",
        "decide",
        "draining",
        "engine",
        "idle_ns",
        "memory",
        "nested",
        "outcome",
        "policy",
        "ports",
        "stepper",
        "timed",
    )  # fmt: skip

    def __init__(
        self,
        engine: Engine,
        capture: StateCapture,
        memory: GuestPhysicalMemory,
        ports: PortIo,
        cpu: EngineCpu,
    ) -> None:
        self.engine = engine
        self.cpu = cpu  # what an RDMSR/WRMSR that does not exit reaches
        self.capture = capture
        self.memory = memory
        self.ports = ports
        self.decide: Decide = _undecided
        self.policy: ExitPolicy | None = None
        self.outcome: Outcome | None = None
        self.draining = False
        self._drain_context: Any = None
        self.nested = NestedPaging(engine, memory)  # EPT, enforced
        self.stepper = Stepper(engine, memory, self.nested, capture.progress)  # one instruction
        self._head = capture.head
        self._dr7 = capture.dr7
        self._progress = capture.progress  # the block gate's count of guest code run
        # With a machine (plans carry a budget), guest time is virtual: RDTSC answers it.
        self.timed = False
        self.idle_ns = 0
        self._write_gprs = capture.write_gprs
        self._read_code: Any = read_code  # unicorn's, until nested paging is on (``nested``)
        self._code_at, self._code2, self._code2_args = (
            engine.code_at,
            engine.code2,
            engine.code2_args,
        )
        self._callbacks = (
            eng.INSN_CB(self._on_cpuid),
            eng.INSN_CB(self._on_rdtsc),
            eng.INSN_CB(self._on_rdtscp),
            eng.IN_CB(self._on_in),
            eng.OUT_CB(self._on_out),
            eng.INTR_CB(self._on_interrupt),
            eng.SYSCALL_CB(functools.partial(self._on_fast_call, FastCall.SYSCALL)),
            eng.SYSCALL_CB(functools.partial(self._on_fast_call, FastCall.SYSENTER)),
        )
        cpuid, self._rdtsc_cb, rdtscp, in_cb, out_cb, intr, syscall, sysenter = self._callbacks
        self._hook_instruction(x86.UC_X86_INS_CPUID, cpuid)
        self._hook_instruction(x86.UC_X86_INS_RDTSCP, rdtscp)
        self._hook_instruction(x86.UC_X86_INS_IN, in_cb)
        self._hook_instruction(x86.UC_X86_INS_OUT, out_cb)
        engine.hook(uc_const.UC_HOOK_INTR, intr)
        engine.hook_instruction(x86.UC_X86_INS_SYSCALL, syscall)
        engine.hook_instruction(x86.UC_X86_INS_SYSENTER, sysenter)
        self._rdtsc_hook: int | None = None

    def _hook_instruction(self, instruction: int, callback: Any) -> int:
        """Hook ``instruction`` with ``callback`` (a subclass may install native code)."""
        return self.engine.hook_instruction(instruction, callback)

    def set_policy(self, policy: ExitPolicy) -> None:
        self.policy = policy
        self._sync_rdtsc_hook()
        if policy.ept is not None:
            self._read_code = self._read_code_in_ram

    def _read_code_in_ram(self, _handle: Any, at: Any, _prot: Any, code: Any, _size: Any) -> int:
        """``read_code`` through the guest's paging in guest RAM (with nested paging on)."""
        fetched = self.nested.fetch(at.value)[:2]
        if len(fetched) < 2:
            return 1
        code.raw = fetched
        return 0

    def set_timing(self, timed: bool, idle_ns: int) -> None:
        """Whether guest time is virtual (a machine's), and the time spent idle so far."""
        self.idle_ns = idle_ns
        if timed is not self.timed:
            self.timed = timed
            self._sync_rdtsc_hook()

    def _sync_rdtsc_hook(self) -> None:
        wanted = self.timed or (self.policy is not None and self.policy.rdtsc)
        if wanted and self._rdtsc_hook is None:
            self._rdtsc_hook = self._hook_instruction(x86.UC_X86_INS_RDTSC, self._rdtsc_cb)
        elif not wanted and self._rdtsc_hook is not None:
            self.engine.unhook(self._rdtsc_hook)
            self._rdtsc_hook = None

    def _virtual_tsc(self, *, rdtscp: bool) -> None:
        """Carry out RDTSC (RDTSCP) from virtual time, in place, as the hardware would."""
        assert self.policy is not None
        now = time.guest_ns(self._progress.executed, self.idle_ns)
        value = time.tsc(now) + self.policy.tsc_offset & _MASK64
        regs = list(_unpack_head(self._head.raw)[:16])
        regs[0], regs[2] = value & 0xFFFF_FFFF, value >> 32  # EDX:EAX
        if rdtscp:
            regs[1] = cpu_msrs.read_msr(self.engine, cpu_msrs.TSC_AUX) & 0xFFFF_FFFF  # ECX
        self._write_gprs(*regs)

    # -- leaving a hook ---------------------------------------------------------------
    def take(self) -> Outcome | None:
        """After ``emu_start`` returned: what the hooks left to do (and undo a drain)."""
        if self._drain_context is not None:
            self.engine.protect(0, self.memory.size, writable=True)
            self.engine.context_restore(self._drain_context)
            self._drain_context = None
            self.draining = False
        outcome, self.outcome = self.outcome, None
        return outcome

    def _leave_helper(self, outcome: Outcome) -> None:
        """Stop from inside an instruction hook without letting the block change anything."""
        self.outcome = outcome
        self._drain_context = self.engine.context_save()
        self.draining = True
        self.engine.protect(0, self.memory.size, writable=False)
        self.engine.stop()

    def _leave_precise(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.engine.stop()

    def _fail(self, exc: BaseException) -> None:
        log.error("software CPU error", exc_info=exc)
        self.outcome = Stop(StopReason.ERROR, f"{type(exc).__name__}: {exc}")
        self.engine.stop()

    def _finish_in_helper(self, plan: EntryPlan | Stop, rsp: int, next_rip: int) -> None:
        """End an instruction-hook exit: in place if simple, else drain to the run loop."""
        if plan.simple and plan.rip == next_rip and plan.regs[4] == rsp:  # type: ignore[union-attr]
            self._write_gprs(*plan.regs)  # type: ignore[union-attr]
        else:
            self._leave_helper(plan)

    def _finish_precise(self, plan: EntryPlan | Stop) -> None:
        """End an exception-kind exit: registers and RIP in place, or stop for the loop."""
        if plan.simple:
            self.engine.resume_at.write((*plan.regs, plan.rip))  # type: ignore[union-attr]
        else:
            self._leave_precise(plan)

    def _record(self, info: ExitInformation, rip: int | None = None) -> ExitRecord:
        return self.capture.record(info, rip)

    # -- CPUID, RDTSC, RDTSCP -------------------------------------------------------------
    def _on_cpuid(self, _uc: int, _data: int) -> int:
        # The hottest path there is: the capture and the completion are written out here.
        try:
            if self.draining:
                return _SKIP
            c = self.capture
            raw = self._head.raw
            v = _unpack_head(raw)
            rip = v[16]
            rsp = v[4]
            guest = None
            if (rip, rsp, v[17], self._dr7.value) != c.seen_regs or not raw.endswith(c.seen):
                guest = c.moved(raw, v)
            if c.noted:
                guest = c.take_noted(guest)
            # The hook fires only for CPUID, so 0F A2 at RIP is all of it; else prefixes.
            self._code_at.value = rip
            if (
                rip & 0xFFF != 0xFFF
                and not self._read_code(*self._code2_args)
                and self._code2.raw == _OPCODE
            ):
                length = 2
                info = _CPUID_INFO
            else:
                length = _length(self.engine.fetch(rip), rip)
                info = ExitInformation(_CPUID, 0, length)
            # An ExitRecord's fields as a plain tuple: the processor unpacks it by
            # position, and building the named tuple would cost a tenth of this exit.
            record: Any = (info, v, rip, c.rflags, guest, "", self._progress.executed)
            plan = self.decide(record)
            if plan.simple and plan.rip == rip + length and plan.regs[4] == rsp:  # type: ignore[union-attr]
                self._write_gprs(*plan.regs)  # type: ignore[union-attr]
            else:
                self._leave_helper(plan)
        except BaseException as exc:  # noqa: BLE001 - must not unwind into unicorn
            self._fail(exc)
        return _SKIP

    def _on_rdtsc(self, _uc: int, _data: int) -> int:
        try:
            if self.draining:
                return _SKIP
            assert self.policy is not None
            if not self.policy.rdtsc:  # hooked for the virtual TSC only
                self._virtual_tsc(rdtscp=False)
                return _SKIP
            record = self._record(ExitInformation(_RDTSC))
            rip = record.rip
            length = _length(self.engine.fetch(rip), rip)
            plan = self.decide(record._replace(info=ExitInformation(_RDTSC, 0, length)))
            self._finish_in_helper(plan, record.regs[4], rip + length)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        return _SKIP

    def _on_rdtscp(self, _uc: int, _data: int) -> int:
        try:
            if self.draining:
                return _SKIP
            policy = self.policy
            assert policy is not None
            if policy.rdtscp_enabled and not policy.rdtsc:
                if not self.timed:
                    return 0  # runs natively
                self._virtual_tsc(rdtscp=True)
                return _SKIP
            rip = self.engine.read(x86.UC_X86_REG_RIP)
            length = int(dec.decode(self.engine.fetch(rip), rip).len)
            if not policy.rdtscp_enabled:
                # SDM: with "enable RDTSCP" 0, RDTSCP is an invalid opcode.
                self._guest_exception(
                    VECTOR_UD, InterruptionType.HARDWARE_EXCEPTION, None, rip, precise=False
                )
                return _SKIP
            record = self._record(ExitInformation(_RDTSCP, 0, length))
            plan = self.decide(record)
            self._finish_in_helper(plan, record.regs[4], rip + length)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
        return _SKIP

    # -- IN, OUT, INS, OUTS -----------------------------------------------------------------
    def _io_exits(self, port: int, size: int) -> bool:
        policy = self.policy
        assert policy is not None
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
            if self.draining:
                return 0
            mask = (1 << (8 * size)) - 1
            if self.policy.io_exits and self._io_exits(port, size):  # type: ignore[union-attr]
                return self._io_exit(port, size) & mask
            return self.ports.io_read(port, size) & mask
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)
            return 0

    def _on_out(self, _uc: int, port: int, size: int, value: int, _data: int) -> None:
        try:
            if self.draining:
                return
            if self.policy.io_exits and self._io_exits(port, size):  # type: ignore[union-attr]
                self._io_exit(port, size)
                return
            self.ports.io_write(port, size, value)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _io_exit(self, port: int, size: int) -> int:
        """An I/O-instruction exit; returns what an IN hook hands back to the CPU."""
        v, rflags, guest = self.capture.capture()
        rip = v[16]
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
                gla = operand.linear(v, self._segment_bases())
        qualification = (
            (size - 1)
            | int(is_in) << 3
            | int(string) << 4
            | int(rep) << 5
            | int(immediate) << 6
            | port << 16
        )
        record = ExitRecord(
            ExitInformation(_IO, qualification, length, info, gla), v, rip, rflags, guest
        )
        plan = self.decide(record)
        if string:
            self._leave_helper(plan)  # the block would go on to move the data and step RSI/RDI/RCX
            return 0
        self._finish_in_helper(plan, v[4], rip + length)
        return plan.regs[0] if plan.simple else 0  # type: ignore[union-attr]

    def _segment_bases(self) -> tuple[int, ...]:
        system = self.capture.system  # 64-bit mode: only FS and GS have bases
        return (0, 0, 0, 0, system[_FS], system[_GS])

    # -- SVM intercepts and exceptions ------------------------------------------------------
    def _on_interrupt(self, _uc: int, number: int, _data: int) -> None:
        try:
            if self.draining:
                return
            if number < svm.SVM_EXCEPTION_BASE:
                # Only the VM-entry stub runs outside SVM guest mode.
                rip = self.engine.read(x86.UC_X86_REG_RIP)
                raise RuntimeError(f"exception {number} in the VM-entry stub at {rip:#x}")
            self._intercept(number - svm.SVM_EXCEPTION_BASE)
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _intercept(self, code: int) -> None:
        if code in _EXCEPTION_INTERCEPTS:
            self._exception(code - svm.SVM_EXIT_EXCP_BASE)
            return
        if code == svm.SVM_EXIT_NPF:
            self._nested_page_fault()
            return
        rip = self.engine.read(x86.UC_X86_REG_RIP)
        fetched = self.engine.fetch(rip)
        policy = self.policy
        assert policy is not None
        if code == svm.SVM_EXIT_MSR:
            self._msr(rip, fetched)
        elif code == svm.SVM_EXIT_HLT:
            length = 1 if fetched[:1] == b"\xf4" else int(dec.decode(fetched, rip).len)
            if policy.hlt:
                self._instruction_exit(ExitReason.HLT, length)
            else:
                self._guest_hlt(rip + length)
        elif code == svm.SVM_EXIT_SWINT:
            self._software_interrupt(rip, fetched)
        elif code == svm.SVM_EXIT_WBINVD:
            length = _length(fetched, rip)
            if dec.decode(fetched, rip).mnemonic == Mnemonic.INVD:
                self._instruction_exit(ExitReason.INVD, length)
            elif policy.wbinvd:
                self._instruction_exit(ExitReason.WBINVD, length)
            else:
                self._step(rip + length)
        else:
            self._intercept_rare(code, rip, fetched)

    def _intercept_rare(self, code: int, rip: int, fetched: bytes) -> None:
        ins = dec.decode(fetched, rip)
        policy = self.policy
        assert policy is not None
        if code == svm.SVM_EXIT_INVLPG:
            v, rflags, guest = self.capture.capture()
            operand = dec.memory_operand(ins)
            address = operand.linear(v, self._segment_bases()) if operand else 0
            info = ExitInformation(int(ExitReason.INVLPG), address, ins.len)
            self._finish_precise(self.decide(ExitRecord(info, v, v[16], rflags, guest)))
        elif code == svm.SVM_EXIT_PAUSE:
            self._instruction_exit(ExitReason.PAUSE, ins.len)
        elif code == svm.SVM_EXIT_RDPMC:
            self._instruction_exit(ExitReason.RDPMC, ins.len)
        elif code in (svm.SVM_EXIT_CR3_READ, svm.SVM_EXIT_CR3_WRITE, svm.SVM_EXIT_CR8_READ,
                      svm.SVM_EXIT_CR8_WRITE):  # fmt: skip
            cr, load, gpr = dec.control_register_access(ins)
            value = self.engine.read(eng.SDM_GPR_IDS[gpr])
            if cr == 3 and load and value in policy.cr3_targets:
                self.engine.write(x86.UC_X86_REG_CR3, value)  # SDM: a CR3-target value loads
                self._step(rip + ins.len)
                return
            qualification = cr | (0 if load else 1) << 4 | gpr << 8
            self._instruction_exit(ExitReason.CONTROL_REGISTER_ACCESS, ins.len, qualification)
        elif code == svm.SVM_EXIT_CR0_WRITE:
            self._cr0_write(ins, rip)
        elif svm.SVM_EXIT_DR_READ <= code < svm.SVM_EXIT_DR_WRITE + 16:
            dr, load, gpr = dec.debug_register_access(ins)
            qualification = dr | (0 if load else 1) << 4 | gpr << 8
            self._instruction_exit(ExitReason.MOV_DR, ins.len, qualification)
        else:
            raise RuntimeError(f"unexpected SVM intercept {code:#x} at {rip:#x}")

    def _cr0_write(self, ins: Instruction, rip: int) -> None:
        """MOV to CR0, CLTS or LMSW with VMM-owned CR0 bits (``cr0_writes``)."""
        policy = self.policy
        assert policy is not None
        e = self.engine

        def memory_word(ins: Instruction) -> tuple[int, int]:
            v, _, _ = self.capture.capture()
            operand = dec.memory_operand(ins)
            address = operand.linear(v, self._segment_bases()) if operand else 0
            linear = guest_linear(self.memory, cr0=e.read(x86.UC_X86_REG_CR0),
                                  cr3=e.read(x86.UC_X86_REG_CR3), efer=efer)  # fmt: skip
            return int.from_bytes(linear.read(address, 2), "little"), address

        efer = cpu_msrs.read_msr(e, IA32_EFER)

        outcome = cr0_write(
            ins,
            e.read(x86.UC_X86_REG_CR0),
            mask=policy.cr0_mask,
            shadow=policy.cr0_shadow,
            real_owned=self.capture.cr0_owned[1],
            cr4=e.read(x86.UC_X86_REG_CR4),
            efer=efer,
            unrestricted=policy.unrestricted_guest,
            register=lambda n: e.read(eng.SDM_GPR_IDS[n]),
            memory_word=memory_word,
        )
        if outcome.exit:
            info = ExitInformation(
                int(ExitReason.CONTROL_REGISTER_ACCESS), outcome.qualification, ins.len,
                0, outcome.linear_address,
            )  # fmt: skip
            self._finish_precise(self.decide(self._record(info)))
        elif outcome.fault:
            self._guest_exception(VECTOR_GP, InterruptionType.HARDWARE_EXCEPTION, 0, rip)
        else:
            e.write(x86.UC_X86_REG_CR0, outcome.value)
            self._step(rip + ins.len)

    def _instruction_exit(self, reason: int, length: int, qualification: int = 0) -> None:
        record = self._record(ExitInformation(int(reason), qualification, length))
        self._finish_precise(self.decide(record))

    def _step(self, next_rip: int) -> None:
        """Retire an intercepted instruction that does not exit (hardware behaviour)."""
        self.engine.write(x86.UC_X86_REG_RIP, next_rip)

    def _guest_hlt(self, next_rip: int) -> None:
        """HLT that does not exit: the vCPU waits for an interrupt (activity state HLT),
        or, with interrupts disabled, for nothing that can ever come."""
        state = self.capture.pause_state(next_rip)
        if state.rflags & RFLAGS_IF:
            self._leave_precise(Pause(state, halted=True))
        else:
            self._leave_precise(Stop(_GUEST_HLT, "HLT with interrupts disabled", state))

    # -- SYSCALL, SYSENTER, SYSEXIT -------------------------------------------------------
    # The hooks run in a QEMU helper that then only steps RIP past the instruction and
    # ends the block: a precise place to stop.  The #UD ones are intercepts, precise too.
    def _on_fast_call(self, kind: FastCall, _uc: int, _data: int) -> None:
        try:
            if not self.draining:
                self._fast_call(kind, self.engine.read(x86.UC_X86_REG_RIP))
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _fast_call(self, kind: FastCall, rip: int) -> None:
        fault = self._fast_call_fault(kind)
        if fault is not None:
            error = 0 if fault == VECTOR_GP else None
            self._guest_exception(fault, InterruptionType.HARDWARE_EXCEPTION, error, rip)
            return
        length = int(dec.decode(self.engine.fetch(rip), rip).len)
        self._leave_precise(GuestSyscall(rip + length, kind))

    def _fast_call_fault(self, kind: FastCall) -> int | None:
        """The exception the SDM has the instruction raise instead, if any."""
        if kind is FastCall.SYSCALL:
            return None if self._syscall_enabled() else VECTOR_UD
        read = functools.partial(cpu_msrs.read_msr, self.engine)
        cpl = self.engine.read(x86.UC_X86_REG_CS) & 3
        return VECTOR_GP if sysenter_fault(read, kind, cpl) else None

    def _syscall_enabled(self) -> bool:
        """SDM: SYSCALL is #UD unless EFER.SCE and LMA are set and CS is 64-bit code."""
        e = self.engine
        efer = cpu_msrs.read_msr(e, IA32_EFER)
        if efer & _EFER_SCE_LMA != _EFER_SCE_LMA:
            return False
        values = e.saved.read()
        gdtr = e.saved.mmr_tuples()[0]
        cr0, cr3, cs = values[18], values[19], values[23]
        linear = guest_linear(self.memory, cr0=cr0, cr3=cr3, efer=efer)
        descriptor = read_descriptor(linear, gdtr[1], gdtr[2], cs)
        return descriptor is not None and bool(descriptor_fields(descriptor)[2] & AR_L)

    # -- RDMSR / WRMSR ------------------------------------------------------------------
    def _msr_exits(self, msr: int, write: bool) -> bool:
        bitmap = self.policy.msr_bitmap  # type: ignore[union-attr]
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

    def _msr(self, rip: int, fetched: bytes) -> None:
        write = fetched[:2] == b"\x0f\x30"
        length = _length(fetched, rip)
        e = self.engine
        msr = e.read(x86.UC_X86_REG_RCX) & 0xFFFF_FFFF
        if self._msr_exits(msr, write):
            self._instruction_exit(ExitReason.WRMSR if write else ExitReason.RDMSR, length)
            return
        # Not an exit: the access reaches the processor's own MSR -- the guest's value of a
        # VMCS-backed one (the engine holds it), else what the handler's CPU has.
        backed = VMCS_BACKED_MSRS.get(msr)
        try:
            if write:
                high = e.read(x86.UC_X86_REG_RDX) & 0xFFFF_FFFF
                value = high << 32 | e.read(x86.UC_X86_REG_RAX) & 0xFFFF_FFFF
                if backed is None:
                    self.cpu.wrmsr(msr, value)
                else:
                    fault = wrmsr_fault(self.cpu, msr, value)
                    if fault is not None:
                        raise fault
                    cpu_msrs.write_msr(e, msr, value)
                    self.capture.noted[backed.field] = value
            else:
                value = self.cpu.rdmsr(msr) if backed is None else cpu_msrs.read_msr(e, msr)
                e.write(x86.UC_X86_REG_RAX, value & 0xFFFF_FFFF)
                e.write(x86.UC_X86_REG_RDX, value >> 32)
        except MsrFault:
            self._guest_exception(VECTOR_GP, InterruptionType.HARDWARE_EXCEPTION, 0, rip)
            return
        self._step(rip + length)

    # -- EPT -------------------------------------------------------------------------------
    def _nested_page_fault(self) -> None:
        """The nested page table stopped an access: an EPT exit, or a step (``ept``)."""
        assert self.policy is not None and self.policy.ept is not None
        stepper = self.stepper
        found = nested_fault(
            self.engine,
            self.capture,
            self.memory,
            self.policy.ept,
            stepping=stepper.rip if stepper.armed else None,
        )
        if isinstance(found, StepOver):
            self._leave_precise(found)
        else:
            self._finish_precise(self.decide(self._record(found)))

    # -- guest exceptions -----------------------------------------------------------------
    def _exception(self, vector: int) -> None:
        """An exception the guest raised; RIP is at the instruction (or past it, a trap's)."""
        e = self.engine
        if vector == VECTOR_DB and self.stepper.armed:
            # The single step's own trap; after SYSCALL it comes with the call pending.
            if self.outcome is None:
                self._leave_precise(STEPPED)
            return
        rip = e.read(x86.UC_X86_REG_RIP)
        if vector == VECTOR_UD:
            self._invalid_opcode(rip)
            return
        if vector == VECTOR_PF:
            # Intercepted, the fault left CR2 alone: set it as the fault itself does (a
            # handler that reinjects the #PF has no other way to).
            (address,) = _Q.unpack(e.read_physical(svm.PAGE_FAULT_ADDRESS, 8))
            e.write(x86.UC_X86_REG_CR2, address)
        kind = InterruptionType.HARDWARE_EXCEPTION
        self._guest_exception(vector, kind, self._error_code(vector), rip)

    def _software_interrupt(self, rip: int, fetched: bytes) -> None:
        """INT n, INT3 or INTO at ``rip`` (QEMU makes INT3 and INTO software interrupts)."""
        ins = dec.decode(fetched, rip)
        if ins.mnemonic == Mnemonic.INT3:
            vector, kind = VECTOR_BP, InterruptionType.SOFTWARE_EXCEPTION
        elif ins.mnemonic == Mnemonic.INTO:
            vector, kind = _VECTOR_OF, InterruptionType.SOFTWARE_EXCEPTION
        else:
            vector, kind = ins.immediate8, _SOFTWARE_INTERRUPT
        self._guest_exception(vector, kind, None, rip, ins.len)

    def _invalid_opcode(self, rip: int) -> None:
        """#UD at ``rip``: a VMX instruction's exit, what QEMU's AMD model refuses and the
        Intel one has (INT1; SYSENTER/SYSEXIT in 64-bit mode), or a #UD."""
        ins = dec.decode(self.engine.fetch(rip), rip)
        if not ins.is_invalid and ins.mnemonic == Mnemonic.INT1:
            kind = InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION
            self._guest_exception(VECTOR_DB, kind, None, rip, ins.len)
            return
        fast_call = UNKNOWN_TO_QEMU.get(ins.mnemonic)
        if fast_call is not None and not ins.is_invalid:
            self._fast_call(fast_call, rip)
            return
        reason = None if ins.is_invalid else dec.VMX_EXITS.get(ins.mnemonic)
        if reason is ExitReason.VMFUNC and not self.policy.vmfunc_enabled:  # type: ignore[union-attr]
            reason = None  # SDM: VMFUNC is #UD unless "enable VM functions" is 1
        if reason is None:
            self._guest_exception(VECTOR_UD, InterruptionType.HARDWARE_EXCEPTION, None, rip)
            return
        qualification, info = dec.vmx_instruction_information(ins)
        record = self._record(ExitInformation(int(reason), qualification, ins.len, info))
        self._finish_precise(self.decide(record))

    def _error_code(self, vector: int) -> int | None:
        if vector not in ERROR_CODE_VECTORS:
            return None
        exact = self.capture.registers.error_code  # QEMU's own, where it can be read
        if exact is not None:
            return exact.value
        if vector == VECTOR_PF:
            system = self.engine.saved.read()[18:]  # CR0, CR3, ..., current
            efer = cpu_msrs.read_msr(self.engine, IA32_EFER) & ~svm.EFER_SVME
            rip = self.engine.read(x86.UC_X86_REG_RIP)
            return page_fault_error_code(self.engine, self.memory, efer, rip, system)
        return 0  # what #GP/#SS/#AC mostly push

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
        """An exception raised by the instruction at ``address``: exit or deliver."""
        leave = self._leave_precise if precise else self._leave_helper
        # SDM 25.2: INT n is not an exception; the exception bitmap never applies to it.
        if kind is _SOFTWARE_INTERRUPT or not self._exception_exits(vector, error):
            leave(GuestEvent(Event(vector, kind, error, address + length), address))
            return
        interruption = vector | kind << 8 | (error is not None) << 11 | _VALID
        qualification = self.engine.read(x86.UC_X86_REG_CR2) if vector == VECTOR_PF else 0
        info = ExitInformation(_EXCEPTION, qualification, length, 0, 0, 0, interruption, error or 0)
        plan = self.decide(self._record(info, address))
        leave(plan)

    def _exception_exits(self, vector: int, error: int | None) -> bool:
        policy = self.policy
        assert policy is not None
        hit = bool(policy.exception_bitmap >> vector & 1)
        if vector == VECTOR_PF:
            # SDM 25.2: the #PF bit is combined with the error-code mask/match test.
            return hit == ((error or 0) & policy.pfec_mask == policy.pfec_match)
        return hit
