"""Break on exit: stop a vCPU at an exit of a given reason or RIP, before its handler runs
(hvpp's dbgbreak handler, as an observer).

    breaks = BreakOnExit(reasons=[ExitReason.WRMSR], rips=[0x100020])
    [result] = Vm(MyHandler, observers=[breaks]).run()
    result.reason is StopReason.BREAK; result.state.rip; result.vmcs.read(EXIT_QUALIFICATION)

The vCPU stops with ``StopReason.BREAK`` and a message naming the exit; its result holds
the guest state at the exit (StateSave) and the exit's information (the VMCS), the
handler never having seen it.  A RIP matches where the exiting instruction is: code that
does not exit never breaks (that is a debugger's breakpoint, not an exit).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyflank.intel_x64 import exit_reasons
from pyflank.processor.records import Stop, StopReason

if TYPE_CHECKING:
    from pyflank.processor.observer import ObservedVcpu
    from pyflank.processor.records import ExitRecord

_BASIC = exit_reasons.BASIC_EXIT_REASON_MASK


@dataclass(frozen=True)
class BreakHit:
    """Where a vCPU broke."""

    vcpu: int
    exit: int
    """The exit's index among that vCPU's exits (the handler saw the ones before)."""
    reason: int
    """Its basic exit reason."""
    rip: int
    """The guest RIP of the exiting instruction."""

    def describe(self) -> str:
        """The break in words (the stop's message)."""
        name = exit_reasons.description(self.reason)
        where = f"exit {self.exit} of vCPU {self.vcpu}"
        return f"break on exit {self.reason} ({name}) at RIP {self.rip:#x}: {where}"


class _VcpuBreaks:
    __slots__ = ("exits", "owner", "skipped", "vcpuid")

    def __init__(self, owner: BreakOnExit, vcpuid: int) -> None:
        self.owner = owner
        self.vcpuid = vcpuid
        self.exits = 0
        self.skipped = 0

    def exiting(self, record: ExitRecord) -> Stop | None:
        owner = self.owner
        reason = record.info.reason & _BASIC
        index = self.exits
        self.exits += 1
        if not (
            reason in owner.reasons
            or record.rip in owner.rips
            or (owner.when is not None and owner.when(record))
        ):
            return None
        if self.skipped < owner.skip:
            self.skipped += 1
            return None
        self.exits -= 1  # the handler never sees this one
        hit = BreakHit(self.vcpuid, index, reason, record.rip)
        owner.hits.append(hit)
        return Stop(StopReason.BREAK, hit.describe())

    def exited(self, record: ExitRecord, handler_ns: int) -> None:
        pass

    def stopped(self, stop: Stop) -> None:
        pass


class BreakOnExit:
    """Stops a vCPU at the first exit with a basic reason in ``reasons``, a RIP in
    ``rips``, or for which ``when(record)`` is true -- after ``skip`` such exits.

    ``vcpus``: the vCPUs to watch (default: all).  ``hits`` lists where vCPUs broke.
    """

    def __init__(
        self,
        reasons: Iterable[int] = (),
        rips: Iterable[int] = (),
        *,
        when: Callable[[ExitRecord], bool] | None = None,
        skip: int = 0,
        vcpus: Iterable[int] | None = None,
    ) -> None:
        self.reasons = frozenset(int(r) for r in reasons)
        self.rips = frozenset(int(r) for r in rips)
        self.when = when
        if not (self.reasons or self.rips or when):
            raise ValueError("BreakOnExit needs exit reasons, RIPs or a condition to break on")
        bad = sorted(r for r in self.reasons if not 0 <= r <= _BASIC)
        if bad:
            raise ValueError(f"not basic exit reasons: {bad}")
        if skip < 0:
            raise ValueError(f"skip must be 0 or more, got {skip}")
        self.skip = skip
        self.vcpus = None if vcpus is None else frozenset(vcpus)
        self.hits: list[BreakHit] = []
        """Where vCPUs broke, in the order they did."""

    def attach(self, vcpu: ObservedVcpu) -> _VcpuBreaks | None:
        """Watch ``vcpu`` if it is one of ``vcpus`` (``Vm`` calls this before the run)."""
        if self.vcpus is not None and vcpu.vcpuid not in self.vcpus:
            return None
        return _VcpuBreaks(self, vcpu.vcpuid)

    def finished(self) -> None:
        """The run ended (``Vm`` calls this)."""
