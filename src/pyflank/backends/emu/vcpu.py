"""One vCPU of the software CPU, as an engine: ``run(plan)`` enters the guest and returns
at the next exit the processor must see, or at a stop.

The parts: ``StateCapture`` reads what an exit saves, ``ExitHooks`` turn unicorn's hooks
into exit records (deciding in place where leaving unicorn would cost more than the exit),
``EntryLoader`` loads plans and delivers events through the guest IDT, and ``EngineCpu``
is the handler's physical CPU (``cpu``), whose SYSCALL and TSC_AUX MSRs are unicorn's.

Events that do not exit behave as the hardware would: IN/OUT reach ``ports``, RDTSC runs
(from virtual time where a machine keeps it), SYSCALL and SYSENTER enter ring 0 (carried
out here: unicorn's do nothing), and HLT with interrupts enabled pauses the vCPU until an
interrupt comes (the processor's business); with interrupts disabled it ends the run.

With the monitor trap flag set every entry steps one instruction (``stepping``) and
leaves with the MTF exit; the EPT's nested page table may ask for a step of its own
(``ept``).  While a step is on, exits leave unicorn (the next entry steps again).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from unicorn import x86_const as x86

from pyflank.backends.base import PortIo
from pyflank.backends.emu import engine as eng
from pyflank.backends.emu import svm
from pyflank.backends.emu.capture import StateCapture
from pyflank.backends.emu.debug import EngineDebug
from pyflank.backends.emu.engine import Engine
from pyflank.backends.emu.entry import MONITOR_TRAP, EntryLoader
from pyflank.backends.emu.ept import StepOver
from pyflank.backends.emu.fast_calls import GuestSyscall
from pyflank.backends.emu.hooks import STEPPED, Decide, ExitHooks, GuestEvent
from pyflank.backends.emu.icount import InstructionCounter
from pyflank.backends.emu.native_exits import NativeCapture, NativeExitHooks, native_exits_for
from pyflank.backends.emu.physical_cpu import EngineCpu
from pyflank.backends.emu.register_probe import register_file
from pyflank.backends.emu.stop_gate import StopGate
from pyflank.intel_x64.cpu import CpuidRegisters
from pyflank.intel_x64.qualifications import InterruptionType
from pyflank.intel_x64.registers import RFLAGS_TF
from pyflank.intel_x64.vectors import VECTOR_DB
from pyflank.memory import GuestPhysicalMemory
from pyflank.processor import EntryPlan, Event, ExitRecord, Pause, Stop, StopReason
from pyflank.processor.fusion import Fusion

log = logging.getLogger("pyflank.backends.emu")


class EmuVcpu:
    """The processor in VMX non-root operation for one vCPU, over shared guest RAM."""

    def __init__(self, memory: GuestPhysicalMemory, ports: PortIo) -> None:
        self.memory = memory
        e = self.engine = Engine()
        registers = register_file(e.uc, e.handle)  # probes the engine: first, while it is fresh
        module = native_exits_for(registers)
        kind = StateCapture if module is None else NativeCapture
        capture = self.capture = kind(e, memory, registers)
        e.map_host_memory(0, memory.size, memory.address)
        e.map_private(svm.HOST_BASE, svm.HOST_SIZE)
        e.write_physical(svm.HOST_BASE, svm.host_region())
        self.cpu = EngineCpu(e)
        """The handler's physical CPU: the CPU model, with the engine's own MSRs."""
        self.stop_gate = StopGate(e)
        capture.progress = self.stop_gate.state
        self.native: NativeExitHooks | None = None
        """The exit hooks in C (``native_exits``), or None: the pure-Python ones run."""
        self._start: Callable[[int], int] = e.start
        if module is not None and isinstance(capture, NativeCapture):
            self.hooks: ExitHooks = NativeExitHooks(
                module, e, capture, memory, ports, self.cpu, self.stop_gate
            )
            self.native = self.hooks
            self._start = self.hooks.start
        else:
            self.hooks = ExitHooks(e, capture, memory, ports, self.cpu)
        self.loader = EntryLoader(e, self.capture, self.hooks, memory)
        self.stepper = self.hooks.stepper
        self._decide: Decide = self.hooks.decide  # the processor's, while a step is on
        self._stop_request: StopReason | None = None
        self._stop_lock = threading.Lock()
        self.instructions: InstructionCounter | None = None  # made when someone asks
        self.debug: EngineDebug | None = None  # breakpoints, steps, stops: when someone asks

    def cpuid_leaves(self) -> None:
        return None  # CPUID exits: nothing to sample

    def set_cpuid(self, answers: dict[tuple[int, int], CpuidRegisters | None]) -> None:
        raise NotImplementedError("the software CPU traps CPUID")

    def run(self, plan: EntryPlan, decide: Decide) -> ExitRecord | EntryPlan | Stop | Pause:
        """Enter the guest with ``plan``; the next exit, a plan decided in place that needs
        a VM entry of its own, a pause (the plan's budget spent, or HLT with interrupts
        enabled), or a stop.

        Every stop is precise: at an exit, or (``request_stop``) at the start of a block,
        between two instructions (``stop_gate``).
        """
        self.hooks.decide = self._decide = decide
        self.hooks.set_timing(plan.budget is not None, plan.idle_ns)
        self.stop_gate.allow(plan.budget)
        policy = plan.policy or self.hooks.policy
        monitor_trap = policy is not None and policy.monitor_trap
        loader = self.loader
        loader.monitor_trap = monitor_trap
        loader.trap = RFLAGS_TF if monitor_trap and plan.event is None else 0
        try:
            outcome: ExitRecord | EntryPlan | Stop | Pause | None = loader.enter(plan)
            if outcome is None and loader.trap:
                stub = loader.stub_bytes if loader.start_rip == loader.stub_start else 0
                self.stepper.arm(
                    loader.entered_rip,
                    loader.entered_tf,
                    monitor_trap=True,
                    set_flag=False,
                    skip=stub,
                )
                self.hooks.decide = self._while_stepping
            while outcome is None:
                outcome = self._execute()
            return outcome
        except Exception as exc:
            log.exception("software CPU failed")
            return Stop(StopReason.ERROR, f"{type(exc).__name__}: {exc}", self._state())

    def _execute(self) -> ExitRecord | EntryPlan | Stop | Pause | None:
        """Emulate until something stops it; None to go on."""
        if self._stop_request is not None:
            return Stop(self._stop_request, "", self._state())
        debug = self.debug
        if debug is not None:
            debug.before_start()
        status = self._start(self.loader.start_rip)
        outcome = self.hooks.take()
        if self.stepper.armed:
            if outcome is STEPPED or (outcome is None and self.stepper.gate_stopped()):
                return self._stepped()
            if isinstance(outcome, StepOver):
                self._step_over(outcome)
                return None
            parked = outcome is None and debug is not None and self._stop_request is None
            if parked and debug is not None and debug.take_stop():
                # Parked before the stepped instruction ran: the step (MTF) is still due.
                self.loader.start_rip = self.engine.read(x86.UC_X86_REG_RIP)
                return None
            self._interrupt_step()
            if isinstance(outcome, Pause | Stop) and outcome.state is not None:
                state = self.stepper.record(outcome.state)
                outcome = (
                    Pause(state, outcome.halted)
                    if isinstance(outcome, Pause)
                    else Stop(outcome.reason, outcome.message, state)
                )
        elif isinstance(outcome, StepOver):
            self._step_over(outcome)
            return None
        if isinstance(outcome, GuestEvent):
            return self.loader.deliver_guest(outcome)
        if isinstance(outcome, GuestSyscall):
            return self.loader.fast_system_call(outcome)
        if outcome is not None:
            return outcome  # type: ignore[return-value]
        if self._stop_request is not None:
            return Stop(self._stop_request, "", self._state())
        if status:
            return Stop(StopReason.ERROR, f"emulator: {eng.UcError(status)}", self._state())
        if debug is not None and debug.take_stop():  # the guest stopped in the debugger
            self.loader.start_rip = self.engine.read(x86.UC_X86_REG_RIP)
            return None
        if self.stop_gate.spent:  # at a block start: the time slice is over
            return Pause(self.capture.pause_state())
        self.loader.start_rip = self.engine.read(x86.UC_X86_REG_RIP)
        return None

    def _state(self) -> ExitRecord | None:
        """The guest's state now, when it is in the guest (a stop between exits)."""
        self._interrupt_step()
        return self.capture.snapshot() if self.loader.in_guest_mode else None

    def fuse(self, fusion: Fusion | None) -> None:
        """Let the native exits carry out what ``fusion`` allows (``processor.fusion``)."""
        if self.native is not None:
            self.native.fuse(fusion)

    # -- single steps (``stepping``) --------------------------------------------------------
    def _while_stepping(self, record: ExitRecord) -> EntryPlan | Stop:
        """``decide`` while a step is on: the step ends at the exit; with the monitor trap
        flag the entry leaves unicorn, so that the next one steps again."""
        self._interrupt_step()
        plan = self._decide(self.stepper.record(ExitRecord._make(record)))
        if isinstance(plan, EntryPlan) and plan.simple and self.loader.monitor_trap:
            plan = _leaving(plan)
        return plan

    def _interrupt_step(self) -> None:
        if self.stepper.armed:
            self.stepper.interrupted()
            self.hooks.decide = self._decide

    def _stepped(self) -> ExitRecord | None:
        """The stepped instruction completed: the MTF exit, or on with the guest."""
        stepper = self.stepper
        own_trap = stepper.finished()
        self.hooks.decide = self._decide
        rip = self.engine.read(x86.UC_X86_REG_RIP)
        self.loader.start_rip = rip
        if own_trap:  # the guest single-steps itself: its #DB, then any MTF exit
            debug = Event(VECTOR_DB, InterruptionType.HARDWARE_EXCEPTION, None, rip)
            return self.loader.deliver_guest(GuestEvent(debug, rip))
        if stepper.monitor_trap:
            return self.capture.record(MONITOR_TRAP)
        return None

    def _step_over(self, step: StepOver) -> None:
        """Let the instruction at RIP through the EPT's nested page table one step."""
        if step.widen is not None:
            self.hooks.nested.widen(step.widen)
        rip = self.engine.read(x86.UC_X86_REG_RIP)
        self.loader.start_rip = rip
        if not self.stepper.armed:
            tf = self.engine.read(x86.UC_X86_REG_RFLAGS) & RFLAGS_TF
            self.stepper.arm(rip, tf, monitor_trap=False, set_flag=True)
            self.hooks.decide = self._while_stepping

    def count_instructions(self) -> Callable[[], int]:
        """Count guest instructions from now on (``icount``); the count's reader."""
        if self.instructions is None:
            self.instructions = InstructionCounter(self.engine)
        return self.instructions.count

    def debugger(self) -> EngineDebug:
        """Breakpoints, watchpoints, single steps and stops on request (``debug``); the
        hooks exist only once something is set."""
        if self.debug is None:
            self.debug = EngineDebug(self)
        return self.debug

    def cancel_block_stop(self) -> None:
        """Lower the stop gate's flag, unless the vCPU is asked to stop for good (its
        thread: a stop the debugger asked for is taken)."""
        with self._stop_lock:
            if self._stop_request is None:
                self.stop_gate.state.stop = 0

    def request_stop(self, reason: StopReason = StopReason.STOPPED) -> None:
        """Ask the vCPU to stop (any thread); it stops at the next block boundary."""
        with self._stop_lock:
            if self._stop_request is None:
                self._stop_request = reason
        self.stop_gate.request()

    def close(self) -> None:
        pass  # the engine is freed with the vCPU


def _leaving(plan: EntryPlan) -> EntryPlan:
    """``plan``, made for the run loop rather than for resuming inside the hook."""
    copy = EntryPlan(
        plan.regs, plan.rip, plan.changed, plan.fields, plan.policy, plan.event, plan.launch
    )
    copy.simple = False
    copy.budget, copy.idle_ns = plan.budget, plan.idle_ns
    return copy
