"""The VMX transitions of one vCPU, written once for every engine.

``exit(record)`` is the exit half: the record's registers go to StateSave and its
exit-information fields and moved guest state to the VMCS (a field keeping its value is
not stored again: the handler cannot VMWRITE these, so the last values are known), the
exit is counted and traced, and ``dispatch()`` runs.  The entry half reads the verdict
(``vmcs.state``: resumed, halted, promoted) and builds the ``EntryPlan``: controls the
handler changed are checked against the engine and summarised, guest state it changed
is checked as VM entry checks it (SDM 26.3.1) -- a violation is a VM-entry-failure exit
to the handler, and a vCPU that keeps failing is given up on -- and an event written to
the VM-entry interruption-information field is taken for injection.

Bochs is the model: many exit producers (engines), one sink.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from time import perf_counter_ns

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.exit_handler.fused import fused_cpuid
from pyflank.intel_x64 import checks, exit_reasons
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import VmEntryControls
from pyflank.intel_x64.cpu import address_widths
from pyflank.intel_x64.exit_reasons import VM_ENTRY_FAILURE, ExitReason
from pyflank.intel_x64.fields import ALL_FIELDS, FieldType
from pyflank.intel_x64.msrs import EFER_LMA, IA32_VMX_EPT_VPID_CAP
from pyflank.intel_x64.qualifications import InterruptionType
from pyflank.intel_x64.vmcs import Vmcs, VmcsState
from pyflank.platform.devices.power import MachineEvent
from pyflank.processor.ept import EptModel
from pyflank.processor.fusion import Fusion
from pyflank.processor.interrupts import (
    INTERRUPT_WINDOW_EXIT,
    GuestClock,
    Interrupt,
    can_wake,
    external_interrupt_exit,
    in_hlt,
    pending_event,
    wake,
)
from pyflank.processor.launch import refused_launch
from pyflank.processor.machine import Machine
from pyflank.processor.observer import ReasonTrace, VcpuObserver, compose_observers
from pyflank.processor.policy import CONTROL_ENCODINGS, ExitPolicy, exit_policy
from pyflank.processor.records import (
    EXIT_INFORMATION_FIELDS,
    EntryPlan,
    Event,
    ExitInformation,
    ExitRecord,
    Pause,
    Stop,
    StopReason,
)

MAX_ENTRY_FAILURES = 64  # consecutive failed entries the handler resumed into: give up
_LAUNCHED = VmcsState.LAUNCHED
_GUEST_HLT, _POWER_OFF, _RESET = StopReason.GUEST_HLT, StopReason.POWER_OFF, StopReason.RESET
_INTERRUPT_EXITS = 16  # interrupt exits in a row before the guest is let run
_GUEST_RIP, _GUEST_RSP, _GUEST_RFLAGS = f.GUEST_RIP, f.GUEST_RSP, f.GUEST_RFLAGS
_GUEST_EFER, _ENTRY_CONTROLS = f.GUEST_IA32_EFER, f.VM_ENTRY_CONTROLS
_IA32E_GUEST = int(VmEntryControls.IA_32E_MODE_GUEST)
_TRIPLE_FAULT = int(ExitReason.TRIPLE_FAULT)
_ENTRY_FAILURE = int(ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE) | VM_ENTRY_FAILURE
_VALID = 1 << 31
_SOFTWARE_EVENTS = frozenset(
    {
        InterruptionType.SOFTWARE_INTERRUPT,
        InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION,
        InterruptionType.SOFTWARE_EXCEPTION,
    }
)
# Guest-state fields a VM entry checks and loads.  RIP and RSP come from StateSave.
GUEST_STATE: frozenset[int] = frozenset(
    e.encoding for e in ALL_FIELDS if e.type is FieldType.GUEST_STATE and not e.is_high
)
_CHECKED_GUEST_STATE = GUEST_STATE - {f.GUEST_RIP, f.GUEST_RSP}
_UNSET_INFO = ExitInformation(-1, -1, -1, -1, -1, -1, -1, -1, -1, -1)
_MASK64 = (1 << 64) - 1
_EPT_EXECUTE_ONLY = 1 << 0  # IA32_VMX_EPT_VPID_CAP: execute-only EPT entries are supported
Unsupported = Callable[[Vmcs], list[str]]


class VmxProcessor:
    """VM exits and entries of ``handler``'s vCPU; ``unsupported`` names the controls the
    engine cannot honour (empty when it can run them).  ``observer`` watches every exit
    (``processor.observer``); ``trace`` keeps (reason, RIP) of each in ``trace``."""

    __slots__ = (
        "_ept", "_failures", "_info", "_reload_all", "_resume", "_rflags", "_rip", "_rsp", "_stop",
        "_stop_reason", "clock", "engine", "exits", "fields", "handler", "machine", "observer",
        "policy", "state", "trace", "unsupported", "vmcs",
    )  # fmt: skip

    def __init__(
        self,
        handler: ExitHandlerIntelX64,
        unsupported: Unsupported,
        *,
        engine: str = "engine",
        trace: bool = False,
        machine: Machine | None = None,
        observer: VcpuObserver | None = None,
    ) -> None:
        self.handler = handler
        self.vmcs = handler.m_vmcs
        self.state = handler.m_state_save
        self.unsupported = unsupported
        self.engine = engine
        self.exits = 0  # VM exits dispatched to the handler
        reasons = ReasonTrace() if trace else None
        self.trace: list[tuple[int, int]] | None = reasons.exits if reasons else None
        watching = [o for o in (observer, reasons) if o is not None]
        self.observer = compose_observers(watching)  # None: the exit path calls nothing
        self.fields: Mapping[int, int] = self.vmcs.view()
        self._info = _UNSET_INFO  # what the VMCS holds of the exit-information fields
        self._rip = self._rsp = self._rflags = -1  # GUEST_RIP, RSP, RFLAGS as last stored
        self._resume = EntryPlan((), 0)  # the plan of an exit that only resumes
        self._failures = 0
        self._reload_all = False  # a failed entry loaded nothing: the next loads it all
        self.policy: ExitPolicy = exit_policy(self.vmcs)  # as of the last entry
        self._ept: EptModel | None = None  # made when the handler turns EPT on
        # The machine's interrupts and time, where there is one (a PC for Linux).
        self.machine = machine
        self.clock = GuestClock(machine) if machine is not None else None
        self._stop = threading.Event()
        self._stop_reason = StopReason.STOPPED

    def request_stop(self, reason: StopReason = StopReason.STOPPED) -> None:
        """Wake a vCPU idling in HLT so that it stops (any thread)."""
        self._stop_reason = reason
        self._stop.set()

    # -- exits the engine carries out itself (``processor.fusion``) ------------------
    def fusion(self) -> Fusion | None:
        """What the engine may do without this processor, or None: nothing where a
        machine keeps time or an observer other than the reason trace watches."""
        observer = self.observer
        if self.clock is not None or (observer is not None and type(observer) is not ReasonTrace):
            return None
        cpuid = fused_cpuid(self.handler)
        if cpuid is None:
            return None
        return Fusion(self._resume, cpuid, self.absorb, observer is not None)

    def absorb(
        self,
        count: int,
        info: ExitInformation,
        rip: int,
        rflags: int,
        regs: tuple[int, ...],
        rips: list[int] | None,
    ) -> None:
        """``count`` exits of ``info`` the engine carried out the seed's way, each resumed
        at once: what ``exit`` and ``dispatch()`` leave after them (see ``fusion``)."""
        if info != self._info:
            self._store_information(info)
        self._failures = 0
        self._store_flow(rip, regs[4], rflags)
        self.exits += count
        self.vmcs.entries += count  # one VMRESUME each
        s = self.state
        (
            s.rax, s.rcx, s.rdx, s.rbx, s.rsp, s.rbp, s.rsi, s.rdi,
            s.r08, s.r09, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15,
        ) = regs  # fmt: skip
        s.rip = (rip + info.instruction_length) & _MASK64
        if rips is not None and self.trace is not None:
            reason = info.reason & 0xFFFF
            self.trace.extend((reason, at) for at in rips)

    # -- VMLAUNCH ---------------------------------------------------------------------
    def launch(self) -> EntryPlan | Stop:
        """The first entry: VMLAUNCH's checks, then the whole guest state is loaded."""
        refused = refused_launch(self.handler)
        if refused is not None:
            return Stop(StopReason.ERROR, refused)
        vmcs = self.vmcs
        vmcs.load()
        vmcs.launch()
        self._reload_all = True
        vmcs.dirty.update(CONTROL_ENCODINGS)  # the engine learns every control
        return self._entry(launch=True)

    # -- VM exit ------------------------------------------------------------------------
    def exit(self, record: ExitRecord) -> EntryPlan | Stop:
        """One VM exit: store it, ``dispatch()``, and the next entry (or why not)."""
        info, regs, rip, rflags, guest, detail, executed = record
        if info is not self._info:  # (the same object again: the same, ordinary exit)
            if info[0] == _ENTRY_FAILURE:  # the engine refused the entry: nothing loaded
                if self._failures >= MAX_ENTRY_FAILURES:
                    return self._give_up(detail)
                self._failures += 1
                self._reload_all = True
                self.handler.log(f"VM entry failed: {detail}")
            elif self._failures:
                self._failures = 0  # the guest ran since
            if info != self._info:
                self._store_information(info)
            if info[0] == _ENTRY_FAILURE:
                self._info = ExitInformation(*info)  # never "the same object" next time
        s = self.state
        (
            s.rax, s.rcx, s.rdx, s.rbx, s.rsp, s.rbp, s.rsi, s.rdi,
            s.r08, s.r09, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15, _, _,
        ) = regs  # fmt: skip
        s.rip = rip
        if rflags != self._rflags:
            self.vmcs.processor_write(_GUEST_RFLAGS, rflags)
            self._rflags = rflags
        if rip != self._rip or regs[4] != self._rsp:
            write = self.vmcs.processor_write
            write(_GUEST_RIP, rip)
            write(_GUEST_RSP, regs[4])
            self._rip, self._rsp = rip, regs[4]
        if guest:
            write = self.vmcs.processor_write
            for encoding, value in guest.items():
                write(encoding, value)
            efer = guest.get(_GUEST_EFER)
            if efer is not None:  # SDM 28.2: "IA-32e mode guest" is saved from EFER.LMA
                entry = self.vmcs.read(_ENTRY_CONTROLS)
                mode = _IA32E_GUEST if efer & EFER_LMA else 0
                if entry & _IA32E_GUEST != mode:
                    write(_ENTRY_CONTROLS, entry & ~_IA32E_GUEST | mode)
        clock = self.clock
        if clock is not None:
            clock.ran(executed)
            if clock.machine.machine.request is not None:
                return self._machine_request()
        if self.observer is None:
            self.exits += 1
            self.handler.dispatch()
        else:
            stop = self._observed(ExitRecord._make(record))
            if stop is not None:
                return stop
        vmcs = self.vmcs
        if vmcs.state is _LAUNCHED and not vmcs.dirty and not self._reload_all:
            plan = self._resume  # consumed by the engine before its next exit: reused
            plan.regs = (
                s.rax, s.rcx, s.rdx, s.rbx, s.rsp, s.rbp, s.rsi, s.rdi,
                s.r08, s.r09, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15,
            )  # fmt: skip
            plan.rip = s.rip
            return plan if clock is None else self._with_machine(plan)
        return self._entry()

    def pause(self, pause: Pause) -> EntryPlan | Stop:
        """The engine paused between exits: time passes, and interrupts may be due."""
        self._store_state(pause.state)
        clock = self.clock
        if clock is None:
            if pause.halted:  # nothing could ever wake it: the run is over
                return self.stopped(Stop(_GUEST_HLT, "HLT with interrupts enabled: nothing "
                                         "would wake the vCPU"))  # fmt: skip
            return self._next_entry()
        clock.ran(pause.state.executed)
        if clock.machine.machine.request is not None:
            return self._machine_request()
        if pause.halted:
            while pending_event(clock.machine, self.policy, self.vmcs) is Interrupt.NONE:
                if not clock.idle(self._stop):
                    return Stop(self._stop_reason, "stopped while the guest was halted")
        return self._next_entry()

    def stopped(self, stop: Stop) -> Stop:
        """The engine stopped between exits: its last state goes to StateSave and VMCS.
        A guest that asked the machine to power off (or reset) before it stopped did."""
        if stop.state is not None:
            self._store_state(stop.state)
        if self.clock is not None and self.clock.machine.machine.request is not None:
            return self._machine_request()
        if stop.reason not in (StopReason.HALTED, StopReason.PROMOTED, StopReason.SHUTDOWN):
            self.handler.log(f"vcpu stopped ({stop.reason.value}): {stop.message}")
        return stop

    def _store_state(self, record: ExitRecord) -> None:
        """Guest state the engine reports between exits (a stop, a pause)."""
        s = self.state
        (
            s.rax, s.rcx, s.rdx, s.rbx, s.rsp, s.rbp, s.rsi, s.rdi,
            s.r08, s.r09, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15, _, _,
        ) = record.regs  # fmt: skip
        s.rip = record.rip
        self._store_flow(s.rip, s.rsp, record.rflags)
        write = self.vmcs.processor_write
        for encoding, value in (record.guest or {}).items():
            write(encoding, value)

    # -- interrupts and time ------------------------------------------------------------
    def _with_machine(self, plan: EntryPlan | Stop) -> EntryPlan | Stop:
        """The entry as the machine's interrupts and timers make it (SDM 26.6.5)."""
        clock = self.clock
        assert clock is not None
        for _ in range(_INTERRUPT_EXITS):  # a handler may resume without taking one
            if not isinstance(plan, EntryPlan):
                return plan
            halted = in_hlt(self.vmcs)
            if plan.event is not None:
                if halted:
                    wake(self.vmcs)
                break  # an injected event goes first
            if halted:
                stop = self._sleep(clock)
                if stop is not None:
                    return stop
                if not plan.simple:
                    self._reload_all = True  # the plan is dropped: its state loads later
            decision = pending_event(clock.machine, self.policy, self.vmcs)
            if decision is Interrupt.NONE:
                break
            if decision is Interrupt.DELIVER:
                if halted:
                    wake(self.vmcs)
                vector = clock.machine.interrupts.acknowledge()
                event = Event(vector, InterruptionType.EXTERNAL_INTERRUPT, None, plan.rip)
                plan = EntryPlan(plan.regs, plan.rip, plan.changed, plan.fields, plan.policy,
                                 event, plan.launch)  # fmt: skip
                break
            if not plan.simple and not halted:
                break  # the guest state of this plan is not loaded yet: at the next entry
            if decision is Interrupt.EXIT:
                plan = self._exit_now(external_interrupt_exit(clock.machine, self.policy))
            else:
                plan = self._exit_now(INTERRUPT_WINDOW_EXIT)
        if isinstance(plan, EntryPlan):
            plan.budget = clock.budget()
            plan.idle_ns = clock.idle_ns
        return plan

    def _alone(self, plan: EntryPlan) -> EntryPlan | Stop:
        """An entry with no machine around the vCPU: nothing can end a HLT."""
        if in_hlt(self.vmcs):
            if plan.event is None:
                return Stop(_GUEST_HLT, "activity state HLT and no machine to wake the vCPU")
            wake(self.vmcs)
        return plan

    def _sleep(self, clock: GuestClock) -> Stop | None:
        """The guest is in activity state HLT: idle until an interrupt would end it."""
        if not can_wake(self.policy, self.vmcs):
            return Stop(_GUEST_HLT, "activity state HLT with interrupts disabled: nothing "
                        "would wake the vCPU")  # fmt: skip
        while pending_event(clock.machine, self.policy, self.vmcs) is Interrupt.NONE:
            if not clock.idle(self._stop):
                return Stop(self._stop_reason, "stopped while the guest was halted")
            if clock.machine.machine.request is not None:
                return self._machine_request()
        return None

    def _machine_request(self) -> Stop:
        """The guest powered the machine off or reset it (a device recorded it)."""
        assert self.clock is not None
        request = self.clock.machine.machine.request
        assert request is not None
        reason = _POWER_OFF if request.event is MachineEvent.POWER_OFF else _RESET
        status = "" if request.exit_status is None else f", exit status {request.exit_status}"
        return Stop(reason, f"{request.event.value} through {request.source}{status}")

    def _exit_now(self, info: ExitInformation) -> EntryPlan | Stop:
        """An exit the processor makes itself, at the instruction the guest would run next."""
        vmcs, s = self.vmcs, self.state
        self._store_flow(s.rip, s.rsp, vmcs.read(_GUEST_RFLAGS))
        self._store_information(info)
        stop = self._dispatch_made(info)
        if stop is not None:
            return stop
        return self._next_entry(machine=False)

    def _next_entry(self, *, machine: bool = True) -> EntryPlan | Stop:
        """The entry after the handler ran, or after a pause (StateSave holds the guest)."""
        vmcs, s = self.vmcs, self.state
        if vmcs.state is _LAUNCHED and not vmcs.dirty and not self._reload_all:
            regs = (
                s.rax, s.rcx, s.rdx, s.rbx, s.rsp, s.rbp, s.rsi, s.rdi,
                s.r08, s.r09, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15,
            )  # fmt: skip
            plan: EntryPlan | Stop = EntryPlan(regs, s.rip)
        else:
            plan = self._entry(machine=False)
        return self._with_machine(plan) if machine and self.clock is not None else plan

    # -- VM entry -----------------------------------------------------------------------
    def _entry(self, *, launch: bool = False, machine: bool = True) -> EntryPlan | Stop:
        """The entry after the handler ran (the verdict, then what it changed)."""
        vmcs = self.vmcs
        self._rip = self._rflags = -1  # the handler may have written them
        while True:
            if vmcs.state is not _LAUNCHED:
                return self._verdict()
            dirty = vmcs.dirty
            policy: ExitPolicy | None = None
            if not dirty.isdisjoint(CONTROL_ENCODINGS):
                problems = self.unsupported(vmcs)
                if problems:
                    why = "; ".join(problems)
                    return Stop(StopReason.ERROR, f"unsupported on the {self.engine}: {why}")
                policy = self.policy = self._walked(exit_policy(vmcs))
            changed = _CHECKED_GUEST_STATE if self._reload_all else dirty & _CHECKED_GUEST_STATE
            if changed:
                violations = checks.check_guest_state(vmcs, self.handler.m_cpu)
                if violations:
                    if self._failures >= MAX_ENTRY_FAILURES:
                        return self._give_up(str(violations[0]))
                    stop = self._entry_failure(violations)
                    if stop is not None:
                        return stop
                    continue
            event = self._event(dirty)
            dirty.clear()
            self._reload_all = False
            s = self.state
            plan = EntryPlan(
                (
                    s.rax, s.rcx, s.rdx, s.rbx, s.rsp, s.rbp, s.rsi, s.rdi,
                    s.r08, s.r09, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15,
                ),
                s.rip,
                frozenset(changed),
                self.fields,
                policy,
                event,
                launch,
            )  # fmt: skip
            if self.clock is None:
                return self._alone(plan)
            return self._with_machine(plan) if machine else plan

    def _walked(self, policy: ExitPolicy) -> ExitPolicy:
        """``policy`` with the EPT its EPTP points at, walked now (SDM: a VM entry that
        loads an EPTP, or one after INVEPT, uses the EPT as it is then)."""
        if policy.eptp is None:
            return policy
        if self._ept is None:
            cpu = self.handler.m_cpu
            self._ept = EptModel(
                self.handler.host_memory(),
                physical_width=address_widths(cpu)[0],
                execute_only=bool(cpu.rdmsr(IA32_VMX_EPT_VPID_CAP) & _EPT_EXECUTE_ONLY),
            )
        return replace(policy, ept=self._ept.view(policy.eptp))

    def _entry_failure(self, violations: list[checks.Violation]) -> Stop | None:
        """SDM 27.8: VM entry failed on guest state; exit reason 33 with bit 31."""
        findings = "; ".join(map(str, violations))
        self.handler.log(f"VM entry failed: guest state fails the VM-entry checks: {findings}")
        self._failures += 1
        self._reload_all = True
        self.vmcs.dirty.clear()  # what the handler writes now is its fix
        info = ExitInformation(_ENTRY_FAILURE)
        self._store_information(info)
        return self._dispatch_made(info)

    def _dispatch_made(self, info: ExitInformation) -> Stop | None:
        """``dispatch()`` an exit the processor made itself (StateSave holds the guest),
        observed as any other; a stop if an observer breaks on it."""
        if self.observer is None:
            self.exits += 1
            self.handler.dispatch()
            return None
        s = self.state
        regs = (
            s.rax, s.rcx, s.rdx, s.rbx, s.rsp, s.rbp, s.rsi, s.rdi,
            s.r08, s.r09, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15,
        )  # fmt: skip
        return self._observed(ExitRecord(info, regs, s.rip, self.vmcs.read(_GUEST_RFLAGS)))

    def _observed(self, record: ExitRecord) -> Stop | None:
        """``dispatch()`` between the observer's two calls; its stop, if it breaks."""
        observer = self.observer
        assert observer is not None
        stop = observer.exiting(record)
        if stop is not None:
            return stop
        self.exits += 1
        start = perf_counter_ns()
        self.handler.dispatch()
        observer.exited(record, perf_counter_ns() - start)
        return None

    def _event(self, dirty: set[int]) -> Event | None:
        """The event of the VM-entry interruption-information field, if valid.

        SDM 27.2: VM exits clear the valid bit; it is cleared here, once the event is
        the engine's to deliver, so the handler never sees it set again.
        """
        if f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD not in dirty:
            return None
        read = self.vmcs.read
        info = read(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD)
        if not info & _VALID:
            return None
        self.vmcs.processor_write(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD, info & ~_VALID)
        kind = InterruptionType((info >> 8) & 7)
        error = read(f.VM_ENTRY_EXCEPTION_ERROR_CODE) if info >> 11 & 1 else None
        return_rip = self.state.rip
        if kind in _SOFTWARE_EVENTS:
            return_rip += read(f.VM_ENTRY_INSTRUCTION_LENGTH)
        return Event(info & 0xFF, kind, error, return_rip)

    def _verdict(self) -> Stop:
        vmcs = self.vmcs
        reason = vmcs.read(f.VM_EXIT_REASON)
        what = exit_reasons.description(reason)
        if vmcs.state is VmcsState.PROMOTED:
            return Stop(StopReason.PROMOTED, f"promoted at exit: {what}")
        if vmcs.state is VmcsState.HALTED and reason & 0xFFFF == _TRIPLE_FAULT:
            # The handler did not resume: the processor shuts down.
            return Stop(StopReason.SHUTDOWN, "triple fault, not resumed by the handler")
        return Stop(StopReason.HALTED, f"the exit handler halted the vCPU at: {what}")

    def _give_up(self, why: str) -> Stop:
        message = f"VM entry kept failing: {why}" if why else "VM entry kept failing"
        self.handler.log(f"vcpu stopped (error): {message}")
        return Stop(StopReason.ERROR, message)

    # -- bookkeeping ----------------------------------------------------------------------
    def _store_information(self, info: ExitInformation) -> None:
        write = self.vmcs.processor_write
        for encoding, value, old in zip(EXIT_INFORMATION_FIELDS, info, self._info, strict=True):
            if value != old:
                write(encoding, value)
        self._info = info

    def _store_flow(self, rip: int, rsp: int, rflags: int) -> None:
        write = self.vmcs.processor_write
        write(f.GUEST_RIP, rip)
        write(f.GUEST_RSP, rsp)
        write(f.GUEST_RFLAGS, rflags)
        self._rip, self._rsp, self._rflags = rip, rsp, rflags

    def vmcs_written(self) -> None:
        """Someone else wrote the VMCS (a debugger, a restore): store every field anew."""
        self._info = _UNSET_INFO
        self._rip = self._rflags = -1

    # -- snapshots ------------------------------------------------------------------------
    def continuity(self) -> ProcessorState:
        """What a restored processor needs to go on as this one would (between exits)."""
        clock = self.clock
        return ProcessorState(
            self.exits, self._failures, self._reload_all,
            clock.executed if clock is not None else 0, clock.idle_ns if clock is not None else 0,
        )  # fmt: skip

    def continue_from(self, saved: ProcessorState) -> None:
        """Go on from ``saved`` (a new processor of a restored vCPU, its VMCS restored)."""
        self.exits, self._failures, self._reload_all = saved.exits, saved.failures, saved.reload_all
        if self.clock is not None:
            self.clock.executed, self.clock.idle_ns = saved.executed, saved.idle_ns
        self.vmcs_written()


@dataclass(frozen=True)
class ProcessorState:
    """A processor's own state between exits (``VmxProcessor.continuity``)."""

    exits: int
    failures: int
    reload_all: bool
    executed: int  # guest time: the guest code run, and the time spent halted
    idle_ns: int
