"""VMCS-backed MSRs that KVM keeps outside ``kvm_sregs``: pushed with KVM_SET_MSRS.

With every MSR access filtered to the handler, the VMCS copy is the one the
guest reads; KVM's copy is what the hardware acts on (PAT for caching,
SYSENTER for the instruction), so a handler's write is passed on.
"""

from __future__ import annotations

from typing import Final

from pyflank.backends.kvm.device import KvmVcpuFd
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.vmcs import Vmcs

MSR_FIELDS: Final[dict[int, int]] = {
    f.GUEST_IA32_PAT: msrs.IA32_PAT,
    f.GUEST_IA32_SYSENTER_CS: msrs.IA32_SYSENTER_CS,
    f.GUEST_IA32_SYSENTER_ESP: msrs.IA32_SYSENTER_ESP,
    f.GUEST_IA32_SYSENTER_EIP: msrs.IA32_SYSENTER_EIP,
    f.GUEST_IA32_DEBUGCTL: msrs.IA32_DEBUGCTL,
}


def push_msr_fields(fd: KvmVcpuFd, vmcs: Vmcs, fields: set[int] | frozenset[int]) -> None:
    for field, msr in MSR_FIELDS.items():
        if field in fields:
            # One at a time: KVM_SET_MSRS stops at the first MSR it refuses.
            fd.set_msrs({msr: vmcs.read(field)})


def load_msr_fields(fd: KvmVcpuFd, vmcs: Vmcs) -> None:
    """At setup: a PAT of 0 (all uncacheable) means "never set", so take KVM's reset value."""
    if vmcs.read(f.GUEST_IA32_PAT) == 0:
        pat = fd.get_msrs([msrs.IA32_PAT]).get(msrs.IA32_PAT)
        if pat is not None:
            vmcs.processor_write(f.GUEST_IA32_PAT, pat)
    push_msr_fields(fd, vmcs, frozenset(MSR_FIELDS))
