"""Replaying a recorded run (``observe.record``) on the software CPU: ``observe.Replayer``.

The replayed Vm must be built as the recorded one was (the same guest loaded the same way:
the header's digest of the starting state is checked); its handler may differ.  The
replay gives the guest the recorded console input at the recorded points and the handler
the recorded CPU answers, and compares every exit -- reason, qualification, RIP, the
engine's progress count -- and what the handler decided at it with the recording.  The
first difference is the divergence: the vCPU stops there (``StopReason.DIVERGED``) and
``report`` says where and what.  A replay that matches to the recording's end stops where
the recording did (or, if that run was stopped from outside, at its next exit).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyflank.intel_x64 import exit_reasons
from pyflank.intel_x64.cpu import CpuidRegisters, MsrFault, PhysicalCpu
from pyflank.observe.format import REGISTERS, CpuCall, cpu_call, cpu_call_line
from pyflank.observe.input_gate import ReplayGate
from pyflank.observe.record import Decisions, progress_of, recordable, starting_state
from pyflank.observe.record_format import (
    RecordedExit,
    Recording,
    RecordingError,
    digest,
    read_recording,
)
from pyflank.processor.records import Stop, StopReason

if TYPE_CHECKING:
    from pyflank.processor.observer import ObservedVcpu
    from pyflank.processor.records import ExitRecord

_BASIC = exit_reasons.BASIC_EXIT_REASON_MASK
_FROM_OUTSIDE = frozenset({"timeout", "stopped", "break"})  # a run ended by someone else


@dataclass(frozen=True)
class Divergence:
    """Where a replay first left its recording."""

    exit: int
    """The index of the exit it happened at (or after, for input and the end)."""
    where: str
    what: str
    recorded: str
    replayed: str

    def describe(self) -> str:
        return (f"{self.where}: {self.what}: the recording has {self.recorded}, the replay "
                f"{self.replayed}")  # fmt: skip


@dataclass
class ReplayReport:
    """How a replay went (``Replayer.report``)."""

    exits: int = 0
    """Exits replayed that matched the recording."""
    divergence: Divergence | None = None
    complete: bool = False
    """The replay reached the recording's end."""
    notes: list[str] = field(default_factory=list)

    @property
    def matched(self) -> bool:
        """The replay reached the recording's end without a divergence."""
        return self.divergence is None and self.complete

    def describe(self) -> str:
        """How the replay went, in one line."""
        if self.divergence is not None:
            return f"diverged after {self.exits} matching exits, at {self.divergence.describe()}"
        if not self.complete:
            return f"replayed {self.exits} exits, but not to the recording's end"
        return f"replayed {self.exits} exits: every exit and decision matches the recording"


def _where(index: int, reason: int, rip: int) -> str:
    return f"exit {index} ({exit_reasons.description(reason)} at RIP {rip:#x})"


def _call_words(call: CpuCall | None) -> str:
    if call is None:
        return "no further question to the CPU"
    line = cpu_call_line(call)
    return " ".join(str(part) for part in line[:3])


class _ReplayCpu:
    """The handler's CPU during a replay: the recorded answers to the recorded questions;
    writes reach the real CPU and are compared."""

    def __init__(self, cpu: PhysicalCpu, owner: _VcpuReplay) -> None:
        self.cpu = cpu
        self.owner = owner
        self.calls: deque[CpuCall] = deque()
        self.active = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cpu, name)

    def start(self, calls: list[list[Any]]) -> None:
        self.calls = deque(cpu_call(line) for line in calls)
        self.active = True

    def finish(self) -> None:
        self.active = False
        if self.calls:
            self.owner.diverged("cpu", _call_words(self.calls[0]), "no further question")

    def _next(self, asked: CpuCall, key: int) -> CpuCall | None:
        expected = self.calls.popleft() if self.calls else None
        if expected is None or expected[:key] != asked[:key]:
            self.owner.diverged("cpu", _call_words(expected), _call_words(asked))
            self.active = False
            return None
        return expected

    def cpuid(self, leaf: int, subleaf: int) -> CpuidRegisters:
        if self.active:
            expected = self._next(("cpuid", leaf, subleaf, (0, 0, 0, 0)), 3)
            if expected is not None:
                eax, ebx, ecx, edx = expected[3]
                return eax, ebx, ecx, edx
        return self.cpu.cpuid(leaf, subleaf)

    def rdmsr(self, msr: int) -> int:
        if self.active:
            expected = self._next(("rdmsr", msr, None), 2)
            if expected is not None:
                if expected[2] is None:
                    raise MsrFault(msr, write=False)
                return int(expected[2])
        return self.cpu.rdmsr(msr)

    def wrmsr(self, msr: int, value: int) -> None:
        expected = self._next(("wrmsr", msr, value, False), 3) if self.active else None
        try:
            self.cpu.wrmsr(msr, value)
        except MsrFault:
            if expected is not None and not expected[3]:
                self.owner.diverged("cpu", f"WRMSR {msr:#x} accepted", f"WRMSR {msr:#x} #GP")
            raise

    def wbinvd(self) -> None:
        if self.active:
            self._next(("wbinvd",), 1)
        self.cpu.wbinvd()


