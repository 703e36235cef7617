"""Exit statistics: how many exits of each basic reason each vCPU took, and how long its
handler spent on them (hvpp's statistics handler, as an observer).

    stats = ExitStatistics()
    Vm(MyHandler, observers=[stats]).run()
    print(stats.table())
    stats.reasons()[ExitReason.CPUID].count

At each vCPU's stop its table goes to that vCPU's debug ring (``log_table``), where
``VcpuResult.debug_ring`` and ``bfm dump`` show it.  ``timeline`` keeps each exit's reason
and time (ten bytes an exit) for pictures of the exits over time (``observe.plot``).
"""

from __future__ import annotations

import time
from array import array
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pyflank.intel_x64 import exit_reasons
from pyflank.processor.records import ExitInformation, ExitRecord

if TYPE_CHECKING:
    from pyflank.observe.tracefile import Trace, TracedExit
    from pyflank.processor.observer import ObservedVcpu
    from pyflank.processor.records import Stop

_BASIC = exit_reasons.BASIC_EXIT_REASON_MASK


@dataclass(frozen=True)
class ReasonStatistics:
    """The exits of one basic reason: how many, and the handler's time on them."""

    reason: int
    """The basic exit reason (``ExitReason`` value)."""
    count: int
    """How many exits of it the handler saw."""
    total_ns: int
    """The handler's time on them, in nanoseconds (``dispatch()``, wall clock)."""
    min_ns: int
    """The quickest one."""
    max_ns: int
    """The slowest one."""

    @property
    def name(self) -> str:
        """The reason as Bareflank named it ("cpuid", "io_instruction", ...)."""
        return exit_reasons.description(self.reason)

    @property
    def mean_ns(self) -> float:
        """The handler's mean time on one of them, in nanoseconds."""
        return self.total_ns / self.count if self.count else 0.0

    def __add__(self, other: ReasonStatistics) -> ReasonStatistics:
        if other.reason != self.reason:
            raise ValueError(f"cannot add statistics of reasons {self.reason} and {other.reason}")
        return ReasonStatistics(
            self.reason,
            self.count + other.count,
            self.total_ns + other.total_ns,
            min(self.min_ns, other.min_ns),
            max(self.max_ns, other.max_ns),
        )


def _as_record(e: TracedExit) -> ExitRecord:
    """A traced exit as the record the live observer saw (reason and RIP are what count)."""
    return ExitRecord(ExitInformation(e.reason, e.qualification), (), e.rip, 0)


class _VcpuStatistics:
    """The collector of one vCPU (the processor's observer of it)."""

    __slots__ = ("log", "owner", "rows", "stop", "timeline", "times", "vcpuid")

    def __init__(
        self, owner: ExitStatistics, vcpuid: int, log: Callable[[str], None] | None
    ) -> None:
        self.owner = owner
        self.vcpuid = vcpuid
        self.log = log  # where the table goes at the stop
        self.rows: dict[int, list[int]] = {}  # reason -> [count, total, min, max] (ns)
        self.stop: str | None = None
        self.timeline: array[int] | None = array("H") if owner.keep_timeline else None
        self.times: array[int] = array("q")  # ns since the run started, per exit

    def exiting(self, record: ExitRecord) -> Stop | None:
        return None

    def exited(self, record: ExitRecord, handler_ns: int, at_ns: int | None = None) -> None:
        reason = record.info.reason & _BASIC
        row = self.rows.get(reason)
        if row is None:
            self.rows[reason] = [1, handler_ns, handler_ns, handler_ns]
        else:
            row[0] += 1
            row[1] += handler_ns
            if handler_ns < row[2]:
                row[2] = handler_ns
            elif handler_ns > row[3]:
                row[3] = handler_ns
        timeline = self.timeline
        if timeline is not None and (
            self.owner.timeline_limit is None or len(timeline) < self.owner.timeline_limit
        ):
            timeline.append(reason)
            if at_ns is None:
                at_ns = time.perf_counter_ns() - self.owner.started_ns
            self.times.append(at_ns)

    def stopped(self, stop: Stop) -> None:
        self.stop = stop.reason.value
        if self.log is not None:
            self.log(self.owner.table(self.vcpuid))

    def reasons(self) -> dict[int, ReasonStatistics]:
        return {r: ReasonStatistics(r, *row) for r, row in sorted(self.rows.items())}


