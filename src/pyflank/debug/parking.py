"""Stopping a running vCPU where its state is whole, and working on it there.

A vCPU *parks*: its own thread waits, the guest stopped, and runs what other threads hand
it (``call``: read registers, set a breakpoint, save it to a snapshot) until one of them
lets it go on (``resume``).  It parks at one of three points (``StopPoint``):

* ``ENGINE``: between two guest instructions, in the engine (a breakpoint, a single step,
  a watchpoint, or a stop asked for with ``request``: at the next start of guest code);
* ``IDLE``: halted in HLT with interrupts enabled, waiting for an interrupt that only host
  input can bring (a stop asked for then is taken there, within a poll of the wait);
* ``EXIT``: at a VM exit, before the handler runs (a debugger's break on exit).

Work done on the vCPU's own thread never races the engine, and a guest parked at an
``ENGINE`` or ``IDLE`` point goes on exactly as if it had never stopped (``ENGINE``
restarts count guest time a little differently: ``backends.emu.debug``).  Whoever wants
to know watches with ``listeners`` (called on the vCPU's thread as it parks and when it
stops for good).  A vCPU asked to stop for good (``abandon``: the run's timeout, another
vCPU's failure) leaves its park and parks no more.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

from pyflank.debug.views import EngineView, ExitView, RegisterView
from pyflank.intel_x64 import fields as f

if TYPE_CHECKING:
    from pyflank.backends.emu.debug import EngineDebug, EngineStop
    from pyflank.exit_handler import StateSave
    from pyflank.intel_x64.vmcs import Vmcs
    from pyflank.memory import GuestPhysicalMemory
    from pyflank.processor import ExitRecord, VmxProcessor

T = TypeVar("T")
_POLL = 0.05  # seconds between looks at an abandoned park


class StopPoint(Enum):
    """Where a parked vCPU is."""

    ENGINE = "engine"  # between two guest instructions
    IDLE = "idle"  # halted, waiting for an interrupt
    EXIT = "exit"  # at a VM exit, before the handler


@dataclass(frozen=True)
class Stopped:
    """Where and why a vCPU parked."""

    vcpuid: int
    point: StopPoint
    engine: EngineStop | None = None
    """What stopped it in the engine (``ENGINE``)."""
    exit: ExitRecord | None = None
    """The exit it stopped at (``EXIT``)."""
    why: str = ""
    """Words for the stop (an exit break's description)."""


@dataclass(frozen=True)
class Resume:
    """How a parked vCPU goes on: ``step`` stops it again before its next instruction."""

    step: bool = False


class ParkingClosed(RuntimeError):
    """The vCPU is not parked (it runs, or it stopped for good)."""


class _Call:
    __slots__ = ("done", "error", "fn", "result")

    def __init__(self, fn: Callable[[RegisterView], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


Listener = Callable[["Parking", "Stopped | None"], None]  # None: the vCPU stopped for good


class Parking:
    """Where one software vCPU parks.  ``debug`` is its engine's debugging hooks."""

    def __init__(
        self,
        vcpuid: int,
        debug: EngineDebug,
        *,
        state: StateSave,
        vmcs: Vmcs,
        memory: GuestPhysicalMemory,
    ) -> None:
        self.vcpuid = vcpuid
        self.debug = debug
        self.state = state
        self.vmcs = vmcs
        self.memory = memory
        self.processor: VmxProcessor | None = None
        self.listeners: list[Listener] = []
        self.stopped: Stopped | None = None
        """Where it is parked now (None: running, or ended)."""
        self.ended = False
        self._requested = False
        self._abandoned = False
        self._items: queue.SimpleQueue[_Call | Resume] = queue.SimpleQueue()
        self._changed = threading.Condition()
        debug.on_stop = self._engine_stopped

    # -- other threads --------------------------------------------------------------------
    def request(self) -> None:
        """Park at the next ``ENGINE`` or ``IDLE`` point (already parked: nothing)."""
        with self._changed:  # (a park taking the lock first absorbs the request)
            if self.stopped is not None or self.ended or self._abandoned:
                return
            self._requested = True
            self.debug.request_stop()

    def wait(self, timeout: float | None = None) -> bool:
        """Until it is parked or ended; whether it is parked."""
        with self._changed:
            self._changed.wait_for(lambda: self.stopped is not None or self.ended, timeout)
            return self.stopped is not None

    def call(self, fn: Callable[[RegisterView], T], timeout: float | None = None) -> T:
        """``fn(view)`` on the vCPU's thread while it is parked; its result (or exception).
        ``ParkingClosed`` if it is not parked."""
        if self.stopped is None:
            raise ParkingClosed(f"vCPU {self.vcpuid} is not parked")
        item = _Call(fn)
        self._items.put(item)
        waited = 0.0
        while not item.done.wait(_POLL):
            waited += _POLL
            if self.stopped is None:
                raise ParkingClosed(f"vCPU {self.vcpuid} went on before it answered")
            if timeout is not None and waited >= timeout:
                raise TimeoutError(f"vCPU {self.vcpuid} did not answer within {timeout} s")
        if item.error is not None:
            raise item.error
        result: T = item.result
        return result

    def resume(self, how: Resume | None = None) -> None:
        """Let a parked vCPU go on."""
        with self._changed:
            if self.stopped is None:
                return
        self._items.put(how or Resume())

    def abandon(self) -> None:
        """The vCPU must stop for good: it leaves any park and parks no more (any thread)."""
        with self._changed:
            self._abandoned = True
        self._items.put(Resume())

    # -- the vCPU's thread ------------------------------------------------------------------
    def park(self, stopped: Stopped, view: RegisterView) -> Resume:
        """Wait here, serving calls, until resumed."""
        if self._abandoned:
            return Resume()
        self._forget_stale()
        self._tell(stopped)  # before anyone waiting sees it parked
        with self._changed:
            self._requested = False
            self.debug.stop_requested = False  # any request before this one is this park
            self.stopped = stopped
            self._changed.notify_all()
        how = Resume()
        while True:
            try:
                item = self._items.get(timeout=_POLL)
            except queue.Empty:
                if self._abandoned:
                    break
                continue
            if isinstance(item, Resume):
                how = item
                break
            try:
                item.result = item.fn(view)
            except BaseException as exc:  # noqa: BLE001 - it goes back to the caller
                item.error = exc
            item.done.set()
        with self._changed:
            self.stopped = None
            self._changed.notify_all()
        self.debug.set_stepping(how.step and not self._abandoned)
        return how

    def at_idle(self) -> None:
        """The vCPU is halted, waiting for an interrupt: park if asked to."""
        if self._requested and self.processor is not None:
            self.park(Stopped(self.vcpuid, StopPoint.IDLE), self.exit_view())

    def at_exit(self, record: ExitRecord, why: str) -> Resume:
        """Park at this exit (before the handler runs)."""
        stopped = Stopped(self.vcpuid, StopPoint.EXIT, exit=record, why=why)
        how = self.park(stopped, self.exit_view())
        if how.step or self.debug.pending:
            # The engine would resume this exit in place, running the rest of its block
            # before any new hook: a guest-state change makes it a VM entry of its own.
            self.vmcs.dirty.add(f.GUEST_RFLAGS)
        return how

    def finished(self) -> None:
        """The vCPU stopped for good."""
        with self._changed:
            self.ended = True
            self._changed.notify_all()
        self._tell(None)

    def exit_view(self) -> ExitView:
        """The guest as the processor saved it (at an exit, or halted)."""
        return ExitView(self)

    def _engine_stopped(self, stop: EngineStop) -> None:
        self.park(Stopped(self.vcpuid, StopPoint.ENGINE, engine=stop),
                  EngineView(self.debug, self.memory))  # fmt: skip

    def _forget_stale(self) -> None:
        """What was handed in for an earlier park, too late: refused, not run now."""
        while True:
            try:
                item = self._items.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Call):
                item.error = ParkingClosed(f"vCPU {self.vcpuid} went on before it answered")
                item.done.set()

    def _tell(self, stopped: Stopped | None) -> None:
        for listener in list(self.listeners):
            listener(self, stopped)
