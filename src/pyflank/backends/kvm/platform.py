"""The KVM backend as ``Vm`` drives it: one ``KvmMachine`` per VM, one ``KvmVcpu`` per vCPU.

The machine is made when the VM is (on the main thread, which installs the kick
signal's handler); the vCPUs when the VM runs, after the guest is loaded and the
handlers are set up, since each installs its handler's CPUID answers then.  A guest
reaches the VMM through the I/O-port doorbell (CPUID 0x40000001), as VMCALL may not
return from KVM_RUN.
"""

from __future__ import annotations

import functools

from pyflank.abi import HypervisorFeatures, hypervisor_leaves
from pyflank.backends.base import BackendUnavailable, PortIo
from pyflank.backends.kvm.machine import KvmConfig, KvmMachine
from pyflank.backends.kvm.policy import unsupported
from pyflank.backends.kvm.probe import KvmCapabilities, probe_kvm
from pyflank.backends.kvm.vcpu import KvmVcpu
from pyflank.intel_x64.cpu import CpuidRegisters
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.memory import GuestPhysicalMemory


@functools.cache
def measured_capabilities(device: str = "/dev/kvm") -> KvmCapabilities:
    """The full probe (tiny guests included, about 0.3 s), once per process and device."""
    return probe_kvm(device)


class KvmBackend:
    """The ``Backend`` protocol over one ``KvmMachine``."""

    name = "kvm"

    def __init__(
        self, memory: GuestPhysicalMemory, ports: PortIo, config: KvmConfig | None = None
    ) -> None:
        self.config = config or KvmConfig()
        found = probe_kvm(self.config.device, measure=False)
        if not found.usable:
            raise BackendUnavailable(f"the KVM backend cannot run here: {found.reason}")
        self.machine = KvmMachine(memory, self.config)
        self.ports = ports
        self.vcpus: list[KvmVcpu] = []
        self._closed = False

    @property
    def capabilities(self) -> KvmCapabilities:
        return measured_capabilities(self.config.device)

    def hypervisor_leaves(self) -> dict[int, CpuidRegisters]:
        port = self.config.doorbell_port
        if port is None:
            return hypervisor_leaves(HypervisorFeatures.VMCALL_INSTRUCTION)
        return hypervisor_leaves(HypervisorFeatures.IO_PORT_DOORBELL, port)

    def unsupported(self, vmcs: Vmcs) -> list[str]:
        return unsupported(vmcs)

    def create_vcpu(self, vcpuid: int) -> KvmVcpu:
        vcpu = KvmVcpu(self.machine, vcpuid, self.ports)
        self.vcpus.append(vcpu)
        return vcpu

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for vcpu in self.vcpus:
            vcpu.close()
        self.machine.close()
