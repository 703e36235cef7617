"""VMCS-backed MSRs that KVM keeps outside ``kvm_sregs``: pushed with KVM_SET_MSRS.

With every MSR access filtered to the handler, the VMCS copy is the one the
guest reads; KVM's copy is what the hardware acts on (PAT for caching,
SYSENTER for the instruction), so a handler's write is passed on.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Final

from pyflank.backends.kvm.device import KvmVcpuFd
from pyflank.backends.kvm.guest_state import SREGS_FIELDS
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs

# The VMCS-backed MSRs (``intel_x64.msrs``) outside kvm_sregs (EFER, FS/GS base are in
# it); IA32_PERF_GLOBAL_CTRL stays the VMCS's: KVM's vCPU need not have a PMU.
MSR_FIELDS: Final[dict[int, int]] = {
    backed.field: msr
    for msr, backed in msrs.VMCS_BACKED_MSRS.items()
    if backed.field not in SREGS_FIELDS and msr != msrs.IA32_PERF_GLOBAL_CTRL
}


def push_msr_fields(fd: KvmVcpuFd, fields: Mapping[int, int], changed: Collection[int]) -> None:
    for field, msr in MSR_FIELDS.items():
        if field in changed:
            # One at a time: KVM_SET_MSRS stops at the first MSR it refuses.
            fd.set_msrs({msr: fields[field]})


def launch_msr_fields(fd: KvmVcpuFd, fields: Mapping[int, int]) -> dict[int, int]:
    """At the launch: a PAT of 0 (all uncacheable) means "never set", so KVM's reset value
    is kept (and reported); the rest is pushed."""
    changed = set(MSR_FIELDS)
    kept: dict[int, int] = {}
    if fields[f.GUEST_IA32_PAT] == 0:
        pat = fd.get_msrs([msrs.IA32_PAT]).get(msrs.IA32_PAT)
        if pat is not None:
            changed.discard(f.GUEST_IA32_PAT)
            kept[f.GUEST_IA32_PAT] = pat
    push_msr_fields(fd, fields, changed)
    return kept
