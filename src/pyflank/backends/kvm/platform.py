"""The KVM backend as ``Vm`` drives it: one ``KvmMachine`` per VM, one ``KvmVcpu`` per vCPU.

The machine is made when the VM is (on the main thread, which installs the kick
signal's handler); the vCPUs when the VM runs, after the guest is loaded and the
handlers are set up, since each samples its handler's CPUID answers then.  A guest
reaches the VMM through the I/O-port doorbell (CPUID 0x40000001), as VMCALL may not
return from KVM_RUN.
"""

from __future__ import annotations

import functools
import logging
import threading

from pyflank.backends.base import BackendUnavailable, PortIo, StopReason
from pyflank.backends.kvm.machine import KvmConfig, KvmMachine
from pyflank.backends.kvm.policy import unsupported
from pyflank.backends.kvm.probe import KvmCapabilities, probe_kvm
from pyflank.backends.kvm.vcpu import KvmVcpu
from pyflank.backends.launch import refused_launch
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64.cpu import CpuidRegisters
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.memory import GuestPhysicalMemory
from pyflank.platform.hypervisor_cpuid import HypervisorFeatures, hypervisor_leaves

log = logging.getLogger("pyflank.backends.kvm")

# Stops the handler chose: the StateSave already holds the state of that exit.
_AT_AN_EXIT = frozenset({StopReason.HALTED, StopReason.PROMOTED, StopReason.SHUTDOWN})


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
        self.vcpus: list[KvmVcpuRunner] = []
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

    def create_vcpu(
        self, vcpuid: int, handler: ExitHandlerIntelX64, *, trace: bool
    ) -> KvmVcpuRunner:
        runner = KvmVcpuRunner(KvmVcpu(self.machine, vcpuid, handler, self.ports, trace=trace))
        self.vcpus.append(runner)
        return runner

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for runner in self.vcpus:
            runner.vcpu.close()
        self.machine.close()


class KvmVcpuRunner:
    """A ``KvmVcpu`` as the ``VcpuBackend`` protocol: its stop reason, its final state."""

    def __init__(self, vcpu: KvmVcpu) -> None:
        self.vcpu = vcpu
        self.stop_reason: StopReason | None = None
        self.message = ""
        self._requested: StopReason | None = None
        self._lock = threading.Lock()
        vcpu.load()

    @property
    def exits(self) -> int:
        return self.vcpu.dispatched

    @property
    def trace(self) -> list[tuple[int, int]] | None:
        return self.vcpu.trace

    def run(self) -> StopReason:
        refused = refused_launch(self.vcpu.handler)
        if refused is not None:  # VMLAUNCH itself failed: the guest never runs
            self.stop_reason, self.message = StopReason.ERROR, refused
            return StopReason.ERROR
        try:
            result = self.vcpu.run()
            reason, message = result.reason, result.message
            if self._requested is not None and reason in (StopReason.STOPPED, StopReason.TIMEOUT):
                reason = self._requested
            if reason not in _AT_AN_EXIT and reason is not StopReason.ERROR:
                self.vcpu.snapshot()  # stopped between exits: save the guest's state now
        except Exception as exc:  # a KVM failure stops this vCPU, not the VMM
            log.exception("KVM vCPU failed")
            reason, message = StopReason.ERROR, f"{type(exc).__name__}: {exc}"
        self.stop_reason, self.message = reason, message
        return reason

    def request_stop(self, reason: StopReason = StopReason.STOPPED) -> None:
        """Ask the vCPU to stop (any thread); repeat it if the vCPU may not have started."""
        with self._lock:
            if self._requested is None:
                self._requested = reason
        self.vcpu.stop(timed_out=reason is StopReason.TIMEOUT)
