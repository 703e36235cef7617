"""Recording a run on the software CPU, so that it can be replayed: ``observe.Recorder``.

    Vm.boot_linux(kernel, initrd=..., observers=[Recorder("boot.rec")]).run()
    again = Vm.boot_linux(kernel, initrd=..., observers=[replayer := Replayer("boot.rec")])
    again.run(); print(replayer.report.describe())

The software CPU is deterministic: the same VM runs the same way every time, guest time
included (``processor.time``).  So a recording holds only what came from outside the VM
-- the console input and where it reached the guest (``input_gate``), and the CPU's
answers to the handler (a host's CPUID and MSRs differ from machine to machine) -- and,
to find where a replay leaves it, each exit and what the handler decided at it
(``record_format``).  A recording starts from the VM's state at its first VM entry (its
digest is in the header) and holds one vCPU: several run in parallel, in an order no
recording keeps.
"""

from __future__ import annotations

from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyflank.abi.version import __version__
from pyflank.intel_x64 import exit_reasons
from pyflank.intel_x64.vmcs import VmcsState
from pyflank.observe.format import FIELD_NAMES, REGISTERS, cpu_call_line
from pyflank.observe.input_gate import RecordingGate
from pyflank.observe.record_format import (
    FORMAT,
    VERSION,
    RecordedInput,
    RecordingError,
    RecordingWriter,
    digest,
)
from pyflank.observe.recording import CpuRecorder

if TYPE_CHECKING:
    from pyflank.processor.observer import ObservedVcpu
    from pyflank.processor.records import ExitRecord, Stop

_registers = attrgetter(*REGISTERS)
_BASIC = exit_reasons.BASIC_EXIT_REASON_MASK
_LAUNCHED = VmcsState.LAUNCHED


def recordable(vcpu: ObservedVcpu) -> Any:
    """``vcpu`` if a run of it can be recorded and replayed (``RecordingError`` if not)."""
    if vcpu.backend != "emu":
        raise RecordingError(f"record and replay need the software CPU (emu), which is "
                             f"deterministic; not the {vcpu.backend} backend")  # fmt: skip
    if vcpu.vcpuid != 0:
        raise RecordingError("record and replay need a Vm of one vCPU: several run in "
                             "parallel, in an order no recording keeps")  # fmt: skip
    for needed in ("memory", "serial", "machine", "processor", "request_stop"):
        if not hasattr(vcpu, needed):
            raise RecordingError(f"record and replay need a pyflank.vmm.Vcpu (no {needed})")
    return vcpu


def starting_state(vcpu: Any) -> str:
    """Digest of what a run starts from: RAM, the VMCS and StateSave."""
    vmcs = repr(sorted(vcpu.vmcs.fields().items())).encode()
    state = repr(sorted(vcpu.state.as_dict().items())).encode()
    return digest(vcpu.memory.view, vmcs, state)


def progress_of(vcpu: Any) -> tuple[int, int]:
    """(guest code run, time idle) of ``vcpu`` now; (-1, 0) where it keeps no time."""
    clock = vcpu.processor.clock if vcpu.processor is not None else None
    return (clock.executed, clock.idle_ns) if clock is not None else (-1, 0)


class Decisions:
    """What the handler decides at each exit of one vCPU: ``before`` the dispatch,
    ``decided`` after it."""

    __slots__ = ("regs", "rip", "state", "vmcs")

    def __init__(self, vcpu: Any) -> None:
        self.state = vcpu.state
        self.vmcs = vcpu.vmcs
        self.regs: tuple[int, ...] = ()
        self.rip = 0

    def before(self) -> None:
        self.regs = _registers(self.state)
        self.rip = self.state.rip

    def decided(self) -> dict[str, Any]:
        state, vmcs = self.state, self.vmcs
        decided: dict[str, Any] = {}
        if state.rip != self.rip:
            decided["rip"] = state.rip
        after = _registers(state)
        if after != self.regs:
            decided["regs"] = {
                name: new
                for name, old, new in zip(REGISTERS, self.regs, after, strict=True)
                if old != new
            }
        if vmcs.dirty:
            decided["vmcs"] = {FIELD_NAMES[k]: vmcs.read(k) for k in sorted(vmcs.dirty)
                               if k in FIELD_NAMES}  # fmt: skip
        if vmcs.state is not _LAUNCHED:
            decided["state"] = vmcs.state.value
        return decided


