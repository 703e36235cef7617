"""Backends by name: each factory builds one VM's processor over its RAM and port bus.

``Vm(backend=...)`` takes one of ``NAMES``; "auto" is the software CPU, which needs
nothing from the host (KVM is asked for by name, and says why when it cannot run).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from pyflank.abi import HypervisorFeatures, hypervisor_leaves
from pyflank.backends.base import Backend, PortIo
from pyflank.backends.emu import EmuVcpu, unsupported
from pyflank.backends.kvm.platform import KvmBackend
from pyflank.backends.names import AUTO, NAMES
from pyflank.intel_x64.cpu import CpuidRegisters
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.memory import GuestPhysicalMemory

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
        return unsupported(vmcs)

    def create_vcpu(self, vcpuid: int) -> EmuVcpu:
        return EmuVcpu(self.memory, self.ports)

    def close(self) -> None:
        pass  # unicorn engines are freed with their vCPUs


BACKENDS: Final[dict[str, Callable[[GuestPhysicalMemory, PortIo], Backend]]] = {
    "emu": EmuBackend,
    "kvm": KvmBackend,
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
