"""One vCPU in a snapshot: its VMCS and StateSave, its handler's log and state, its
processor's own state, its engine's hidden state -- taken where it is parked, put into a
vCPU of a new Vm, which then goes on from there instead of launching.

A vCPU parked in the engine (between two instructions) goes on with an entry that loads
what the restored engine holds; one parked halted goes on waiting for its interrupt, as
the processor was (``VmxProcessor.pause`` with the halted state again).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from pyflank.backends.emu.snapshot import EngineState, restore_engine, resume_plan, save_engine
from pyflank.backends.emu.vcpu import EmuVcpu
from pyflank.debug.parking import StopPoint
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.vmcs import VmcsState
from pyflank.processor import ExitInformation, ExitRecord, Pause
from pyflank.processor.vmx import ProcessorState
from pyflank.snapshot import state as plain
from pyflank.snapshot.format import SnapshotError

if TYPE_CHECKING:
    from pyflank.processor import EntryPlan, Stop
    from pyflank.vmm import Vcpu

# The handler's own members that the snapshot holds elsewhere (or that the VMM wires).
FRAMEWORK = frozenset({"m_vmcs", "m_state_save", "m_cpu", "m_memory", "m_debug_ring"})
_NO_EXIT = ExitInformation(-1)
_SDM_ORDER = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r08", "r09", "r10", "r11",
              "r12", "r13", "r14", "r15")  # fmt: skip


@dataclass
class SavedVcpu:
    document: dict[str, Any]
    """The VCPU section (``format``)."""
    engine: EngineState


def _engine_of(vcpu: Vcpu) -> EmuVcpu:
    engine = vcpu.engine
    if not isinstance(engine, EmuVcpu):
        raise SnapshotError(f"vCPU {vcpu.vcpuid}: snapshots need the software CPU (emu)")
    return engine


def _handler_class(vcpu: Vcpu) -> str:
    cls = type(vcpu.handler)
    return f"{cls.__module__}.{cls.__qualname__}"


def capture_vcpu(vcpu: Vcpu, point: StopPoint) -> tuple[SavedVcpu, list[str]]:
    """``vcpu`` as it is parked at ``point`` (on its own thread); notes on what is left out."""
    if point is StopPoint.EXIT:
        raise SnapshotError(f"vCPU {vcpu.vcpuid} is stopped at a VM exit in the debugger: "
                            "step or continue it off the exit first")  # fmt: skip
    if vcpu.handler.m_host_memory is not None:
        raise SnapshotError(f"vCPU {vcpu.vcpuid}: its handler keeps VMM memory (EPT tables, "
                            "self.ept), which snapshots do not hold yet")  # fmt: skip
    engine = _engine_of(vcpu)
    processor = vcpu.processor
    assert processor is not None
    vmcs = vcpu.vmcs
    handler_state, notes = plain.capture(
        [vcpu.handler], modules=[type(vcpu.handler).__module__], skip=FRAMEWORK
    )
    cpu_state, cpu_notes = plain.capture([engine.cpu], skip=frozenset({"engine"}))
    saved = save_engine(engine)
    document = {
        "vcpuid": vcpu.vcpuid,
        "point": point.value,
        "vmcs": {
            "state": vmcs.state.value,
            "current": vmcs.current,
            "entries": vmcs.entries,
            "fields": {str(k): v for k, v in vmcs.fields().items() if v},
        },
        "state_save": vcpu.state.as_dict(),
        "debug_ring": vcpu.debug_ring.read(),
        "processor": asdict(processor.continuity()),
        "engine": {k: v for k, v in asdict(saved).items() if k not in ("context", "host_region")}
        | {"noted": [[k, v] for k, v in saved.noted.items()]},
        "cpu": cpu_state,
        "handler": {"class": _handler_class(vcpu), "state": handler_state},
    }
    return SavedVcpu(document, saved), [f"vCPU {vcpu.vcpuid}: {n}" for n in notes + cpu_notes]


def engine_state(document: dict[str, Any], context: bytes, host_region: bytes) -> EngineState:
    """The engine part of a VCPU section, with its binary sections."""
    fields = dict(document["engine"])
    fields["noted"] = {int(k): int(v) for k, v in fields["noted"]}
    return EngineState(context=context, host_region=host_region, **fields)


def apply_vcpu(vcpu: Vcpu, saved: SavedVcpu) -> list[str]:
    """Load ``saved`` into ``vcpu`` of a new Vm before its run (VMCS, StateSave, log,
    handler state); notes on what was not loaded."""
    document = saved.document
    vmcs = vcpu.vmcs
    saved_vmcs = document["vmcs"]
    for encoding in vmcs.fields():
        vmcs.processor_write(encoding, 0)
    for encoding, value in saved_vmcs["fields"].items():
        vmcs.processor_write(int(encoding), int(value))
    vmcs.state = VmcsState(saved_vmcs["state"])
    vmcs.current = bool(saved_vmcs["current"])
    vmcs.entries = int(saved_vmcs["entries"])
    vmcs.dirty.clear()
    vcpu.state.update({k: v for k, v in document["state_save"].items() if k != "vcpuid"})
    ring = vcpu.debug_ring
    ring.clear()
    if document["debug_ring"]:
        ring.write(document["debug_ring"].removesuffix("\n"))
    handler = document["handler"]
    if handler["class"] != _handler_class(vcpu):
        return [f"vCPU {vcpu.vcpuid}: the snapshot's handler was {handler['class']}; "
                f"{_handler_class(vcpu)} starts from its own state"]  # fmt: skip
    plain.load(
        [vcpu.handler], handler["state"], modules=[type(vcpu.handler).__module__], skip=FRAMEWORK
    )
    return []


def start_of(vcpu: Vcpu, saved: SavedVcpu) -> Callable[[], EntryPlan | Stop]:
    """After the vCPU's engine and processor exist: load theirs, and the first step."""
    engine = _engine_of(vcpu)
    processor = vcpu.processor
    assert processor is not None
    document = saved.document
    restore_engine(engine, saved.engine, vcpu.vmcs)
    plain.load([engine.cpu], document["cpu"], skip=frozenset({"engine"}))
    continuity = ProcessorState(**document["processor"])
    processor.continue_from(continuity)
    if document["point"] == StopPoint.ENGINE.value:
        plan = resume_plan(engine, saved.engine, vcpu.vmcs)
        return lambda: plan
    s = vcpu.state
    regs = (*(getattr(s, name) for name in _SDM_ORDER), s.rip, 0)
    rflags = vcpu.vmcs.read(f.GUEST_RFLAGS)
    record = ExitRecord(_NO_EXIT, regs, s.rip, rflags, None, "", continuity.executed)
    return lambda: processor.pause(Pause(record, halted=True))
