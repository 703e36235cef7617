"""VM entry on the software CPU: checks, event injection and loading the guest state.

A resume whose only changes are general registers, RIP, RSP and RFLAGS writes them into
the CPU.  Any other guest-state change (and the launch, and an intercept a control
turned on) loads the whole guest state from the VMCS through the SVM stub (``svm``).
Guest state the handler changed is checked first (SDM 26.3.1): a violation is a VM exit
for a VM-entry failure.  An injected event, or an exception the guest raised, is then
delivered through the guest IDT (``events``); a fault doing so with its exception-bitmap
bit set, or a triple fault, becomes a VM exit instead.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from unicorn import x86_const as x86

from pyflank.backends.base import StopReason
from pyflank.backends.emu import svm
from pyflank.backends.emu.events import CpuView, Event, Landing, NestedExit, TripleFault
from pyflank.backends.emu.guest_state import SEGMENT_FIELDS, save_segments
from pyflank.backends.emu.policy import CONTROL_FIELDS, INTERCEPT_FIELDS, exit_policy
from pyflank.backends.emu.register_file import NEVER_SEEN
from pyflank.intel_x64 import checks
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import VM_ENTRY_FAILURE, ExitReason
from pyflank.intel_x64.fields import FieldType, field_type
from pyflank.intel_x64.qualifications import InterruptionType
from pyflank.intel_x64.vmcs import VmcsState

if TYPE_CHECKING:
    from pyflank.backends.emu.engine import Engine
    from pyflank.backends.emu.events import Delivery
    from pyflank.backends.emu.exit_info import ExitRecorder
    from pyflank.backends.emu.policy import ExitPolicy
    from pyflank.exit_handler import ExitHandlerIntelX64, StateSave
    from pyflank.intel_x64.vmcs import Vmcs
    from pyflank.memory import GuestPhysicalMemory

log = logging.getLogger("pyflank.backends.emu")

_EFER = 0xC000_0080
_PAT, _DEBUGCTL = 0x277, 0x1D9
_VALID = 1 << 31
_MAX_ENTRY_FAILURES = 64  # consecutive failed entries the handler resumed into: give up
_STATE_SAVE_FIELDS = frozenset({f.GUEST_RIP, f.GUEST_RSP})  # StateSave supersedes these


class VmEntry:
    """The VM-entry half of ``EmuVcpu``, which provides what is declared here."""

    engine: Engine
    handler: ExitHandlerIntelX64
    vmcs: Vmcs
    state: StateSave
    memory: GuestPhysicalMemory
    policy: ExitPolicy
    record: ExitRecorder
    delivery: Delivery
    _draining: bool
    _drain_context: Any
    _event: Event | None
    _start_rip: int
    _in_guest_mode: bool
    _full_entry_pending: bool
    _last_exit_reason: int
    _system: tuple[tuple[int, ...], bytes] | None
    _seen: bytes

    def _dispatch(self, reason: int, rip: int) -> None:
        raise NotImplementedError

    def _finish(self, reason: StopReason, message: str = "") -> None:
        raise NotImplementedError

    def _gprs(self) -> list[int]:
        raise NotImplementedError

    def _sync_rdtsc_hook(self) -> None:
        raise NotImplementedError

    def read_msr(self, msr: int) -> int:
        raise NotImplementedError

    def write_msr(self, msr: int, value: int) -> None:
        raise NotImplementedError

    def launch(self) -> None:
        """VMPTRLD + VMLAUNCH: the first entry, from the VMCS the platform built."""
        self.policy = exit_policy(self.vmcs)
        self._sync_rdtsc_hook()
        self.vmcs.load()
        self.vmcs.launch()
        self.vmcs.processor_write(f.GUEST_PHYSICAL_ADDRESS, 0)  # no EPT: never defined
        e = self.engine
        e.write_mmr(x86.UC_X86_REG_GDTR, 0, svm.HOST_GDT, 8 * len(svm.HOST_GDT_ENTRIES) - 1, 0)
        e.write(x86.UC_X86_REG_CR3, svm.HOST_PML4)
        e.write(x86.UC_X86_REG_CR4, svm.HOST_CR4)
        e.write_msr_raw(_EFER, svm.HOST_EFER)
        e.write(x86.UC_X86_REG_CR0, svm.HOST_CR0)
        e.write_msr_raw(svm.MSR_VM_HSAVE_PA, svm.HSAVE)
        self._full_entry_pending = True

    def _enter(self) -> bool:
        """Finish an exit: VM entry into the guest, or stop.  False when the vCPU stops."""
        if self._drain_context is not None:
            self.engine.protect(0, self.memory.size, writable=True)
            self.engine.context_restore(self._drain_context)
            self._drain_context = None
            self._draining = False
        for _ in range(_MAX_ENTRY_FAILURES):
            state = self.vmcs.state
            if state is VmcsState.HALTED:
                shutdown = self._last_exit_reason == ExitReason.TRIPLE_FAULT
                self._finish(StopReason.SHUTDOWN if shutdown else StopReason.HALTED)
                return False
            if state is VmcsState.PROMOTED:
                self._finish(StopReason.PROMOTED)
                return False
            if self._load():
                return True
        self._finish(StopReason.ERROR, "VM entry kept failing")
        return False

    def _load(self) -> bool:
        """One VM entry.  False if it ended in a VM exit instead (already dispatched)."""
        vmcs = self.vmcs
        dirty = vmcs.dirty
        full = self._full_entry_pending
        if dirty & CONTROL_FIELDS:
            self.policy = exit_policy(vmcs)
            self._sync_rdtsc_hook()
            full = full or bool(dirty & INTERCEPT_FIELDS)
        guest = {e for e in dirty if field_type(e) is FieldType.GUEST_STATE} - _STATE_SAVE_FIELDS
        if guest or not self._in_guest_mode:
            violations = checks.check_guest_state(vmcs, self.handler.m_cpu)
            if violations:
                self._entry_failure(violations)
                return False
            full = True
        landing = self._deliver_pending()
        if landing is None:
            return False
        state = self.state
        rip, rsp, rflags = state.rip, state.rsp, vmcs.read(f.GUEST_RFLAGS)
        if isinstance(landing, Landing):
            rip, rsp, rflags = landing.rip, landing.rsp, landing.rflags
            full = full or self._land_segments(landing)
        vmcs.dirty.clear()
        if full:
            self._start_rip = self._full_entry(rip, rsp, rflags)
        else:
            e = self.engine
            e.gprs.write(self._gprs())
            e.write(x86.UC_X86_REG_RSP, rsp)
            e.write(x86.UC_X86_REG_RFLAGS, rflags)
            self._start_rip = rip
        self._full_entry_pending = False
        return True

    def _entry_failure(self, violations: list[Any]) -> None:
        for violation in violations:
            log.info("VM entry failure: %s", violation)
        self.record.exit(ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE | VM_ENTRY_FAILURE)
        self.vmcs.dirty.clear()
        self._dispatch(ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE, self.state.rip)

    def _cpu_view(self) -> CpuView:
        read = self.vmcs.read
        return CpuView(
            rip=self.state.rip,
            rsp=self.state.rsp,
            rflags=read(f.GUEST_RFLAGS),
            cs=read(f.GUEST_CS_SELECTOR),
            ss=read(f.GUEST_SS_SELECTOR),
            cpl=(read(f.GUEST_SS_ACCESS_RIGHTS) >> 5) & 3,
            cr0=read(f.GUEST_CR0),
            cr3=read(f.GUEST_CR3),
            efer=read(f.GUEST_IA32_EFER),
            gdtr_base=read(f.GUEST_GDTR_BASE),
            gdtr_limit=read(f.GUEST_GDTR_LIMIT),
            idtr_base=read(f.GUEST_IDTR_BASE),
            idtr_limit=read(f.GUEST_IDTR_LIMIT),
            tr_base=read(f.GUEST_TR_BASE),
        )

    def _deliver_pending(self) -> Landing | bool | None:
        """Deliver an injected or a guest event.  True: none; None: it became a VM exit."""
        vmcs = self.vmcs
        event = self._event
        self._event = None
        info = vmcs.read(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD)
        if info & _VALID:
            # SDM 27.2: the valid bit is clear again after the entry that delivers the event.
            vmcs.processor_write(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD, info & ~_VALID)
            kind = InterruptionType((info >> 8) & 7)
            error = vmcs.read(f.VM_ENTRY_EXCEPTION_ERROR_CODE) if info >> 11 & 1 else None
            next_rip = self.state.rip
            if kind in (4, 5, 6):
                next_rip += vmcs.read(f.VM_ENTRY_INSTRUCTION_LENGTH)
            event = Event(info & 0xFF, kind, error, next_rip)
        if event is None:
            return True
        try:
            outcome = self.delivery.deliver_with_faults(
                self._cpu_view(), event, self.policy.exception_bitmap
            )
        except TripleFault:
            self.record.exit(ExitReason.TRIPLE_FAULT)
            self._dispatch(ExitReason.TRIPLE_FAULT, self.state.rip)
            return None
        if isinstance(outcome, NestedExit):
            fault, original = outcome.fault, outcome.original
            interruption = fault.vector | fault.type << 8 | (fault.error_code is not None) << 11
            vectoring = (
                original.vector | original.type << 8 | (original.error_code is not None) << 11
            )
            self.record.exit(
                ExitReason.EXCEPTION_OR_NMI, 0, 0, 0, 0, interruption | _VALID,
                fault.error_code or 0, vectoring | _VALID, original.error_code or 0,
            )  # fmt: skip
            self._dispatch(ExitReason.EXCEPTION_OR_NMI, self.state.rip)
            return None
        if outcome.cr2 is not None:
            self.engine.write(x86.UC_X86_REG_CR2, outcome.cr2)
        return outcome

    def _land_segments(self, landing: Landing) -> bool:
        """Store the state a delivered event loaded; True if CS/SS need a full entry."""
        vmcs, state = self.vmcs, self.state
        state.rip, state.rsp = landing.rip, landing.rsp
        vmcs.processor_write(f.GUEST_RFLAGS, landing.rflags)
        old = [vmcs.read(fields[0]) for fields in SEGMENT_FIELDS]
        if old[1] == landing.cs and old[2] == landing.ss:
            return False
        new = [old[0], landing.cs, landing.ss, *old[3:]]
        save_segments(
            vmcs,
            self.memory,
            new,
            old,
            cr3=vmcs.read(f.GUEST_CR3),
            gdt_base=vmcs.read(f.GUEST_GDTR_BASE),
            gdt_limit=vmcs.read(f.GUEST_GDTR_LIMIT),
        )
        return True

    def _full_entry(self, rip: int, rsp: int, rflags: int) -> int:
        """Load all guest state from the VMCS through the VMLOAD/VMRUN stub; its address."""
        e = self.engine
        values = self.vmcs.fields()
        values[f.GUEST_RFLAGS] = rflags
        if self._in_guest_mode:
            dr6 = e.read(x86.UC_X86_REG_DR6)
            cr2 = e.read(x86.UC_X86_REG_CR2)
            preserved = {off: self.read_msr(msr) for off, msr in svm.VMLOAD_ONLY_MSRS.items()}
            efer = self.read_msr(_EFER)
        else:
            dr6, cr2, efer = 0xFFFF_0FF0, 0, svm.HOST_EFER
            preserved = dict.fromkeys(svm.VMLOAD_ONLY_MSRS, 0)
        vmcb = svm.build_vmcb(
            values,
            rip=rip,
            rsp=rsp,
            rax=self.state.rax,
            dr6=dr6,
            cr2=cr2,
            preserved_msrs=preserved,
            mov_dr_exiting=self.policy.mov_dr,
        )
        e.write_physical(svm.VMCB, vmcb)
        self.write_msr(_PAT, values[f.GUEST_IA32_PAT])
        self.write_msr(_DEBUGCTL, values[f.GUEST_IA32_DEBUGCTL])
        e.gprs.write(self._gprs())
        # The stub runs at CPL 0 in 64-bit mode on its own page tables and GDT.
        self.write_msr(_EFER, efer | svm.EFER_SVME)
        e.write(x86.UC_X86_REG_CR3, svm.HOST_PML4)
        e.write_mmr(x86.UC_X86_REG_GDTR, 0, svm.HOST_GDT, 8 * len(svm.HOST_GDT_ENTRIES) - 1, 0)
        e.write(x86.UC_X86_REG_CS, svm.HOST_CODE_SELECTOR)
        e.write(x86.UC_X86_REG_SS, svm.HOST_DATA_SELECTOR)
        e.write(x86.UC_X86_REG_RFLAGS, 2)
        e.write(x86.UC_X86_REG_RAX, svm.VMCB)
        self._in_guest_mode = True
        self._system = None  # VMRUN loaded new system state: compare afresh at the next exit
        self._seen = NEVER_SEEN
        return svm.STUB
