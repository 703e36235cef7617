"""Reading an exit trace back (``observe.format``): its header, its vCPUs, its exits, as
values; a line that is not what the format says is a ``TraceError`` naming the line."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from pyflank.observe.format import (
    FIELD_ENCODINGS,
    FORMAT,
    REGISTERS,
    VERSION,
    CpuCall,
    cpu_call,
    number,
)

Accesses = tuple[tuple[int, bytes], ...]


class TraceError(ValueError):
    """A trace file that cannot be read as one (the message names the line)."""


@dataclass(frozen=True)
class Decisions:
    """What the handler decided at one exit."""

    rip: int | None = None
    """Where the guest resumes, if the handler moved RIP."""
    regs: Mapping[str, int] = field(default_factory=dict)
    """Registers it changed (StateSave names) -> their new values."""
    vmcs: Mapping[int, int] = field(default_factory=dict)
    """VMCS fields whose value it changed (encoding -> value)."""
    memory: Accesses = ()
    """Its writes to guest memory: (guest-physical address, bytes)."""
    state: str | None = None
    """"halted" or "promoted" when it did not resume the guest."""


@dataclass(frozen=True)
class TracedExit:
    """One ``exit`` line."""

    line: int
    """Its line number in the file (1 is the header)."""
    vcpu: int
    exit: int
    """Its index among the vCPU's exits."""
    reason: int
    """The basic exit reason."""
    name: str
    qualification: int
    rip: int
    instructions: int | None
    """Guest instructions begun when it happened (None: the engine does not count)."""
    ns: int
    """Nanoseconds since the run began."""
    handler_ns: int
    decided: Decisions
    regs: Mapping[str, int] | None = None
    """What the handler was given: the registers (None in a trace that is not replayable)."""
    vmcs: Mapping[int, int] = field(default_factory=dict)
    """VMCS fields that changed since the vCPU's previous line (encoding -> value)."""
    memory: Accesses = ()
    """Guest memory the handler read: (guest-physical address, bytes), in order."""
    cpu: tuple[CpuCall, ...] = ()
    """What it asked the CPU (``observe.format``)."""


@dataclass(frozen=True)
class TracedVcpu:
    """One ``vcpu`` line, and the vCPU's ``stop`` line once read."""

    vcpu: int
    handler: str
    hypervisor_leaves: Mapping[int, tuple[int, int, int, int]]
    stop: str | None = None
    message: str = ""


@dataclass
class Trace:
    """A whole trace file."""

    header: dict[str, Any]
    vcpus: dict[int, TracedVcpu]
    exits: list[TracedExit]

    @property
    def backend(self) -> str:
        """The backend the run was on ("emu", "kvm", ...)."""
        return str(self.header.get("backend", ""))

    @property
    def memory_size(self) -> int:
        """Bytes of guest RAM the run had."""
        return int(self.header.get("memory_size", 0))

    @property
    def replayable(self) -> bool:
        """Whether every exit holds what its handler was given."""
        return all(e.regs is not None for e in self.exits)


def read_trace(source: str | Path | TextIO | Iterable[str]) -> Trace:
    """Read a trace from a path, an open text file, or its lines."""
    if isinstance(source, str | Path):
        with Path(source).open(encoding="utf-8") as file:
            return _read(file)
    return _read(source)


def _read(lines: Iterable[str]) -> Trace:
    header: dict[str, Any] | None = None
    vcpus: dict[int, TracedVcpu] = {}
    exits: list[TracedExit] = []
    for number_, text in enumerate(lines, 1):
        if not text.strip():
            continue
        try:
            line = json.loads(text)
            if not isinstance(line, dict):
                raise ValueError("not a JSON object")
            kind = line.get("type")
            if header is None:
                header = _header(line)
            elif kind == "vcpu":
                vcpus[int(line["vcpu"])] = _vcpu(line)
            elif kind == "exit":
                exits.append(_exit(number_, line))
            elif kind == "stop":
                vcpu = vcpus.get(int(line["vcpu"]))
                if vcpu is not None:
                    vcpus[vcpu.vcpu] = TracedVcpu(
                        vcpu.vcpu, vcpu.handler, vcpu.hypervisor_leaves,
                        str(line["reason"]), str(line.get("message", "")),
                    )  # fmt: skip
            else:
                raise ValueError(f"unknown line type {kind!r}")
        except (ValueError, KeyError, TypeError) as exc:
            why = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
            raise TraceError(f"trace line {number_}: {why}") from None
    if header is None:
        raise TraceError("empty trace: no header line")
    return Trace(header, vcpus, exits)


def _header(line: dict[str, Any]) -> dict[str, Any]:
    if line.get("type") != "header" or line.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} (the first line is no header of one)")
    if line.get("version") != VERSION:
        raise ValueError(f"trace format version {line.get('version')!r}; this reads {VERSION}")
    return line


def _vcpu(line: dict[str, Any]) -> TracedVcpu:
    leaves = {
        number(leaf, "hypervisor leaf"): tuple(number(r, "register") for r in regs)
        for leaf, regs in line.get("hypervisor_leaves", {}).items()
    }
    return TracedVcpu(int(line["vcpu"]), str(line.get("handler", "")), leaves)  # type: ignore[arg-type]


def _registers(values: dict[str, Any]) -> dict[str, int]:
    unknown = set(values) - set(REGISTERS)
    if unknown:
        raise ValueError(f"unknown registers {sorted(unknown)}")
    return {name: number(value, name) for name, value in values.items()}


def _fields(values: dict[str, Any]) -> dict[int, int]:
    fields = {}
    for name, value in values.items():
        encoding = FIELD_ENCODINGS.get(name)
        if encoding is None:
            raise ValueError(f"unknown VMCS field {name!r}")
        fields[encoding] = number(value, name)
    return fields


def _accesses(blocks: list[list[str]]) -> Accesses:
    return tuple((number(gpa, "address"), bytes.fromhex(data)) for gpa, data in blocks)


def _exit(line_number: int, line: dict[str, Any]) -> TracedExit:
    decided = line.get("handler", {})
    rip = decided.get("rip")
    decisions = Decisions(
        rip=None if rip is None else number(rip, "handler rip"),
        regs=_registers(decided.get("regs", {})),
        vmcs=_fields(decided.get("vmcs", {})),
        memory=_accesses(decided.get("memory", [])),
        state=decided.get("state"),
    )
    regs = line.get("regs")
    instructions = line.get("instructions")
    return TracedExit(
        line=line_number,
        vcpu=int(line["vcpu"]),
        exit=int(line["exit"]),
        reason=int(line["reason"]),
        name=str(line.get("name", "")),
        qualification=number(line.get("qualification", 0), "qualification"),
        rip=number(line["rip"], "rip"),
        instructions=None if instructions is None else int(instructions),
        ns=int(line.get("ns", 0)),
        handler_ns=int(line.get("handler_ns", 0)),
        decided=decisions,
        regs=None if regs is None else _registers(regs),
        vmcs=_fields(line.get("vmcs", {})),
        memory=_accesses(line.get("memory", [])),
        cpu=tuple(cpu_call(call) for call in line.get("cpu", [])),
    )
