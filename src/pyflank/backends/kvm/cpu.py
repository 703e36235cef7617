"""The "physical CPU" an exit handler sees under KVM: KVM's CPUID and the vCPU's MSRs.

(KVM gives user space no CPUID exit: the handler's answers become the vCPU's CPUID
table at setup, see ``pyflank.processor.cpuid_table``.)
"""

from __future__ import annotations

from collections.abc import Iterable

from pyflank.backends.kvm.device import CpuidEntry, KvmError, KvmVcpuFd
from pyflank.intel_x64.cpu import VMX_CAPABILITY_MSRS, CpuidRegisters, MsrFault


class KvmHostCpu:
    """What the handler's "physical CPU" is on KVM: KVM's CPUID and the vCPU's own MSRs.

    RDMSR/WRMSR pass through to KVM_GET_MSRS/KVM_SET_MSRS, so a handler that
    forwards an MSR access does what the virtual CPU would have done without
    the filter; an MSR KVM does not know faults (#GP), as on hardware.  The VMX
    capability MSRs are the exception: KVM's vCPU has no VMX, pyflank plays it,
    so they describe pyflank's VMX model (read-only), which the VM-entry checks
    and the boot controls were made against.
    """

    def __init__(self, supported: Iterable[CpuidEntry], vcpu: KvmVcpuFd | None = None) -> None:
        self._leaves: dict[tuple[int, int], CpuidRegisters] = {}
        self._any_index: dict[int, CpuidRegisters] = {}
        for e in supported:
            if e.significant_index:
                self._leaves[(e.function, e.index)] = e.registers
            else:
                self._any_index[e.function] = e.registers
        self.vcpu = vcpu
        self.wbinvd_count = 0

    def cpuid(self, leaf: int, subleaf: int) -> CpuidRegisters:
        regs = self._any_index.get(leaf)
        if regs is None:
            regs = self._leaves.get((leaf, subleaf), (0, 0, 0, 0))
        return regs

    def rdmsr(self, msr: int) -> int:
        capability = VMX_CAPABILITY_MSRS.get(msr)
        if capability is not None:
            return capability
        values = self._vcpu().get_msrs([msr])
        if msr not in values:
            raise MsrFault(msr, write=False)
        return values[msr]

    def wrmsr(self, msr: int, value: int) -> None:
        if msr in VMX_CAPABILITY_MSRS:
            raise MsrFault(msr, write=True)
        try:
            accepted = self._vcpu().set_msrs({msr: value})
        except KvmError:
            accepted = 0
        if accepted != 1:
            raise MsrFault(msr, write=True)

    def wbinvd(self) -> None:
        # Guest memory is ordinary host memory, coherent for both sides: nothing to flush.
        self.wbinvd_count += 1

    def _vcpu(self) -> KvmVcpuFd:
        if self.vcpu is None:
            raise RuntimeError("no KVM vCPU attached to this CPU model yet")
        return self.vcpu
