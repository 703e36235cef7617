"""What every backend shares with the vCPU layer: why a vCPU stopped, the port bus, and the
two small protocols ``Vm`` drives a backend through (one per VM, one per vCPU)."""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from pyflank.exit_handler import ExitHandlerIntelX64
    from pyflank.intel_x64.cpu import CpuidRegisters
    from pyflank.intel_x64.vmcs import Vmcs


class StopReason(Enum):
    HALTED = "halted"  # the exit handler halted the vCPU (halt(), an unhandled exit, ...)
    HANDLER_ERROR = "handler error"  # the exit handler raised: the message holds the report
    PROMOTED = "promoted"  # the handler left VMX operation (VMXOFF)
    GUEST_HLT = "guest hlt"  # HLT that does not exit: nothing would wake the vCPU
    SHUTDOWN = "shutdown"  # triple fault, and the handler did not resume the guest
    TIMEOUT = "timeout"
    STOPPED = "stopped"  # stopped from outside (another vCPU finished with an error, ...)
    # KVM only: its instruction emulator met a guest instruction it cannot run (and that
    # stands for no VM exit); on hardware VMX the instruction would simply have executed.
    EMULATION_FAILURE = "emulation failure"
    ERROR = "error"  # the backend could not go on (unsupported control, emulator error)


class BackendUnavailable(RuntimeError):
    """The backend asked for cannot run on this host (the message says why)."""


class Capabilities(Protocol):
    """What the host lets a backend do (KVM's probe report), for people to read."""

    def describe(self) -> str: ...


class PortIo(Protocol):
    """Port-mapped devices (COM1, ...); sizes are 1, 2 or 4 bytes."""

    def io_read(self, port: int, size: int) -> int: ...
    def io_write(self, port: int, size: int, value: int) -> None: ...


class VcpuBackend(Protocol):
    """One vCPU in VMX non-root operation: ``run`` blocks on the vCPU's own thread."""

    stop_reason: StopReason | None
    message: str

    @property
    def exits(self) -> int: ...  # VM exits dispatched to the handler

    @property
    def trace(self) -> list[tuple[int, int]] | None: ...  # (basic exit reason, RIP) each

    def run(self) -> StopReason: ...
    def request_stop(self, reason: StopReason = StopReason.STOPPED) -> None: ...


class Backend(Protocol):
    """A VM's processor: what it tells guests, which controls it runs, its vCPUs."""

    name: str

    @property
    def capabilities(self) -> Capabilities | None: ...  # None: nothing to probe

    def hypervisor_leaves(self) -> dict[int, CpuidRegisters]: ...
    def unsupported(self, vmcs: Vmcs) -> list[str]: ...  # empty when it can run them
    def create_vcpu(
        self, vcpuid: int, handler: ExitHandlerIntelX64, *, trace: bool
    ) -> VcpuBackend: ...
    def close(self) -> None: ...