class _VcpuReplay:
    def __init__(self, owner: Replayer, vcpu: Any) -> None:
        self.owner = owner
        self.vcpu = vcpu
        self.exits: list[RecordedExit] = owner.recording.exits
        self.index = 0
        self.decisions = Decisions(vcpu)
        self.cpu = _ReplayCpu(vcpu.handler.m_cpu, self)
        vcpu.handler.set_cpu(self.cpu)
        self.gate = ReplayGate(
            vcpu.serial, lambda: progress_of(vcpu), owner.recording.inputs, self.diverged
        )
        self.gate.install(vcpu.machine)
        self.where = "the start"

    def diverged(self, what: str, recorded: str, replayed: str) -> None:
        report = self.owner.report
        if report.divergence is None:
            report.divergence = Divergence(self.index, self.where, what, recorded, replayed)
            self.vcpu.handler.log(f"replay diverged at {report.divergence.describe()}")
            self.vcpu.request_stop(StopReason.DIVERGED)

    def _stop(self) -> Stop:
        divergence = self.owner.report.divergence
        assert divergence is not None
        return Stop(StopReason.DIVERGED, divergence.describe())

    def exiting(self, record: ExitRecord) -> Stop | None:
        report = self.owner.report
        if report.divergence is not None:
            return self._stop()
        if self.vcpu.machine is None:
            self.gate.at_exit(self.index)
        reason, rip = record.info.reason & _BASIC, self.vcpu.state.rip
        self.where = _where(self.index, reason, rip)
        if self.index >= len(self.exits):
            stop = self.owner.recording.stop or {}
            if stop.get("reason") in _FROM_OUTSIDE:
                self._console(stop)
                if report.divergence is not None:
                    return self._stop()
                return Stop(StopReason.STOPPED, f"the recording ends here ({stop.get('reason')})")
            self.diverged("end", f"the run ended ({stop.get('reason', 'unknown')})",
                          "another exit")  # fmt: skip
            return self._stop()
        recorded = self.exits[self.index]
        replayed = (reason, record.info.qualification, rip, record.executed)
        expected = (recorded.reason, recorded.qualification, recorded.rip, recorded.executed)
        if replayed != expected:
            names = ("exit reason", "qualification", "RIP", "guest progress")
            what, theirs, ours = next(
                (n, e, r) for n, e, r in zip(names, expected, replayed, strict=True) if e != r
            )
            self.where = _where(self.index, recorded.reason, recorded.rip)
            self.diverged(what, _shown(what, theirs), _shown(what, ours))
            return self._stop()
        self.decisions.before()
        self.cpu.start(recorded.cpu)
        return None

    def exited(self, record: ExitRecord, handler_ns: int) -> None:
        self.cpu.finish()
        if self.owner.report.divergence is not None:
            return
        recorded = self.exits[self.index].decided
        decided = self.decisions.decided()
        difference = _first_difference(recorded, decided)
        if difference is not None:
            self.diverged(*difference)
            return
        self.index += 1
        self.owner.report.exits = self.index

    def stopped(self, stop: Stop) -> None:
        report = self.owner.report
        if report.divergence is not None or report.complete:
            return
        self.where = f"the end, after exit {self.index - 1}"
        recorded = self.owner.recording.stop or {}
        if self.index < len(self.exits):
            if stop.reason.value in _FROM_OUTSIDE:  # (the replay's own timeout: not the guest's)
                report.notes.append(f"the replay was stopped ({stop.reason.value}) after "
                                    f"{self.index} of {len(self.exits)} exits")  # fmt: skip
                return
            self.diverged("end", f"{len(self.exits)} exits",
                          f"a stop ({stop.reason.value}) after {self.index}")  # fmt: skip
            return
        if stop.reason.value != recorded.get("reason"):
            self.diverged("stop", str(recorded.get("reason")), stop.reason.value)
            return
        self._console(recorded)

    def _console(self, recorded: dict[str, Any]) -> None:
        """The replay's console is the recording's (or begins with it, where the recorded run
        was stopped from outside and the replay may have run on)."""
        output, length = self.vcpu.serial.output, int(recorded.get("console_bytes", -1))
        outside = recorded.get("reason") in _FROM_OUTSIDE
        if digest(output[:length]) != recorded.get("console") or (
            not outside and len(output) != length
        ):
            self.diverged("console", f"{length} bytes of console output",
                          f"{len(output)} bytes, not the same")  # fmt: skip
            return
        self.owner.report.complete = True


