"""The differential test of the native accelerator: a guest run with it and on the
pure-Python exit paths (the reference) must leave the same exits, registers and memory.

``same_run`` compares everything a run leaves that the exit path could change: each
vCPU's stop, exit count and reason trace, StateSave, every VMCS field and the entry count,
the debug ring, guest RAM and the serial output.  Runs stopped from outside (a timeout)
end at a moment of the host's choosing and are not compared.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyflank import native
from pyflank.backends.base import StopReason
from pyflank.vmm import VcpuResult, Vm

_UNREPEATABLE = {StopReason.TIMEOUT, StopReason.STOPPED}


def accelerated() -> bool:
    """Whether runs here use the native accelerator (else there is nothing to compare)."""
    return native.accelerator() is not None


pure_python = native.disabled  # engines made inside run the pure-Python exit paths


@dataclass
class RunImage:
    """What a finished run left, for comparison."""

    vcpus: list[dict[str, object]]
    memory: bytes
    serial: bytes

    @classmethod
    def of(cls, vm: Vm, results: list[VcpuResult]) -> RunImage:
        return cls([_vcpu(r) for r in results], vm.memory.read(0, vm.memory.size), vm.serial_output)

    @property
    def repeatable(self) -> bool:
        return not any(v["reason"] in _UNREPEATABLE for v in self.vcpus)


def _vcpu(result: VcpuResult) -> dict[str, object]:
    return {
        "reason": result.reason,
        "message": result.message,
        "exits": result.exits,
        "trace": result.trace,
        "state": result.state.as_dict(),
        "vmcs": result.vmcs.fields(),
        "entries": result.vmcs.entries,
        "vmcs_state": result.vmcs.state,
        "debug_ring": _without_tracebacks(result.debug_ring),
    }


def _without_tracebacks(text: str) -> str:
    """A debug ring without the frames of tracebacks (the exit paths' frames differ)."""
    return "\n".join(line for line in text.splitlines() if not line.startswith("  "))


def differences(reference: RunImage, accelerated: RunImage) -> list[str]:
    """What differs between two runs of one guest, one line each (empty: the same)."""
    found = []
    if len(reference.vcpus) != len(accelerated.vcpus):
        return [f"{len(reference.vcpus)} vCPUs against {len(accelerated.vcpus)}"]
    for vcpuid, (want, got) in enumerate(zip(reference.vcpus, accelerated.vcpus, strict=True)):
        for key, value in want.items():
            other = got[key]
            if key == "vmcs" and isinstance(value, dict) and isinstance(other, dict):
                fields = sorted(e for e in value if value[e] != other.get(e))
                found += [f"vCPU {vcpuid}: VMCS {e:#06x}: {value[e]:#x} against "
                          f"{other.get(e, 0):#x}" for e in fields]  # fmt: skip
            elif value != other:
                found.append(f"vCPU {vcpuid}: {key}: {value!r:.300} against {other!r:.300}")
    if reference.memory != accelerated.memory:
        pairs = enumerate(zip(reference.memory, accelerated.memory, strict=True))
        first = next(i for i, (a, b) in pairs if a != b)
        found.append(f"guest RAM differs first at {first:#x}")
    if reference.serial != accelerated.serial:
        found.append(f"serial: {reference.serial!r:.200} against {accelerated.serial!r:.200}")
    return found
