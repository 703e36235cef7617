"""VM-entry event injection (SDM "VM-Entry Controls for Event Injection") done with KVM's ioctls."""

from __future__ import annotations

from pyflank.backends.kvm.device import KvmVcpuFd
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.qualifications import InterruptionInformation, InterruptionType
from pyflank.intel_x64.vmcs import Vmcs

_VALID = 1 << 31
_EXCEPTIONS = (
    InterruptionType.HARDWARE_EXCEPTION,
    InterruptionType.SOFTWARE_EXCEPTION,
    InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION,
)


def inject_pending_event(fd: KvmVcpuFd, vmcs: Vmcs) -> None:
    """Deliver the event in the VM-entry interruption-information field, then clear its valid bit.

    An exception is handed to KVM as already "injected" (its delivery has
    begun), which is what VM entry does: no re-evaluation, no #DF merging.
    """
    info = vmcs.read(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD)
    if not info & _VALID:
        return
    event = InterruptionInformation.decode(info)
    if event.type is InterruptionType.EXTERNAL_INTERRUPT:
        fd.interrupt(event.vector)
    else:
        events = fd.get_vcpu_events()
        events.flags = 0
        if event.type is InterruptionType.NMI:
            events.nmi.injected = 1
        elif event.type in _EXCEPTIONS:
            events.exception.injected, events.exception.pending = 1, 0
            events.exception.nr = event.vector
            events.exception.has_error_code = int(event.error_code_valid)
            events.exception.error_code = vmcs.read(f.VM_ENTRY_EXCEPTION_ERROR_CODE)
        else:
            raise ValueError(f"cannot inject {event} through KVM")
        fd.set_vcpu_events(events)
    vmcs.processor_write(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD, info & ~_VALID)