def _shown(what: str, value: int) -> str:
    return f"{value:#x}" if what in ("RIP", "qualification") else str(value)


def _first_difference(
    recorded: dict[str, Any], replayed: dict[str, Any]
) -> tuple[str, str, str] | None:
    """(what, recorded, replayed) of the first way two decisions differ."""
    if recorded.get("state") != replayed.get("state"):
        return "verdict", _verdict(recorded.get("state")), _verdict(replayed.get("state"))
    if recorded.get("rip") != replayed.get("rip"):
        return "resume RIP", _value(recorded.get("rip")), _value(replayed.get("rip"))
    theirs, ours = recorded.get("regs", {}), replayed.get("regs", {})
    for name in REGISTERS:
        if theirs.get(name) != ours.get(name):
            return name, _value(theirs.get(name)), _value(ours.get(name))
    theirs, ours = recorded.get("vmcs", {}), replayed.get("vmcs", {})
    for name in sorted(set(theirs) | set(ours)):
        if theirs.get(name) != ours.get(name):
            return f"VMCS {name}", _value(theirs.get(name)), _value(ours.get(name))
    return None


def _verdict(state: object) -> str:
    return "the guest resumed" if state is None else f"the vCPU {state}"


def _value(value: object) -> str:
    return "no change" if value is None else f"{value:#x}" if isinstance(value, int) else str(value)


class Replayer:
    """Replays the recording at ``path`` into a Vm (``Vm(observers=[Replayer(path)])``);
    ``report`` says how it went.  ``RecordingError`` for a file that is no recording."""

    def __init__(self, recording: str | Path | Recording) -> None:
        self.recording = (
            recording if isinstance(recording, Recording) else read_recording(recording)
        )
        self.report = ReplayReport()

    def attach(self, vcpu: ObservedVcpu) -> _VcpuReplay:
        """Replay into ``vcpu`` (``Vm`` calls this before the run)."""
        target = recordable(vcpu)
        header = self.recording.header
        platform = "pc" if target.machine is not None else "minimal"
        if (header.get("platform"), header.get("memory_size")) != (platform, target.memory.size):
            raise RecordingError(
                f"the recording is of a {header.get('platform')} VM with "
                f"{header.get('memory_size')} bytes of RAM; this is a {platform} VM with "
                f"{target.memory.size}"
            )
        if header.get("start") != starting_state(target):
            raise RecordingError("the recording starts from another state (RAM, VMCS or "
                                 "registers): build the Vm as the recorded one was")  # fmt: skip
        handler = type(vcpu.handler)
        name = f"{handler.__module__}.{handler.__qualname__}"
        self.report = ReplayReport()
        if name != self.recording.handler:
            self.report.notes.append(f"recorded with {self.recording.handler}, replayed "
                                     f"into {name}")  # fmt: skip
        return _VcpuReplay(self, target)

    def finished(self) -> None:
        """The run ended (``Vm`` calls this)."""
