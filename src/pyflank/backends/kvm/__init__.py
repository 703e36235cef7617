"""KVM backend: pyflank's exit handler driving a hardware-virtualized vCPU through /dev/kvm.

Layers, bottom up: ``structs``/``abi`` (the kernel ABI as ctypes), ``device``
(one method per ioctl), ``probe`` (what this KVM can do), ``machine``/``vcpu``
(the engine: KVM exits translated into exit records, entry plans loaded),
``policy`` (the controls it implements), ``platform`` (what ``Vm`` drives).

Gaps: what differs from the software CPU, and why (``policy.GAPS`` holds the same
keys; tests that skip on KVM name one).  KVM passes user space port I/O, HLT, MMIO,
filtered MSR accesses, shutdowns and emulation failures, nothing else:

- cpuid: CPUID never exits to user space.  The handler's answers for every leaf are
  sampled once, through ``handle_cpuid`` (not ``dispatch``/``handle_exit``: they are
  not guest exits), into the KVM_SET_CPUID2 table when the vCPU is made; a CPUID
  handler with per-call side effects sees them then.  At CPL 0 a nested
  page-table-based KVM answers some leaves (1, 7) from the host (capability report).
- invd: INVD and WBINVD complete inside KVM: no INVD exit, no "WBINVD exiting".
- rdtsc: RDTSC/RDTSCP run inside KVM: no "RDTSC exiting", no TSC offsetting.
- rdtscp: RDTSCP follows KVM's CPUID, not "enable RDTSCP".
- exceptions: guest exceptions are delivered by KVM: no exception bitmap, so no
  exception exits and no IDT-vectoring information (injection at VM entry works).
- instruction_exits: INVLPG, PAUSE, RDPMC, MOV CR3/CR8, MOV DR, MONITOR/MWAIT never
  leave KVM, so their exiting controls are refused.
- msr_bitmaps: the MSR filter is fixed when the VM is made: every RDMSR/WRMSR exits.
- physical_cpu: the handler's "physical CPU" is the KVM vCPU (KVM's CPUID and MSRs),
  with pyflank's VMX capability MSRs (the VMX processor is pyflank's own).
- vmx_instructions: VMX instructions exit only where KVM's instruction emulator gives
  up on them (ring-0 guests on kvm_pvm, the exit is then exact); elsewhere KVM raises #UD.
- vm_functions: no VM functions ("enable VM functions" is refused).
- vmcall: VMCALL/VMMCALL are KVM's own hypercalls and may never return from KVM_RUN
  (capability report): CPUID 0x40000001 advertises the I/O-port doorbell instead, and
  the guest SDK uses it (RDX travels in RDI, the port is in EBX).
- emulator: on a page-table-based KVM (kvm_pvm) ring-0 guest code runs in KVM's
  instruction emulator, which lacks some instructions (INT n, INT3, INT1, RDTSCP, x87
  on MMIO, VMFUNC): the vCPU stops with ``StopReason.EMULATION_FAILURE``.
- io_strings: a string I/O exit (INS/OUTS) comes from KVM's emulator after its first
  iteration (RSI/RDI, RCX have moved) and reports no linear address or instruction
  information.
- instruction_count: KVM runs the guest at full speed and counts none of its
  instructions, so exit observers (``pyflank.observe``) get no instruction count.

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
