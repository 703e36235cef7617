"""Resuming after an exit whose handler changed the VMCS, or that KVM still owes a step.

The common resume (registers only) is ``KvmVcpu.resume``; this is the rest.
KVM finishes some instructions on the next KVM_RUN (see ``vcpu``); this
either lets that completion produce exactly the handler's result, or
completes first (KVM_RUN with ``immediate_exit``) and then imposes the
handler's state.  Guest state the handler wrote is checked as VM entry
would check it, and loaded: sregs, RFLAGS, MSR-backed fields, an event.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING

from pyflank.backends.kvm.device import KvmError
from pyflank.backends.kvm.guest_state import (
    RFLAGS_FIXED,
    SREGS_FIELDS,
    state_to_regs,
    vmcs_to_sregs,
)
from pyflank.backends.kvm.injection import inject_pending_event
from pyflank.backends.kvm.msr_state import MSR_FIELDS, push_msr_fields
from pyflank.backends.kvm.policy import CONTROL_FIELDS, unsupported
from pyflank.backends.kvm.result import KvmRunResult, StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.fields import FieldType, field_type

if TYPE_CHECKING:
    from pyflank.backends.kvm.vcpu import KvmVcpu

_ENTRY_EVENT = f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD
_STATE_SAVE_FIELDS = frozenset({f.GUEST_RIP, f.GUEST_RSP})  # StateSave supersedes these


def _checked(dirty: set[int]) -> bool:
    """Whether the handler changed guest state a VM entry checks (RIP/RSP come from StateSave)."""
    return any(field_type(e) is FieldType.GUEST_STATE for e in dirty if e not in _STATE_SAVE_FIELDS)


def resume_carefully(vcpu: KvmVcpu, *, complete: bool, rip: int | None) -> KvmRunResult | None:
    """``KvmVcpu.resume`` when KVM owes the instruction a completion or the VMCS changed."""
    vmcs = vcpu.handler.m_vmcs
    dirty = vmcs.dirty
    if dirty:
        vcpu.vmcs_written()  # GUEST_RIP/RSP/RFLAGS, the controls, ...
    sregs = bool(dirty) and not dirty.isdisjoint(SREGS_FIELDS)
    check = bool(dirty) and _checked(dirty)
    if rip is not None and (sregs or check):
        # Loading sregs makes KVM drop the emulator context its completion would
        # use, and a failed entry must not leave it pending: finish the
        # instruction first, then load everything.
        complete, rip = True, None
    if complete:
        vcpu.complete_pending()
    if dirty and not dirty.isdisjoint(CONTROL_FIELDS):
        problems = unsupported(vmcs)
        if problems:
            return vcpu.stopped(StopReason.ERROR, "unsupported on KVM: " + "; ".join(problems))
    if check:
        why = vcpu.entry_problems()
        if why:
            return vcpu.failed_entry(why)
    kregs = vcpu.registers.regs
    state_to_regs(vcpu.handler.m_state_save, kregs)
    if rip is not None:
        kregs.rip = rip
    if dirty:
        if f.GUEST_RFLAGS in dirty:
            kregs.rflags = vmcs.read(f.GUEST_RFLAGS) | RFLAGS_FIXED
        if sregs:
            vmcs_to_sregs(vmcs, vcpu.registers.sregs)
        if not dirty.isdisjoint(MSR_FIELDS):
            push_msr_fields(vcpu.fd, vmcs, dirty)
        if _ENTRY_EVENT in dirty:
            inject_pending_event(vcpu.fd, vmcs)
        dirty.clear()
    try:
        vcpu.registers.push(sregs=sregs)
    except KvmError as exc:  # without sync regs, a refused state shows up here
        if exc.errno != errno.EINVAL:
            raise
        return vcpu.failed_entry(str(exc))
    return None
