"""What every backend shares with the vCPU layer: the port bus it is given, and the two
small protocols ``Vm`` drives a backend through (one per VM, one engine per vCPU).

An engine runs guest code and reports what happened as values (``pyflank.processor``):
``run(plan, decide)`` loads the entry plan, runs the guest, and returns the next exit
record, or a stop.  ``decide`` is the processor's exit routine (record in, plan out),
handed in for engines that would pay more for leaving their run loop than for the exit
itself (the software CPU decides inside unicorn's hooks); such an engine may return a
plan it decided but could not carry out in place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from pyflank.processor.records import StopReason

if TYPE_CHECKING:
    from pyflank.intel_x64.cpu import CpuidRegisters, PhysicalCpu
    from pyflank.intel_x64.vmcs import Vmcs
    from pyflank.processor import EntryPlan, ExitRecord, Pause, Stop

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Capabilities",
    "Decide",
    "PortIo",
    "StopReason",
    "VcpuEngine",
]

Decide = Callable[["ExitRecord"], "EntryPlan | Stop"]


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run on this host (the message says why)."""


class Capabilities(Protocol):
    """What the host lets a backend do (KVM's probe report), for people to read."""

    def describe(self) -> str: ...


class PortIo(Protocol):
    """Port-mapped devices (COM1, ...); sizes are 1, 2 or 4 bytes."""

    def io_read(self, port: int, size: int) -> int: ...
    def io_write(self, port: int, size: int, value: int) -> None: ...


class VcpuEngine(Protocol):
    """One vCPU in VMX non-root operation; ``run`` blocks on the vCPU's own thread."""

    @property
    def cpu(self) -> PhysicalCpu | None: ...  # the handler's physical CPU, if the engine has one

    def cpuid_leaves(self) -> Iterable[tuple[int, int]] | None: ...  # None: CPUID exits
    def set_cpuid(self, answers: dict[tuple[int, int], CpuidRegisters | None]) -> None: ...
    def run(self, plan: EntryPlan, decide: Decide) -> ExitRecord | EntryPlan | Stop | Pause: ...
    # Before the run: count guest instructions from now on; the count's reader, or None.
    def count_instructions(self) -> Callable[[], int] | None: ...
    def request_stop(self, reason: StopReason = StopReason.STOPPED) -> None: ...
    def close(self) -> None: ...


class Backend(Protocol):
    """A VM's engines: what they tell guests, which controls they run, one per vCPU."""

    name: str

    @property
    def capabilities(self) -> Capabilities | None: ...  # None: nothing to probe

    def hypervisor_leaves(self) -> dict[int, CpuidRegisters]: ...
    def unsupported(self, vmcs: Vmcs) -> list[str]: ...  # empty when it can run them
    def create_vcpu(self, vcpuid: int) -> VcpuEngine: ...
    def close(self) -> None: ...
