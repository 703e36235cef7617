"""The "physical CPU" an exit handler sees under KVM, and the CPUID table made from the handler.

KVM gives user space no CPUID exit.  The handler's CPUID behaviour is
therefore sampled once, at vCPU setup: every leaf and subleaf KVM supports
(plus the handler's hypervisor leaves) goes through ``handle_cpuid`` on a
scratch VMCS/StateSave, and the answers become the vCPU's KVM_SET_CPUID2
table.  The samples go through ``handle_exit``, not ``dispatch``: they are not
exits the guest made.  A CPUID handler must then be a pure function of (leaf, subleaf):
anything it does per call (counting, logging, answers that change over time
or with guest state) happens once at setup on KVM, not at each guest CPUID.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pyflank.backends.kvm.device import CpuidEntry, KvmError, KvmVcpuFd
from pyflank.exit_handler import ExitHandlerIntelX64, StateSave
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.cpu import VMX_CAPABILITY_MSRS, CpuidRegisters, MsrFault
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import Vmcs, VmcsState

log = logging.getLogger("pyflank.backends.kvm")
_CPUID_LENGTH = 2  # 0F A2


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


def cpuid_table(
    handler: ExitHandlerIntelX64, supported: Iterable[CpuidEntry], vcpuid: int = 0
) -> list[CpuidEntry]:
    """The handler's answer for every (leaf, subleaf) the platform exposes, as KVM entries."""
    entries = [e for e in supported if not 0x4000_0000 <= e.function < 0x5000_0000]
    entries += [CpuidEntry(leaf, 0, 0, 0, 0, 0, 0) for leaf in sorted(handler.hypervisor_leaves)]
    saved_vmcs, saved_state = handler.m_vmcs, handler.m_state_save
    vmcs, state = Vmcs(), StateSave(vcpuid)
    handler.set_vmcs(vmcs)
    handler.set_state_save(state)
    table = []
    try:
        vmcs.load()
        vmcs.launch()
        for e in entries:
            regs = _ask(handler, vmcs, state, e.function, e.index)
            if regs is None:
                regs = e.registers
            table.append(CpuidEntry(e.function, e.index, e.flags, *regs))
    finally:
        handler.set_vmcs(saved_vmcs)
        handler.set_state_save(saved_state)
    return table


def _ask(
    handler: ExitHandlerIntelX64, vmcs: Vmcs, state: StateSave, leaf: int, subleaf: int
) -> CpuidRegisters | None:
    state.rax, state.rcx, state.rbx, state.rdx = leaf, subleaf, 0, 0
    vmcs.processor_write(f.VM_EXIT_REASON, ExitReason.CPUID)
    vmcs.processor_write(f.VM_EXIT_INSTRUCTION_LENGTH, _CPUID_LENGTH)
    # handle_exit, not dispatch: a subclass counting or narrating exits in dispatch
    # must not see these samples as exits the guest made.
    try:
        handler.handle_exit(ExitReason.CPUID)
    except Exception as exc:  # noqa: BLE001 - a handler bug costs one leaf, not the vCPU
        log.warning("CPUID handler raised %r at leaf %#x.%d: using KVM's value", exc, leaf, subleaf)
        return None
    if vmcs.state is not VmcsState.LAUNCHED:
        log.warning(
            "CPUID handler stopped the vCPU at leaf %#x.%d: using KVM's value", leaf, subleaf
        )
        vmcs.state = VmcsState.LAUNCHED
        return None
    return (state.rax & 0xFFFF_FFFF, state.rbx & 0xFFFF_FFFF, state.rcx & 0xFFFF_FFFF,
            state.rdx & 0xFFFF_FFFF)  # fmt: skip
