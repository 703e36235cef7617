"""Backends by name: each factory builds one VM's processor over its RAM and port bus.

``Vm(backend=...)`` takes one of ``NAMES``; "auto" is the software CPU, which needs
nothing from the host (KVM is asked for by name, and says why when it cannot run).
Each backend's modules are imported when a VM first asks for it, not before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from pyflank.abi import HypervisorFeatures, hypervisor_leaves
from pyflank.backends.base import Backend, PortIo
from pyflank.backends.names import AUTO, NAMES
from pyflank.intel_x64.cpu import CpuidRegisters
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.memory import GuestPhysicalMemory

if TYPE_CHECKING:
    from pyflank.backends.emu import EmuVcpu

__all__ = ["AUTO", "BACKENDS", "NAMES", "EmuBackend", "open_backend", "resolve"]


class EmuBackend:
    """The software CPU: one unicorn engine per vCPU over the shared RAM."""

    name = "emu"
    capabilities = None  # nothing to probe: it runs wherever unicorn does

    def __init__(self, memory: GuestPhysicalMemory, ports: PortIo) -> None:
        self.memory = memory
        self.ports = ports

    def hypervisor_leaves(self) -> dict[int, CpuidRegisters]:
        # The software CPU executes VMCALL, so guests should use it.
        return hypervisor_leaves(HypervisorFeatures.VMCALL_INSTRUCTION)

    def unsupported(self, vmcs: Vmcs) -> list[str]:
        from pyflank.backends.emu import unsupported  # noqa: PLC0415 - only once chosen

        return unsupported(vmcs)

    def create_vcpu(self, vcpuid: int) -> EmuVcpu:
        from pyflank.backends.emu import EmuVcpu  # noqa: PLC0415 - only once chosen

        return EmuVcpu(self.memory, self.ports)

    def close(self) -> None:
        pass  # unicorn engines are freed with their vCPUs


def _kvm_backend(memory: GuestPhysicalMemory, ports: PortIo) -> Backend:
    from pyflank.backends.kvm.platform import KvmBackend  # noqa: PLC0415 - only once chosen

    return KvmBackend(memory, ports)


BACKENDS: Final[dict[str, Callable[[GuestPhysicalMemory, PortIo], Backend]]] = {
    "emu": EmuBackend,
    "kvm": _kvm_backend,
}


def resolve(name: str) -> str:
    """The backend a name stands for ("auto" is the software CPU)."""
    if name == "auto":
        return AUTO
    if name not in BACKENDS:
        raise ValueError(f"backend {name!r}: choose one of {', '.join(NAMES)}")
    return name


def open_backend(name: str, memory: GuestPhysicalMemory, ports: PortIo) -> Backend:
    """The named backend for one VM; ``BackendUnavailable`` if this host cannot run it."""
    return BACKENDS[resolve(name)](memory, ports)
