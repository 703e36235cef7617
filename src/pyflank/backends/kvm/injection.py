"""VM-entry event injection (SDM "VM-Entry Controls for Event Injection") done with KVM's ioctls."""

from __future__ import annotations

from pyflank.backends.kvm.device import KvmVcpuFd
from pyflank.intel_x64.qualifications import InterruptionType
from pyflank.processor import Event

_EXCEPTIONS = (
    InterruptionType.HARDWARE_EXCEPTION,
    InterruptionType.SOFTWARE_EXCEPTION,
    InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION,
)


def inject(fd: KvmVcpuFd, event: Event) -> None:
    """Deliver ``event`` at the next KVM_RUN.

    An exception is handed to KVM as already "injected" (its delivery has begun), which
    is what VM entry does: no re-evaluation, no #DF merging.
    """
    if event.type is InterruptionType.EXTERNAL_INTERRUPT:
        fd.interrupt(event.vector)
        return
    events = fd.get_vcpu_events()
    events.flags = 0
    if event.type is InterruptionType.NMI:
        events.nmi.injected = 1
    elif event.type in _EXCEPTIONS:
        events.exception.injected, events.exception.pending = 1, 0
        events.exception.nr = event.vector
        events.exception.has_error_code = int(event.error_code is not None)
        events.exception.error_code = event.error_code or 0
    else:
        raise ValueError(f"cannot inject {event} through KVM")
    fd.set_vcpu_events(events)
