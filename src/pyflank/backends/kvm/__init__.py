"""KVM backend: pyflank's exit handler driving a hardware-virtualized vCPU through /dev/kvm.

Layers, bottom up: ``structs``/``abi`` (the kernel ABI as ctypes), ``device``
(one method per ioctl), ``probe`` (what this KVM can do), ``machine``/``vcpu``
(the engine: KVM exits translated into exit records, entry plans loaded),
``policy`` (the controls it implements), ``platform`` (what ``Vm`` drives).

Gaps: what differs from the software CPU, and why, is data: ``policy.GAPS`` (tests
that skip on KVM name one, and ``Vm(...).capabilities`` reports what this host does).
KVM passes user space port I/O, HLT, MMIO, filtered MSR accesses, shutdowns and
emulation failures, nothing else.

KVM does not check guest state as VMX does; the VM-entry checks run in software
before changed guest state is loaded, as on the software CPU.
"""

from pyflank.backends.kvm.device import CpuidEntry, KvmError, KvmSystem, KvmVcpuFd, KvmVm
from pyflank.backends.kvm.machine import KvmConfig, KvmMachine
from pyflank.backends.kvm.platform import KvmBackend, measured_capabilities
from pyflank.backends.kvm.policy import GAPS
from pyflank.backends.kvm.ports import NoDevices
from pyflank.backends.kvm.probe import KvmCapabilities, probe_kvm
from pyflank.backends.kvm.vcpu import KvmVcpu
from pyflank.processor import StopReason

__all__ = [
    "GAPS",
    "CpuidEntry",
    "KvmBackend",
    "KvmCapabilities",
    "KvmConfig",
    "KvmError",
    "KvmMachine",
    "KvmSystem",
    "KvmVcpu",
    "KvmVcpuFd",
    "KvmVm",
    "NoDevices",
    "StopReason",
    "measured_capabilities",
    "probe_kvm",
]
