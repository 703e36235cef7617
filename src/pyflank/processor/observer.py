"""The one place every VM exit can be watched from: observers the processor calls.

An observer sees a run without the handler knowing (hvpp's stats and dbgbreak handlers
and its compositor, outside the handler).  ``Vm(handler, observers=[...])`` takes
``VmObserver``s; each is offered every vCPU (``attach``) and answers with the
``VcpuObserver`` that watches it, or None.  The processor then calls, around each
``dispatch()``:

* ``exiting(record)``: the exit is stored in the VMCS and StateSave, the handler has not
  run.  Returning a ``Stop`` stops the vCPU right there (break on exit): the handler never
  sees that exit, and the vCPU's result holds the guest state at it.
* ``exited(record, handler_ns)``: the handler ran (its changes are in StateSave and the
  VMCS, ``vmcs.dirty`` names the fields it wrote), in ``handler_ns`` nanoseconds.

and once the vCPU stopped, ``stopped(stop)``; once every vCPU of the run stopped,
``VmObserver.finished()``.  Without observers the processor's exit path is the same as
if this module did not exist: nothing is timed, nothing is called.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pyflank.exit_handler import ExitHandlerIntelX64, StateSave
    from pyflank.intel_x64.vmcs import Vmcs
    from pyflank.processor.records import ExitRecord, Stop

__all__ = [
    "ObservedVcpu",
    "ReasonTrace",
    "VcpuObserver",
    "VcpuObservers",
    "VmObserver",
    "checked_observers",
    "compose_observers",
]


class ObservedVcpu(Protocol):
    """What an observer is shown of a vCPU (``pyflank.vmm.Vcpu`` is one)."""

    vcpuid: int
    handler: ExitHandlerIntelX64
    vmcs: Vmcs
    state: StateSave
    backend: str  # the backend's name: "emu", "kvm", ...

    def count_instructions(self) -> Callable[[], int] | None:
        """Start counting the guest's instructions; a reader of the count, or None where
        the engine cannot count them.  Counting can cost speed: ask only when needed."""
        ...


class VcpuObserver(Protocol):
    """Watches one vCPU's exits (called on that vCPU's thread)."""

    def exiting(self, record: ExitRecord) -> Stop | None:
        """Before ``dispatch()``; a ``Stop`` stops the vCPU at this exit."""
        ...

    def exited(self, record: ExitRecord, handler_ns: int) -> None:
        """After ``dispatch()``, which took ``handler_ns`` nanoseconds."""
        ...

    def stopped(self, stop: Stop) -> None:
        """The vCPU stopped (after its last exit, for good)."""
        ...


class VmObserver(Protocol):
    """What ``Vm(observers=...)`` takes: an observer of a whole run."""

    def attach(self, vcpu: ObservedVcpu) -> VcpuObserver | None:
        """Before the run: the observer of ``vcpu``, or None to leave it alone."""
        ...

    def finished(self) -> None:
        """Every vCPU of the run stopped (flush, close, summarise)."""
        ...


class VcpuObservers:
    """Several observers of one vCPU as one, in order (hvpp's compositor).

    ``exiting`` asks each in turn and stops at the first that breaks, so an observer
    after a breaking one does not see that exit; ``exited`` and ``stopped`` go to all.
    """

    __slots__ = ("observers",)

    def __init__(self, observers: Sequence[VcpuObserver]) -> None:
        self.observers = tuple(observers)

    def exiting(self, record: ExitRecord) -> Stop | None:
        for observer in self.observers:
            stop = observer.exiting(record)
            if stop is not None:
                return stop
        return None

    def exited(self, record: ExitRecord, handler_ns: int) -> None:
        for observer in self.observers:
            observer.exited(record, handler_ns)

    def stopped(self, stop: Stop) -> None:
        for observer in self.observers:
            observer.stopped(stop)


def checked_observers(observers: Sequence[object]) -> tuple[VmObserver, ...]:
    """``observers`` if each is a ``VmObserver`` (an instance with ``attach`` and
    ``finished``), else a ``TypeError`` naming the first that is not."""
    for index, observer in enumerate(observers):
        if isinstance(observer, type):
            name = observer.__name__
            raise TypeError(f"observers[{index}] is the class {name}: pass one ({name}())")
        if not (
            callable(getattr(observer, "attach", None))
            and callable(getattr(observer, "finished", None))
        ):
            what = type(observer).__name__
            raise TypeError(f"observers[{index}] ({what}) is no observer: it needs attach() "
                            "and finished() (pyflank.processor.observer.VmObserver)")  # fmt: skip
    return tuple(observers)  # type: ignore[arg-type]


def compose_observers(observers: Sequence[VcpuObserver]) -> VcpuObserver | None:
    """One observer for ``observers``: None for none, the observer itself for one."""
    if not observers:
        return None
    if len(observers) == 1:
        return observers[0]
    return VcpuObservers(observers)


class ReasonTrace:
    """(basic exit reason, guest RIP) of every exit, in a list: ``Vm(trace=True)``."""

    __slots__ = ("exits",)

    def __init__(self) -> None:
        self.exits: list[tuple[int, int]] = []

    def exiting(self, record: ExitRecord) -> Stop | None:
        return None

    def exited(self, record: ExitRecord, handler_ns: int) -> None:
        self.exits.append((record.info.reason & 0xFFFF, record.rip))

    def stopped(self, stop: Stop) -> None:
        pass