class ExitStatistics:
    """Counts and times every exit of a run, per vCPU and basic exit reason.

    ``log_table``: write each vCPU's table to its debug ring when it stops.
    ``timeline``: keep each exit's reason and time, for ``observe.plot`` (the first
    ``timeline_limit`` exits of each vCPU, where a long-lived VMM bounds its memory).
    """

    def __init__(
        self, *, log_table: bool = True, timeline: bool = True, timeline_limit: int | None = None
    ) -> None:
        self.log_table = log_table
        self.keep_timeline = timeline
        self.timeline_limit = timeline_limit
        self.started_ns = time.perf_counter_ns()
        self._vcpus: dict[int, _VcpuStatistics] = {}
        self._finished = False

    # -- the observer ------------------------------------------------------------------
    def attach(self, vcpu: ObservedVcpu) -> _VcpuStatistics:
        """Watch ``vcpu`` (``Vm`` calls this before the run)."""
        if self._finished:  # a new run: new figures
            self._vcpus = {}
            self._finished = False
        if not self._vcpus:
            self.started_ns = time.perf_counter_ns()
        log = vcpu.handler.log if self.log_table else None
        collector = _VcpuStatistics(self, vcpu.vcpuid, log)
        self._vcpus[vcpu.vcpuid] = collector
        return collector

    @classmethod
    def from_trace(cls, trace: Trace) -> ExitStatistics:
        """The statistics of a recorded run (``observe.trace``), as if watched live."""
        stats = cls(log_table=False)
        stats.started_ns = 0
        for e in trace.exits:
            collector = stats._vcpus.get(e.vcpu)
            if collector is None:
                collector = stats._vcpus[e.vcpu] = _VcpuStatistics(stats, e.vcpu, None)
            collector.exited(_as_record(e), e.handler_ns, at_ns=e.ns)
        for vcpu, traced in trace.vcpus.items():
            if vcpu in stats._vcpus:
                stats._vcpus[vcpu].stop = traced.stop
        stats._finished = True
        return stats

    def finished(self) -> None:
        """The run ended (``Vm`` calls this); the figures stay until the next run."""
        self._finished = True

    # -- the figures ---------------------------------------------------------------------
    @property
    def vcpus(self) -> list[int]:
        """The vCPUs watched, by id."""
        return sorted(self._vcpus)

    def reasons(self, vcpu: int | None = None) -> dict[int, ReasonStatistics]:
        """Basic exit reason -> its statistics, for ``vcpu`` or (None) all vCPUs summed."""
        if vcpu is not None:
            return self._vcpu(vcpu).reasons()
        total: dict[int, ReasonStatistics] = {}
        for collector in self._vcpus.values():
            for reason, row in collector.reasons().items():
                total[reason] = total[reason] + row if reason in total else row
        return dict(sorted(total.items()))

    def exits(self, vcpu: int | None = None) -> int:
        """How many exits the handler saw, on ``vcpu`` or (None) on all."""
        return sum(row.count for row in self.reasons(vcpu).values())

    def stop_reason(self, vcpu: int) -> str | None:
        """Why ``vcpu`` stopped ("guest hlt", "halted", ...), None while it runs."""
        return self._vcpu(vcpu).stop

    def timeline(self, vcpu: int | None = None) -> list[tuple[int, int, int]]:
        """(ns since the run began, vCPU, basic reason) of every exit, in time order;
        empty without ``timeline``."""
        ids = self.vcpus if vcpu is None else [vcpu]
        points = [
            (t, i, reason)
            for i in ids
            if (c := self._vcpu(i)).timeline is not None
            for t, reason in zip(c.times, c.timeline, strict=True)
        ]
        return sorted(points)

    def as_dict(self, *, timeline: bool = False) -> dict[str, Any]:
        """The figures as plain data (for JSON): per vCPU, per reason; with ``timeline``,
        every kept exit as [ns, vCPU, reason] too (``from_dict`` reads both back)."""
        data: dict[str, Any] = {
            "vcpus": {
                str(i): {
                    "stop": self.stop_reason(i),
                    "reasons": {
                        str(r): {"name": s.name, **asdict(s)} for r, s in self.reasons(i).items()
                    },
                }
                for i in self.vcpus
            }
        }
        if timeline:
            data["timeline"] = [list(point) for point in self.timeline()]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExitStatistics:
        """Statistics as ``as_dict`` gave them (from another process: ``bfm stats``)."""
        stats = cls(log_table=False, timeline="timeline" in data)
        stats.started_ns = 0
        for vcpu_text, figures in data["vcpus"].items():
            collector = _VcpuStatistics(stats, int(vcpu_text), None)
            for reason_text, row in figures["reasons"].items():
                collector.rows[int(reason_text)] = [
                    int(row["count"]), int(row["total_ns"]), int(row["min_ns"]), int(row["max_ns"])
                ]  # fmt: skip
            collector.stop = figures["stop"]
            stats._vcpus[collector.vcpuid] = collector
        for at_ns, vcpu, reason in data.get("timeline", []):
            collector = stats._vcpus[int(vcpu)]
            assert collector.timeline is not None
            collector.timeline.append(int(reason))
            collector.times.append(int(at_ns))
        stats._finished = True
        return stats

    def table(self, vcpu: int | None = None) -> str:
        """The figures as a text table, for ``vcpu`` or (None) every vCPU and the total."""
        if vcpu is not None:
            stop = self.stop_reason(vcpu)
            title = f"vCPU {vcpu}" + (f" (stopped: {stop})" if stop else "")
            return format_table(title, self.reasons(vcpu))
        parts = [self.table(i) for i in self.vcpus]
        if len(self.vcpus) > 1:
            parts.append(format_table("all vCPUs", self.reasons()))
        return "\n\n".join(parts)

    def _vcpu(self, vcpu: int) -> _VcpuStatistics:
        try:
            return self._vcpus[vcpu]
        except KeyError:
            raise KeyError(f"no statistics of vCPU {vcpu} (watched: {self.vcpus})") from None


def format_table(title: str, rows: dict[int, ReasonStatistics]) -> str:
    """``rows`` as a table under ``title``: count, share, the handler's total/mean/max."""
    total = sum(row.count for row in rows.values())
    lines = [
        f"{title}: {total:,} exits",
        f"  {'reason':<28} {'exits':>10} {'share':>7} {'total ms':>10} {'mean us':>9} "
        f"{'max us':>9}",
    ]
    for row in sorted(rows.values(), key=lambda r: (-r.count, r.reason)):
        label = f"{row.reason:>3} {row.name}"
        lines.append(
            f"  {label:<28} {row.count:>10,} {row.count / total:>7.1%} "
            f"{row.total_ns / 1e6:>10.3f} {row.mean_ns / 1e3:>9.2f} {row.max_ns / 1e3:>9.2f}"
        )
    return "\n".join(lines)