class _VcpuRecorder:
    __slots__ = ("cpu", "decisions", "exits", "gate", "owner", "vcpu")

    def __init__(self, owner: Recorder, vcpu: Any) -> None:
        self.owner = owner
        self.vcpu = vcpu
        self.exits = 0
        self.decisions = Decisions(vcpu)
        self.cpu = CpuRecorder(vcpu.handler.m_cpu)
        vcpu.handler.set_cpu(self.cpu)
        self.gate = RecordingGate(vcpu.serial, lambda: progress_of(vcpu), owner.input)
        self.gate.install(vcpu.machine)

    def exiting(self, record: ExitRecord) -> Stop | None:
        if self.vcpu.machine is None:
            self.gate.at_exit(self.exits)
        self.decisions.before()
        self.cpu.recording = True
        return None

    def exited(self, record: ExitRecord, handler_ns: int) -> None:
        self.cpu.recording = False
        info = record.info
        self.owner.writer.write({
            "type": "exit", "n": self.exits, "reason": info.reason & _BASIC,
            "qualification": info.qualification, "rip": self.decisions.rip,
            "executed": record.executed,
            "cpu": [cpu_call_line(call) for call in self.cpu.take()],
            "decided": self.decisions.decided(),
        })  # fmt: skip
        self.exits += 1

    def stopped(self, stop: Stop) -> None:
        self.cpu.recording = False
        self.cpu.take()
        console = self.vcpu.serial.output
        self.owner.writer.write({
            "type": "stop", "reason": stop.reason.value, "message": stop.message,
            "exits": self.exits, "console": digest(console), "console_bytes": len(console),
        })  # fmt: skip
        self.owner.exits = self.exits


class Recorder:
    """Records a run into ``path`` (``record_format``); pass it to ``Vm(observers=...)``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.exits = 0
        """Exits recorded (once the run ended)."""
        self.inputs = 0
        """Host input recorded, in deliveries."""
        self.writer: RecordingWriter

    def attach(self, vcpu: ObservedVcpu) -> _VcpuRecorder:
        """Record ``vcpu`` (``Vm`` calls this before the run)."""
        from pyflank.backends.emu.snapshot import UNICORN_VERSION  # noqa: PLC0415 - emu's

        target = recordable(vcpu)
        self.writer = RecordingWriter(self.path)
        handler = type(vcpu.handler)
        self.writer.write({
            "type": "header", "format": FORMAT, "version": VERSION, "pyflank": __version__,
            "unicorn": UNICORN_VERSION, "platform": "pc" if target.machine else "minimal",
            "memory_size": target.memory.size, "start": starting_state(target),
        })  # fmt: skip
        self.writer.write({"type": "vcpu", "vcpu": vcpu.vcpuid,
                           "handler": f"{handler.__module__}.{handler.__qualname__}"})  # fmt: skip
        return _VcpuRecorder(self, target)

    def input(self, arrived: RecordedInput) -> None:
        """Host input reached the guest (the gate says where)."""
        point = arrived.point
        self.writer.write({
            "type": "input", "kind": point.kind, "at": point.at, "executed": point.executed,
            "idle_ns": point.idle_ns, "data": arrived.data.hex(),
        })  # fmt: skip
        self.inputs += 1

    def finished(self) -> None:
        """The run ended (``Vm`` calls this): the file is complete."""
        self.writer.close()
