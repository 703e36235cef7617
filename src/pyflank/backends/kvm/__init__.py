"""KVM backend: pyflank's exit handler driving a hardware-virtualized vCPU through /dev/kvm.

Layers, bottom up: ``structs``/``abi`` (the kernel ABI as ctypes), ``device``
(one method per ioctl), ``probe`` (what this KVM can do), ``machine``/``vcpu``
(the VMX model on top: exits translated and dispatched to the handler).
"""

from pyflank.backends.kvm.device import CpuidEntry, KvmError, KvmSystem, KvmVcpuFd, KvmVm
from pyflank.backends.kvm.machine import KvmConfig, KvmMachine
from pyflank.backends.kvm.ports import NoDevices, PortIo
from pyflank.backends.kvm.probe import KvmCapabilities, probe_kvm
from pyflank.backends.kvm.result import KvmRunResult, StopReason
from pyflank.backends.kvm.vcpu import KvmVcpu

__all__ = [
    "CpuidEntry",
    "KvmCapabilities",
    "KvmConfig",
    "KvmError",
    "KvmMachine",
    "KvmRunResult",
    "KvmSystem",
    "KvmVcpu",
    "KvmVcpuFd",
    "KvmVm",
    "NoDevices",
    "PortIo",
    "StopReason",
    "probe_kvm",
]
