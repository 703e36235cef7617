"""Breaking into a debugger at a VM exit, before the handler runs, and going on from there.

Without a debugger, an observer that breaks on an exit (``observe.BreakOnExit``) ends the
vCPU's run with ``StopReason.BREAK``.  With one, ``DebuggerExits`` stands around the vCPU's
observers: a break parks the vCPU at the exit instead (``parking``), where the debugger
sees the guest as the exit saved it, and going on dispatches that exit to the handler, once,
as if nothing had stopped.  The debugger's own exit breaks (``ExitBreaks``: by basic
reason or RIP, changed while it runs) are taken the same way.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pyflank.intel_x64 import exit_reasons
from pyflank.processor.records import StopReason

if TYPE_CHECKING:
    from pyflank.debug.parking import Parking
    from pyflank.processor.observer import VcpuObserver
    from pyflank.processor.records import ExitRecord, Stop

_BASIC = exit_reasons.BASIC_EXIT_REASON_MASK


class ExitBreaks:
    """The exits a debugger breaks on, for every vCPU (changed from any thread)."""

    def __init__(self) -> None:
        self.reasons: frozenset[int] = frozenset()
        self.rips: frozenset[int] = frozenset()
        self._lock = threading.Lock()

    def add(self, *, reasons: Iterable[int] = (), rips: Iterable[int] = ()) -> None:
        with self._lock:
            self.reasons |= frozenset(reasons)
            self.rips |= frozenset(rips)

    def clear(self) -> None:
        with self._lock:
            self.reasons = self.rips = frozenset()

    def matches(self, record: ExitRecord) -> bool:
        return record.info.reason & _BASIC in self.reasons or record.rip in self.rips

    def describe(self) -> str:
        names = [f"{r} ({exit_reasons.description(r)})" for r in sorted(self.reasons)]
        names += [f"RIP {rip:#x}" for rip in sorted(self.rips)]
        return ", ".join(names) if names else "none"


class DebuggerExits:
    """The observer of one vCPU with a debugger attached: ``inner`` (the vCPU's own
    observers, or None) with breaks turned into parks."""

    __slots__ = ("breaks", "exits", "inner", "parking")

    def __init__(self, parking: Parking, breaks: ExitBreaks, inner: VcpuObserver | None) -> None:
        self.parking = parking
        self.breaks = breaks
        self.inner = inner
        self.exits = 0

    def exiting(self, record: ExitRecord) -> Stop | None:
        stop = self.inner.exiting(record) if self.inner is not None else None
        if stop is not None and stop.reason is not StopReason.BREAK:
            return stop
        index = self.exits
        self.exits += 1
        if stop is not None or self.breaks.matches(record):
            reason = record.info.reason & _BASIC
            why = stop.message if stop is not None else (
                f"break on exit {reason} ({exit_reasons.description(reason)}) at RIP "
                f"{record.rip:#x}: exit {index} of vCPU {self.parking.vcpuid}"
            )  # fmt: skip
            self.parking.at_exit(record, why)
        return None

    def exited(self, record: ExitRecord, handler_ns: int) -> None:
        if self.inner is not None:
            self.inner.exited(record, handler_ns)

    def stopped(self, stop: Stop) -> None:
        if self.inner is not None:
            self.inner.stopped(stop)
