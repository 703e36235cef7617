"""Snapshots: a whole VM saved to a file, restored into a new ``Vm`` that goes on exactly as
the original would have from there.

    vm.pause()                       # every vCPU parked where its state is whole
    info = vm.snapshot("boot.pfs")   # (a running Vm pauses and resumes around it itself)
    vm.resume()
    again = Vm.restore("boot.pfs", handler=MyHandler)
    again.run()

A snapshot holds guest RAM, every vCPU's VMCS and StateSave, its processor's and engine's
hidden state (``backends.emu.snapshot``), the handler's own state and log, and the
platform's devices with guest time (``state``); ``format`` spells the file.  A vCPU is
saved where it is parked (``debug.parking``): between two instructions in the engine, or
halted waiting for an interrupt; not at a VM exit in a debugger.  Because guest time is
the guest's own (``processor.time``), a restored run's exits, console and results are the
original's, given the same input from outside.  The software CPU only.
"""

from __future__ import annotations

import datetime
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from pyflank.abi.version import __version__
from pyflank.backends.emu.snapshot import UNICORN_VERSION
from pyflank.snapshot import state as plain
from pyflank.snapshot.format import (
    END,
    FORMAT,
    FORMAT_VERSION,
    Reader,
    SnapshotError,
    Writer,
    nonzero_extents,
    vcpu_payload,
)
from pyflank.snapshot.vcpu import SavedVcpu, apply_vcpu, capture_vcpu, engine_state, start_of

if TYPE_CHECKING:
    from pyflank.vmm import Vm

__all__ = ["SnapshotError", "SnapshotFile", "SnapshotInfo", "save"]
_CALL_TIMEOUT = 60.0


@dataclass(frozen=True)
class SnapshotInfo:
    """What ``save`` wrote (or ``Vm.restore`` read)."""

    path: Path
    size: int
    """Bytes in the file."""
    ram: int
    """Bytes of guest RAM it holds (the pages that are not all zero)."""
    seconds: float
    notes: list[str] = field(default_factory=list)
    """What it does not hold (a handler attribute that is not plain data, ...)."""


def device_roots(vm: Vm) -> list[object]:
    """The objects whose state is the platform's: its devices and the port bus."""
    return [vm.platform, vm.bus, vm.serial]


def save(vm: Vm, path: str | Path) -> SnapshotInfo:
    """Write ``vm`` -- paused: every vCPU parked -- to ``path``."""
    start = time.perf_counter()
    target = Path(path)
    saved: list[SavedVcpu] = []
    notes: list[str] = []
    for vcpu in vm.vcpus:
        parking = vcpu.parking()
        stopped = parking.stopped
        if stopped is None:
            raise SnapshotError(f"vCPU {vcpu.vcpuid} is not paused (Vm.pause first)")
        one, more = parking.call(lambda _, v=vcpu, p=stopped.point: capture_vcpu(v, p),  # type: ignore[misc]
                                 _CALL_TIMEOUT)  # fmt: skip
        saved.append(one)
        notes += more
    devices, device_notes = plain.capture(device_roots(vm))
    notes += device_notes
    extents = nonzero_extents(vm.memory.view)
    partial = target.with_name(target.name + ".partial")
    with partial.open("wb") as file:
        writer = Writer(file)
        writer.json(b"META", _meta(vm))
        writer.json(b"DEVS", devices)
        for one in saved:
            vcpuid = one.document["vcpuid"]
            writer.json(b"VCPU", one.document)
            writer.for_vcpu(b"UCTX", vcpuid, one.engine.context)
            writer.for_vcpu(b"HOST", vcpuid, one.engine.host_region)
        writer.ram(vm.memory.view, extents)
        writer.end()
    partial.replace(target)
    ram = sum(n for _, n in extents)
    return SnapshotInfo(target, target.stat().st_size, ram, time.perf_counter() - start, notes)


def _meta(vm: Vm) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "pyflank": __version__,
        "unicorn": UNICORN_VERSION,
        "memory_size": vm.memory.size,
        "vcpus": len(vm.vcpus),
        "platform": "pc" if vm.platform is not None else "minimal",
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


class SnapshotFile:
    """A snapshot being read: ``meta`` first (what Vm to make), then ``load_into`` it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.start = time.perf_counter()
        try:
            self._file: IO[bytes] = self.path.open("rb")
        except OSError as exc:
            raise SnapshotError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            self._reader = Reader(self._file, str(self.path))
            tag, length = self._reader.next()
            if tag != b"META":
                raise SnapshotError(f"{self.path} does not begin with its META section")
            self.meta: dict[str, Any] = self._reader.json(tag, length)
            if self.meta.get("format") != FORMAT:
                raise SnapshotError(f"{self.path} is not a {FORMAT} file")
            for key in ("memory_size", "vcpus", "platform"):
                if key not in self.meta:
                    raise SnapshotError(f"{self.path}: its META section has no {key}")
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> SnapshotFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()

    def load_into(self, vm: Vm) -> Restoring:
        """Read the rest into ``vm`` (new, made as ``meta`` says); what its run needs."""
        reader = self._reader
        documents: dict[int, dict[str, Any]] = {}
        blobs: dict[tuple[bytes, int], bytes] = {}
        devices: dict[str, Any] | None = None
        ram = 0
        while True:
            tag, length = reader.next()
            if tag == END:
                reader.payload(tag, length)
                break
            if tag == b"DEVS":
                devices = reader.json(tag, length)
            elif tag == b"VCPU":
                document = reader.json(tag, length)
                documents[int(document["vcpuid"])] = document
            elif tag in (b"UCTX", b"HOST"):
                vcpuid, data = vcpu_payload(reader.payload(tag, length))
                blobs[(tag, vcpuid)] = data
            elif tag == b"RAM ":
                memory = vm.memory
                for gpa, n in nonzero_extents(memory.view):
                    memory.fill(gpa, n, 0)
                ram = sum(n for _, n in reader.ram(length, memory.view))
            else:
                raise SnapshotError(f"{self.path} has a section {tag!r} this pyflank does not know")
        if devices is None or sorted(documents) != [v.vcpuid for v in vm.vcpus]:
            raise SnapshotError(f"{self.path} lacks the devices or a vCPU")
        try:
            plain.load(device_roots(vm), devices)
        except plain.StateError as exc:
            raise SnapshotError(f"{self.path}: its devices do not fit here: {exc}") from None
        saved: dict[int, SavedVcpu] = {}
        notes: list[str] = []
        for vcpu in vm.vcpus:
            document = documents[vcpu.vcpuid]
            context, host = blobs.get((b"UCTX", vcpu.vcpuid)), blobs.get((b"HOST", vcpu.vcpuid))
            if context is None or host is None:
                raise SnapshotError(f"{self.path} lacks vCPU {vcpu.vcpuid}'s engine state")
            one = SavedVcpu(document, engine_state(document, context, host))
            notes += apply_vcpu(vcpu, one)
            saved[vcpu.vcpuid] = one
        size = self.path.stat().st_size
        info = SnapshotInfo(self.path, size, ram, time.perf_counter() - self.start, notes)
        return Restoring(saved, info)


@dataclass
class Restoring:
    """A restored Vm's vCPUs, until its run gives them engines: then each goes on."""

    vcpus: dict[int, SavedVcpu]
    info: SnapshotInfo

    def start(self, vm: Vm) -> None:
        for vcpu in vm.vcpus:
            vcpu.first_step = start_of(vcpu, self.vcpus[vcpu.vcpuid])
