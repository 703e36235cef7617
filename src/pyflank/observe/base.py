"""An observer of your own, in one class: override what you need of ``exiting``,
``exited`` and ``stopped``; each is told which vCPU.

    class SlowExits(Observer):
        def exited(self, vcpu, record, handler_ns):
            if handler_ns > 1_000_000:
                print(f"vCPU {vcpu.vcpuid}: exit {record.info.reason} took {handler_ns} ns")

    Vm(MyHandler, observers=[SlowExits()])

Each vCPU calls it on its own thread: an observer that keeps state across vCPUs guards it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pyflank.processor.observer import ObservedVcpu
    from pyflank.processor.records import ExitRecord, Stop


class _Watch:
    """``observer``'s calls for one vCPU, as the processor makes them."""

    __slots__ = ("observer", "vcpu")

    def __init__(self, observer: Observer, vcpu: ObservedVcpu) -> None:
        self.observer = observer
        self.vcpu = vcpu

    def exiting(self, record: ExitRecord) -> Stop | None:
        return self.observer.exiting(self.vcpu, record)

    def exited(self, record: ExitRecord, handler_ns: int) -> None:
        self.observer.exited(self.vcpu, record, handler_ns)

    def stopped(self, stop: Stop) -> None:
        self.observer.stopped(self.vcpu, stop)


class Observer:
    """A ``VmObserver`` that watches every vCPU (``watches`` decides) with its own methods."""

    def attach(self, vcpu: ObservedVcpu) -> _Watch | None:
        """Watch ``vcpu`` if ``watches(vcpu)``."""
        return _Watch(self, vcpu) if self.watches(vcpu) else None

    def watches(self, vcpu: ObservedVcpu) -> bool:
        """Whether to watch ``vcpu`` (default: every vCPU)."""
        return True

    def exiting(self, vcpu: ObservedVcpu, record: ExitRecord) -> Stop | None:
        """Before the handler runs on ``record``; a ``Stop`` stops ``vcpu`` there."""
        return None

    def exited(self, vcpu: ObservedVcpu, record: ExitRecord, handler_ns: int) -> None:
        """After the handler ran on ``record`` (its changes are in ``vcpu.state``/``vmcs``)."""

    def stopped(self, vcpu: ObservedVcpu, stop: Stop) -> None:
        """``vcpu`` stopped."""

    def finished(self) -> None:
        """Every vCPU of the run stopped."""
