"""Replaying a recorded exit trace into a handler, with no CPU at all.

    result = replay("run.jsonl", MyChangedHandler)
    if result.divergence: print(result.divergence.describe())

Each vCPU of the trace gets an ``ExitHarness`` around a new handler.  At each exit the
harness is given what the recorded handler was given -- the VMCS fields that changed,
the registers, the guest memory it read, the CPU's answers -- the handler is dispatched,
and what it decides (where the guest resumes, the registers, the VMCS fields and guest
memory it writes, MSR writes, whether it halts) is compared with what the recorded one
decided.  The first difference ends the replay: after it, the replayed handler's state
is no longer the recorded run's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.cpu import CpuidRegisters, MsrFault, PhysicalCpu
from pyflank.intel_x64.vmcs import VmcsState
from pyflank.observe.format import FIELD_NAMES, REGISTERS
from pyflank.observe.recording import MemoryRecorder
from pyflank.observe.tracefile import Trace, TracedExit, TraceError, read_trace
from pyflank.testing import ExitHarness

HandlerFactory = Callable[[], ExitHandlerIntelX64]
_MIN_MEMORY = 4 << 20  # what the harness's own page tables and stack need
_registers = attrgetter(*REGISTERS)
_WRITES = ("wrmsr", "wbinvd")


@dataclass(frozen=True)
class Divergence:
    """Where the replayed handler first decided otherwise than the recorded one."""

    exit: TracedExit
    """The recorded exit."""
    what: str
    """What differs: "state", "rip", a register, "vmcs <field>", "memory", "cpu"."""
    recorded: str
    replayed: str

    def describe(self) -> str:
        """Where and what, in one line."""
        e = self.exit
        where = f"vCPU {e.vcpu}, exit {e.exit} ({e.name} at RIP {e.rip:#x}, trace line {e.line})"
        recorded, replayed = self.recorded, self.replayed
        return f"{where}: {self.what}: the recording has {recorded}, the replay {replayed}"


@dataclass(frozen=True)
class ReplayResult:
    """How a replay went."""

    exits: int
    """Exits replayed whose decisions matched the recording."""
    divergence: Divergence | None
    """The first exit decided otherwise, or None."""
    notes: list[str] = field(default_factory=list)
    """Questions the recording could not answer (answered by the harness's model CPU)."""

    @property
    def matched(self) -> bool:
        """Whether every decision matched the recording."""
        return self.divergence is None

    def describe(self) -> str:
        """The outcome in one line."""
        if self.divergence is None:
            return f"replayed {self.exits} exits: every decision matches the recording"
        return f"replayed {self.exits} exits, then diverged at {self.divergence.describe()}"


class ReplayCpu:
    """The CPU as the recording saw it: its answers at the current exit, else ``model``'s
    (noted); the writes the replayed handler makes, in ``writes``."""

    def __init__(self, model: PhysicalCpu, notes: list[str]) -> None:
        self.model = model
        self.notes = notes
        self.answers: dict[tuple[Any, ...], Any] = {}
        self.writes: list[tuple[Any, ...]] = []
        self.exit: TracedExit | None = None

    def start(self, exit_: TracedExit) -> None:
        self.exit = exit_
        self.writes = []
        self.answers = {}
        for call in exit_.cpu:
            if call[0] != "wbinvd":
                self.answers[call[:-1]] = call[-1]

    def _unrecorded(self, question: str) -> None:
        e = self.exit
        where = f"vCPU {e.vcpu}, exit {e.exit}" if e else "setup"
        self.notes.append(f"{where}: {question} is not in the recording (the model CPU answered)")

    def cpuid(self, leaf: int, subleaf: int) -> CpuidRegisters:
        answer = self.answers.get(("cpuid", leaf, subleaf))
        if answer is None:
            if self.exit is not None:
                self._unrecorded(f"CPUID {leaf:#x}/{subleaf:#x}")
            return self.model.cpuid(leaf, subleaf)
        eax, ebx, ecx, edx = answer
        return eax, ebx, ecx, edx

    def rdmsr(self, msr: int) -> int:
        key = ("rdmsr", msr)
        if key not in self.answers:
            self._unrecorded(f"RDMSR {msr:#x}")
            return self.model.rdmsr(msr)
        value = self.answers[key]
        if value is None:
            raise MsrFault(msr, write=False)
        return int(value)

    def wrmsr(self, msr: int, value: int) -> None:
        key = ("wrmsr", msr, value)
        faulted = self.answers.get(key)
        if faulted is None:
            self._unrecorded(f"WRMSR {value:#x} to {msr:#x}")
            try:
                self.model.wrmsr(msr, value)
            except MsrFault:
                self.writes.append((*key, True))
                raise
            self.writes.append((*key, False))
            return
        self.writes.append((*key, faulted))
        if faulted:
            raise MsrFault(msr, write=True)

    def wbinvd(self) -> None:
        self.writes.append(("wbinvd",))


class _VcpuReplay:
    """One vCPU's harness, its handler and what stands in for its memory and CPU."""

    def __init__(self, trace: Trace, vcpu: int, handler: HandlerFactory, notes: list[str]):
        self.harness = ExitHarness(handler, memory_size=max(trace.memory_size, _MIN_MEMORY))
        h = self.harness.handler
        traced = trace.vcpus.get(vcpu)
        if traced is not None:
            h.hypervisor_leaves = dict(traced.hypervisor_leaves)
        h.m_state_save.vcpuid = vcpu
        self.memory = MemoryRecorder(self.harness.memory)
        h.set_memory(self.memory)
        self.cpu = ReplayCpu(self.harness.cpu, notes)
        h.set_cpu(self.cpu)
        vmcs = self.harness.vmcs
        for encoding in FIELD_NAMES:  # the recording's first exit holds every non-zero field
            vmcs.processor_write(encoding, 0)

    def replay(self, e: TracedExit) -> Divergence | None:
        """Give the handler exit ``e``, dispatch, compare; the difference, if any."""
        if e.regs is None:
            raise TraceError(f"trace line {e.line}: not replayable (written with replayable=False)")
        harness = self.harness
        vmcs = harness.vmcs
        for encoding, value in e.vmcs.items():
            vmcs.processor_write(encoding, value)
        for gpa, data in reversed(e.memory):  # the first read of a byte saw it as it was
            harness.memory.write(gpa, data)
        self.cpu.start(e)
        before = vmcs.fields()
        vmcs.dirty.clear()
        self.memory.recording = True
        try:
            harness.exit(
                vmcs.read(f.VM_EXIT_REASON),
                length=vmcs.read(f.VM_EXIT_INSTRUCTION_LENGTH),
                qualification=vmcs.read(f.EXIT_QUALIFICATION),
                rip=e.rip,
                **e.regs,
            )
        finally:
            self.memory.recording = False
        _, writes = self.memory.take()
        after = vmcs.fields()
        written = {k: v for k, v in after.items() if before[k] != v}
        return _compare(e, harness, written, writes, self.cpu.writes)


def _compare(
    e: TracedExit,
    harness: ExitHarness,
    written: Mapping[int, int],
    writes: list[tuple[int, bytes]],
    cpu_writes: list[tuple[Any, ...]],
) -> Divergence | None:
    decided = e.decided
    state = harness.vmcs.state
    replayed_state = state.value if state is not VmcsState.LAUNCHED else VmcsState.LAUNCHED.value
    recorded_state = decided.state or VmcsState.LAUNCHED.value
    if replayed_state != recorded_state:
        return Divergence(e, "state", _verdict(recorded_state), _verdict(replayed_state))
    rip = harness.state.rip
    recorded_rip = e.rip if decided.rip is None else decided.rip
    if rip != recorded_rip:
        return Divergence(e, "rip", f"{recorded_rip:#x}", f"{rip:#x}")
    assert e.regs is not None
    recorded_regs = {**e.regs, **decided.regs}
    for name, value in zip(REGISTERS, _registers(harness.state), strict=True):
        if value != recorded_regs[name]:
            return Divergence(e, name, f"{recorded_regs[name]:#x}", f"{value:#x}")
    for encoding in sorted(set(written) | set(decided.vmcs), key=FIELD_NAMES.__getitem__):
        ours, theirs = written.get(encoding), decided.vmcs.get(encoding)
        if ours != theirs:
            return Divergence(e, f"vmcs {FIELD_NAMES[encoding]}", _written(theirs), _written(ours))
    difference = _memory_difference(decided.memory, writes)
    if difference is not None:
        gpa, theirs_byte, ours_byte = difference
        return Divergence(e, f"guest memory at {gpa:#x}", _written(theirs_byte),
                          _written(ours_byte))  # fmt: skip
    recorded_cpu = [c for c in e.cpu if c[0] in _WRITES]
    if recorded_cpu != cpu_writes:
        return Divergence(e, "cpu", _calls(recorded_cpu), _calls(cpu_writes))
    return None


def _verdict(state: str) -> str:
    return "the guest resumed" if state == VmcsState.LAUNCHED.value else f"the vCPU {state}"


def _written(value: int | None) -> str:
    return "no write" if value is None else f"{value:#x}"


def _calls(calls: list[tuple[Any, ...]]) -> str:
    if not calls:
        return "no MSR write or WBINVD"
    words = []
    for call in calls:
        if call[0] == "wrmsr":
            words.append(f"WRMSR {call[2]:#x} to {call[1]:#x}" + (" (#GP)" if call[3] else ""))
        else:
            words.append("WBINVD")
    return ", ".join(words)


def _memory_difference(
    recorded: tuple[tuple[int, bytes], ...], replayed: list[tuple[int, bytes]]
) -> tuple[int, int | None, int | None] | None:
    """The first guest-physical byte the two write lists leave differently."""
    theirs, ours = _bytes_written(recorded), _bytes_written(replayed)
    for gpa in sorted(set(theirs) | set(ours)):
        if theirs.get(gpa) != ours.get(gpa):
            return gpa, theirs.get(gpa), ours.get(gpa)
    return None


def _bytes_written(writes: Iterable[tuple[int, bytes]]) -> dict[int, int]:
    effect: dict[int, int] = {}
    for gpa, data in writes:
        for offset, byte in enumerate(data):
            effect[gpa + offset] = byte
    return effect


def replay(trace: Trace | str | Path, handler: HandlerFactory) -> ReplayResult:
    """Replay ``trace`` (a ``Trace`` or its file) into new ``handler``s, one per vCPU;
    where the first decision differs from the recording, if anywhere."""
    if not isinstance(trace, Trace):
        trace = read_trace(trace)
    notes: list[str] = []
    vcpus: dict[int, _VcpuReplay] = {}
    replayed = 0
    for e in trace.exits:
        vcpu = vcpus.get(e.vcpu)
        if vcpu is None:
            vcpu = vcpus[e.vcpu] = _VcpuReplay(trace, e.vcpu, handler, notes)
        divergence = vcpu.replay(e)
        if divergence is not None:
            return ReplayResult(replayed, divergence, notes)
        replayed += 1
    return ReplayResult(replayed, None, notes)
