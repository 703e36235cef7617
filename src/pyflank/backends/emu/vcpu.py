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
from pyflank.backends.emu.entry import EntryLoader
from pyflank.backends.emu.fast_calls import GuestSyscall
from pyflank.backends.emu.hooks import Decide, ExitHooks, GuestEvent
from pyflank.backends.emu.icount import InstructionCounter
from pyflank.backends.emu.native_exits import NativeCapture, NativeExitHooks, native_exits_for
from pyflank.backends.emu.physical_cpu import EngineCpu
from pyflank.backends.emu.register_probe import register_file
from pyflank.backends.emu.stop_gate import StopGate
from pyflank.intel_x64.cpu import CpuidRegisters
from pyflank.memory import GuestPhysicalMemory
from pyflank.processor import EntryPlan, ExitRecord, Pause, Stop, StopReason
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
        self.hooks.decide = decide
        self.hooks.set_timing(plan.budget is not None, plan.idle_ns)
        self.stop_gate.allow(plan.budget)
        try:
            outcome: ExitRecord | EntryPlan | Stop | Pause | None = self.loader.enter(plan)
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
        if isinstance(outcome, GuestEvent):
            return self.loader.deliver_guest(outcome)
        if isinstance(outcome, GuestSyscall):
            self.loader.fast_system_call(outcome)
            return None
        if outcome is not None:
            return outcome
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
        return self.capture.snapshot() if self.loader.in_guest_mode else None

    def fuse(self, fusion: Fusion | None) -> None:
        """Let the native exits carry out what ``fusion`` allows (``processor.fusion``)."""
        if self.native is not None:
            self.native.fuse(fusion)

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
