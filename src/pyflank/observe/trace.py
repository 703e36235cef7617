"""An exit trace: one JSON line per exit to a file (``observe.format`` says what a line
holds), written while the guest runs, replayable offline (``observe.replay``).

    Vm(MyHandler, observers=[ExitTrace("run.jsonl")]).run()

A replayable trace (the default) holds what the handler was given at each exit -- the
registers, the VMCS fields that changed, the guest memory it read, the answers of the
CPU -- and always what it decided.  To see those reads the trace stands in for the
handler's memory and CPU (``observe.recording``); a handler that keeps its own reference
to guest RAM reads it unseen.  ``instructions`` asks the engine to count guest
instructions (the software CPU does, at some cost; KVM cannot: null).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from pyflank.abi.version import __version__
from pyflank.intel_x64 import exit_reasons
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.vmcs import VmcsState
from pyflank.observe.format import (
    FIELD_NAMES,
    FORMAT,
    REGISTERS,
    VERSION,
    CpuCall,
    cpu_call_line,
    hexed,
)
from pyflank.observe.recording import CpuRecorder, MemoryRecorder
from pyflank.processor.records import EXIT_INFORMATION_FIELDS

if TYPE_CHECKING:
    from pyflank.processor.observer import ObservedVcpu
    from pyflank.processor.records import ExitRecord, Stop

_registers = attrgetter(*REGISTERS)
_encode = json.JSONEncoder(separators=(",", ":"), check_circular=False).encode
_LAUNCHED = VmcsState.LAUNCHED
_STORED = (*EXIT_INFORMATION_FIELDS, f.GUEST_RIP, f.GUEST_RSP, f.GUEST_RFLAGS)
_BASIC = exit_reasons.BASIC_EXIT_REASON_MASK


def _fields(values: dict[int, int]) -> dict[str, str]:
    return {FIELD_NAMES[encoding]: hexed(value) for encoding, value in values.items()}


def _blocks(accesses: list[tuple[int, bytes]]) -> list[list[str]]:
    return [[hexed(gpa), data.hex()] for gpa, data in accesses]


class _VcpuTrace:
    """The lines of one vCPU (the processor's observer of it)."""

    __slots__ = (
        "before", "count", "cpu", "delta", "exits", "instructions", "last", "memory", "owner",
        "replayable", "rip", "state", "values", "vcpuid", "vmcs",
    )  # fmt: skip

    def __init__(self, owner: ExitTrace, vcpu: ObservedVcpu) -> None:
        self.owner = owner
        self.vcpuid = vcpu.vcpuid
        self.vmcs = vcpu.vmcs
        self.state = vcpu.state
        self.values = vcpu.vmcs.view()
        self.last = dict.fromkeys(self.values, 0)  # the VMCS as this vCPU's lines left it
        self.replayable = owner.replayable
        self.count: Callable[[], int] | None = (
            vcpu.count_instructions() if owner.instructions else None
        )
        handler = vcpu.handler
        self.memory: MemoryRecorder | None = None
        self.cpu: CpuRecorder | None = None
        if self.replayable:
            if handler.m_memory is not None:
                self.memory = MemoryRecorder(handler.m_memory)
                handler.set_memory(self.memory)
            self.cpu = CpuRecorder(handler.m_cpu)
            handler.set_cpu(self.cpu)
        self.exits = 0
        self.before: tuple[int, ...] = ()
        self.rip = 0
        self.instructions: int | None = None
        self.delta: dict[int, int] = {}

    def _changed(self, candidates: Iterable[int]) -> dict[int, int]:
        """The VMCS fields whose values differ from ``last``, now ``last`` too.

        Only ``candidates`` are compared one by one; if the VMCS still differs from
        ``last`` (one C-level comparison), something else moved too and all are.
        """
        values, last = self.values, self.last
        changed = {k: values[k] for k in candidates if last[k] != values[k]}
        last.update(changed)
        if values != last:
            more = {k: v for k, v in values.items() if last[k] != v}
            last.update(more)
            changed.update(more)
        return changed

    def exiting(self, record: ExitRecord) -> Stop | None:
        # What the processor stored for this exit: its information, RIP/RSP/RFLAGS, the
        # guest state that moved (anything else is found by ``_changed``).
        self.delta = self._changed(_STORED)
        if record.guest:
            self.delta.update(self._changed(record.guest))
        self.before = _registers(self.state)
        self.rip = self.state.rip
        self.instructions = self.count() if self.count is not None else None
        if self.memory is not None:
            self.memory.recording = True
        if self.cpu is not None:
            self.cpu.recording = True
        return None

    def exited(self, record: ExitRecord, handler_ns: int) -> None:
        reads: list[tuple[int, bytes]] = []
        writes: list[tuple[int, bytes]] = []
        calls: list[CpuCall] = []
        if self.memory is not None:
            self.memory.recording = False
            reads, writes = self.memory.take()
        if self.cpu is not None:
            self.cpu.recording = False
            calls = self.cpu.take()
        state = self.state
        info = record.info
        line: dict[str, Any] = {
            "type": "exit",
            "vcpu": self.vcpuid,
            "exit": self.exits,
            "reason": info.reason & _BASIC,
            "name": exit_reasons.description(info.reason),
            "qualification": hexed(info.qualification),
            "rip": hexed(self.rip),
            "instructions": self.instructions,
            "ns": time.perf_counter_ns() - self.owner.started_ns,
            "handler_ns": handler_ns,
        }
        if self.replayable:
            line["regs"] = dict(zip(REGISTERS, map(hexed, self.before), strict=True))
            line["vmcs"] = _fields(self.delta)
            if reads:
                line["memory"] = _blocks(reads)
            if calls:
                line["cpu"] = [cpu_call_line(call) for call in calls]
        decided: dict[str, Any] = {}
        if state.rip != self.rip:
            decided["rip"] = hexed(state.rip)
        after = _registers(state)
        if after != self.before:
            decided["regs"] = {
                name: hexed(new)
                for name, old, new in zip(REGISTERS, self.before, after, strict=True)
                if old != new
            }
        written = self._changed(self.vmcs.dirty)  # what it VMWRITE'd, if its value changed
        if written:
            decided["vmcs"] = _fields(written)
        if writes:
            decided["memory"] = _blocks(writes)
        if self.vmcs.state is not _LAUNCHED:
            decided["state"] = self.vmcs.state.value
        line["handler"] = decided
        self.exits += 1
        self.owner.write(line)

    def stopped(self, stop: Stop) -> None:
        if self.memory is not None:  # a break leaves an exit the handler never saw
            self.memory.recording = False
            self.memory.take()
        if self.cpu is not None:
            self.cpu.recording = False
            self.cpu.take()
        self.owner.write(
            {
                "type": "stop",
                "vcpu": self.vcpuid,
                "reason": stop.reason.value,
                "message": stop.message,
                "exits": self.exits,
            }
        )


class ExitTrace:
    """Writes every exit of a run to ``target`` (a path, rewritten by each run; or an open
    text file, flushed but left open), one JSON line each.

    ``replayable``: also what the handler was given (``observe.replay`` needs it).
    ``instructions``: ask the engine for the guest's instruction count at each exit.
    """

    def __init__(
        self,
        target: str | Path | TextIO,
        *,
        replayable: bool = True,
        instructions: bool = True,
    ) -> None:
        self.target = target
        self.replayable = replayable
        self.instructions = instructions
        self.lines = 0
        """Lines written in the current (or last) run."""
        self.started_ns = time.perf_counter_ns()
        self._file: TextIO | None = None
        self._lock = threading.Lock()

    def attach(self, vcpu: ObservedVcpu) -> _VcpuTrace:
        """Watch ``vcpu`` (``Vm`` calls this before the run); the first opens the file."""
        if self._file is None:
            self._open(vcpu)
        handler = type(vcpu.handler)
        leaves = vcpu.handler.hypervisor_leaves
        self.write(
            {
                "type": "vcpu",
                "vcpu": vcpu.vcpuid,
                "handler": f"{handler.__module__}.{handler.__qualname__}",
                "hypervisor_leaves": {
                    hexed(leaf): [hexed(r) for r in regs] for leaf, regs in leaves.items()
                },
            }
        )
        return _VcpuTrace(self, vcpu)

    def _open(self, vcpu: ObservedVcpu) -> None:
        if isinstance(self.target, str | Path):
            self._file = Path(self.target).open("w", encoding="utf-8")  # noqa: SIM115
        else:
            self._file = self.target
        self.lines = 0
        self.started_ns = time.perf_counter_ns()
        memory = vcpu.handler.m_memory
        self.write(
            {
                "type": "header",
                "format": FORMAT,
                "version": VERSION,
                "pyflank": __version__,
                "backend": vcpu.backend,
                "memory_size": memory.size if memory is not None else 0,
            }
        )

    def write(self, line: dict[str, Any]) -> None:
        """Write one line (any vCPU's thread)."""
        text = _encode(line) + "\n"
        with self._lock:
            if self._file is None:
                raise RuntimeError("the exit trace is not attached to a run")
            self._file.write(text)
            self.lines += 1

    def finished(self) -> None:
        """The run ended (``Vm`` calls this): the file is complete."""
        with self._lock:
            file, self._file = self._file, None
        if file is None:
            return
        if file is self.target:
            file.flush()
        else:
            file.close()
