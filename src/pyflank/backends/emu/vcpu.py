"""One vCPU of the software CPU: VM entries, the run loop, and the state a VM exit saves.

The VM entry that loads guest state runs the SVM stub (see ``svm``); a resume whose only
changes are general registers and RIP just writes them.  Guest exceptions and injected
events are delivered through the guest IDT here (``events``), since unicorn never does.

Events that do not exit behave as the hardware would: IN/OUT reach ``ports``, RDTSC runs,
and HLT stops the vCPU as "guest HLT".  With RFLAGS.IF=1 too: the platform has no
interrupt source that could ever wake it.

What an exit saves, and how only what moved is stored again, is in ``exit_save``.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from unicorn import unicorn_const as uc_const
from unicorn import x86_const as x86

from pyflank.backends.base import PortIo, StopReason
from pyflank.backends.emu import engine as eng
from pyflank.backends.emu import svm
from pyflank.backends.emu.engine import Engine
from pyflank.backends.emu.entry import VmEntry
from pyflank.backends.emu.events import (
    VECTOR_PF,
    Delivery,
    Event,
)
from pyflank.backends.emu.exit_info import ExitRecorder
from pyflank.backends.emu.exit_save import ExitSave
from pyflank.backends.emu.exits import ExitHooks
from pyflank.backends.emu.policy import ExitPolicy, exit_policy
from pyflank.backends.emu.register_file import NEVER_SEEN
from pyflank.backends.launch import refused_launch
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.qualifications import InterruptionType
from pyflank.intel_x64.vmcs import VmcsState
from pyflank.memory import GuestPhysicalMemory

log = logging.getLogger("pyflank.backends.emu")

_EFER = 0xC000_0080
_PAT, _DEBUGCTL = 0x277, 0x1D9
_VALID = 1 << 31
_MAX_ENTRY_FAILURES = 64  # consecutive failed entries the handler resumed into: give up
_STATE_SAVE_FIELDS = frozenset({f.GUEST_RIP, f.GUEST_RSP})  # StateSave supersedes these


class EmuVcpu(ExitSave, ExitHooks, VmEntry):
    """The processor in VMX non-root operation for one handler, over shared guest RAM."""

    def __init__(
        self,
        handler: ExitHandlerIntelX64,
        memory: GuestPhysicalMemory,
        ports: PortIo,
        *,
        trace: bool = False,
    ) -> None:
        self.handler = handler
        self.vmcs = handler.m_vmcs
        self.state = handler.m_state_save
        self.memory = memory
        self.ports = ports
        self.exits = 0
        self.trace: list[tuple[int, int]] | None = [] if trace else None
        self.record = ExitRecorder(self.vmcs)
        self.delivery = Delivery(memory)
        self.policy: ExitPolicy = exit_policy(self.vmcs)
        self.stop_reason: StopReason | None = None
        self.message = ""
        self._stop_request: StopReason | None = None
        self._stop_lock = threading.Lock()
        self._needs_entry = False
        self._draining = False
        self._drain_context: Any = None
        self._event: Event | None = None
        self._start_rip = 0
        self._in_guest_mode = False
        self._last_exit_reason = -1
        self._full_entry_pending = False

        e = self.engine = Engine()
        self._attach(e)  # probes the engine: first, while it is fresh
        self._code_at, self._code2, self._code2_args = e.code_at, e.code2, e.code2_args
        e.map_host_memory(0, memory.size, memory.address)
        e.map_private(svm.HOST_BASE, svm.HOST_SIZE)
        e.write_physical(svm.HOST_BASE, svm.host_region())
        self._callbacks = (
            eng.INSN_CB(self._on_cpuid),
            eng.INSN_CB(self._on_rdtsc),
            eng.INSN_CB(self._on_rdtscp),
            eng.IN_CB(self._on_in),
            eng.OUT_CB(self._on_out),
            eng.INTR_CB(self._on_interrupt),
            eng.INVALID_CB(self._on_invalid),
        )
        cpuid, self._rdtsc_cb, rdtscp, in_cb, out_cb, intr, invalid = self._callbacks
        e.hook_instruction(x86.UC_X86_INS_CPUID, cpuid)
        e.hook_instruction(x86.UC_X86_INS_RDTSCP, rdtscp)
        e.hook_instruction(x86.UC_X86_INS_IN, in_cb)
        e.hook_instruction(x86.UC_X86_INS_OUT, out_cb)
        e.hook(uc_const.UC_HOOK_INTR, intr)
        e.hook(uc_const.UC_HOOK_INSN_INVALID, invalid)
        self._rdtsc_hook: int | None = None
        self._sync_rdtsc_hook()

    def sync_state(self) -> None:
        """Save the CPU's current state (a vCPU that stopped without an exit)."""
        if self._in_guest_mode:
            self._save()

    def _dispatch(self, reason: int, rip: int) -> None:
        self.exits += 1
        self._last_exit_reason = reason & 0xFFFF
        if self.trace is not None:
            self.trace.append((reason & 0xFFFF, rip))
        self.handler.dispatch()

    # -- leaving the hook --------------------------------------------------------------------
    def _stop_for_entry(self) -> None:
        self._needs_entry = True
        self._seen = NEVER_SEEN  # the entry may store other values in the fields saved
        self.engine.stop()

    def _drain(self) -> None:
        """Stop from inside an instruction hook without letting the block change anything."""
        self._drain_context = self.engine.context_save()
        self._draining = True
        self.engine.protect(0, self.memory.size, writable=False)
        self._stop_for_entry()

    def _fail(self, exc: BaseException) -> None:
        log.exception("software CPU error", exc_info=exc)
        self._finish(StopReason.ERROR, f"{type(exc).__name__}: {exc}")
        self.engine.stop()

    def _finish(self, reason: StopReason, message: str = "") -> None:
        if self.stop_reason is None:
            self.stop_reason = reason
            self.message = message

    def _guest_hlt(self, next_rip: int) -> None:
        self._seen = NEVER_SEEN
        self.state.rip = next_rip
        self.vmcs.processor_write(f.GUEST_RIP, next_rip)
        self._finish(StopReason.GUEST_HLT, "HLT without HLT exiting")
        self.engine.stop()

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
        self.state.rip = address
        self.vmcs.processor_write(f.GUEST_RIP, address)
        finish = self._stop_for_entry if precise else self._drain
        if not self._exception_exits(vector, error):
            self._event = Event(vector, kind, error, address + length)
            finish()
            return
        info = vector | kind << 8 | (error is not None) << 11 | _VALID
        qualification = self.engine.read(x86.UC_X86_REG_CR2) if vector == VECTOR_PF else 0
        self.record.exit(0, qualification, length, 0, 0, info, error or 0)
        self._dispatch(ExitReason.EXCEPTION_OR_NMI, address)
        finish()

    def _exception_exits(self, vector: int, error: int | None) -> bool:
        policy = self.policy
        hit = bool(policy.exception_bitmap >> vector & 1)
        if vector == VECTOR_PF:
            # SDM 25.2: the #PF bit is combined with the error-code mask/match test.
            return hit == ((error or 0) & policy.pfec_mask == policy.pfec_match)
        return hit

    # -- MSRs of the CPU itself (SVM intercepts them unless the MSRPM lets them through) ----
    def _msrpm_open(self, msr: int) -> tuple[int, bytes]:
        bit = svm.msrpm_bit(msr)
        if bit is None:
            raise ValueError(f"MSR {msr:#x} is outside the SVM permission map")
        address = svm.MSRPM + bit // 8
        old = self.engine.read_physical(address, 1)
        self.engine.write_physical(address, bytes([old[0] & ~(3 << (bit % 8))]))
        return address, old

    def read_msr(self, msr: int) -> int:
        address, old = self._msrpm_open(msr)
        try:
            return self.engine.read_msr_raw(msr)
        finally:
            self.engine.write_physical(address, old)

    def write_msr(self, msr: int, value: int) -> None:
        address, old = self._msrpm_open(msr)
        try:
            self.engine.write_msr_raw(msr, value)
        finally:
            self.engine.write_physical(address, old)

    # -- controls ------------------------------------------------------------------------------
    def _sync_rdtsc_hook(self) -> None:
        if self.policy.rdtsc and self._rdtsc_hook is None:
            self._rdtsc_hook = self.engine.hook_instruction(x86.UC_X86_INS_RDTSC, self._rdtsc_cb)
        elif not self.policy.rdtsc and self._rdtsc_hook is not None:
            self.engine.unhook(self._rdtsc_hook)
            self._rdtsc_hook = None

    # -- the run loop ----------------------------------------------------------------------------
    def run(self) -> StopReason:
        """Run until the vCPU stops; the reason (also in ``stop_reason``/``message``).

        After ``request_stop`` (a timeout) the saved RIP can point at a read-modify-write
        instruction that already completed: unicorn 2.1.4 does not resynchronise RIP when
        emulation stops asynchronously.  Every other stop is at an exit, and precise.
        """
        try:
            if self.vmcs.state is VmcsState.CLEAR:
                refused = refused_launch(self.handler)
                if refused is not None:
                    self._finish(StopReason.ERROR, refused)
                    return self._stopped()
                self.launch()
            if not self._enter():
                return self._stopped()
            while self.stop_reason is None:
                if self._stop_request is not None:
                    self._finish(self._stop_request)
                    break
                status = self.engine.start(self._start_rip)
                if self.stop_reason is not None:
                    break
                if self._needs_entry:
                    self._needs_entry = False
                    if not self._enter():
                        break
                    continue
                if self._stop_request is not None:
                    self.sync_state()
                    self._finish(self._stop_request)
                    break
                if status:
                    self.sync_state()
                    self._finish(StopReason.ERROR, f"emulator: {eng.UcError(status)}")
                    break
                self._start_rip = self.engine.read(x86.UC_X86_REG_RIP)
        except Exception as exc:
            log.exception("software CPU failed")
            self._finish(StopReason.ERROR, f"{type(exc).__name__}: {exc}")
        return self._stopped()

    def _stopped(self) -> StopReason:
        assert self.stop_reason is not None
        return self.stop_reason

    def request_stop(self, reason: StopReason = StopReason.STOPPED) -> None:
        """Ask the vCPU to stop (any thread); it stops at the next block boundary."""
        with self._stop_lock:
            if self._stop_request is None:
                self._stop_request = reason
        self.engine.stop()
