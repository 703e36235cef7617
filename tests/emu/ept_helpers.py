"""Guests and handlers for the EPT and monitor-trap-flag tests."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from emu_helpers import Recorder

from pyflank.exit_handler import EptAccess
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import Vmcs

DATA = 0x300000  # a page of guest RAM the tests hook (identity-mapped, 2 MiB guest pages)
PAGE = 0x1000
# Qualification bits (SDM "Exit Qualification for EPT Violations").
READ, WRITE, FETCH = 1 << 0, 1 << 1, 1 << 2
R, W, X = 1 << 3, 1 << 4, 1 << 5  # what the page allowed
GLA_VALID, TRANSLATED = 1 << 7, 1 << 8
USER_LINEAR, WRITABLE_LINEAR, XD_LINEAR = 1 << 9, 1 << 10, 1 << 11
# The boot tables map RAM supervisor, writable, executable: a translated access says so.
KERNEL_RW = GLA_VALID | TRANSLATED | WRITABLE_LINEAR


@dataclass(frozen=True)
class EptExit:
    reason: int
    qualification: int
    gpa: int
    gla: int
    rip: int


def exit_fields(vmcs: Vmcs) -> EptExit:
    """The fields an EPT or MTF exit reports."""
    read = vmcs.read
    return EptExit(
        read(f.VM_EXIT_REASON),
        read(f.EXIT_QUALIFICATION),
        read(f.GUEST_PHYSICAL_ADDRESS),
        read(f.GUEST_LINEAR_ADDRESS),
        read(f.GUEST_RIP),
    )


class EptRecorder(Recorder):
    """Enables EPT, applies ``protect`` in setup, and records every EPT exit's fields.

    At an EPT exit it calls ``react`` (default: halt, so the state is the exit's)."""

    protections: tuple[tuple[int, int, dict[str, bool]], ...] = ()

    def __init__(self) -> None:
        super().__init__()
        self.ept_exits: list[EptExit] = []
        self.react: Callable[[EptRecorder], None] = lambda handler: handler.halt()

    def setup(self, vmcs: Vmcs) -> None:
        self.ept.enable(vmcs)
        for gpa, size, permissions in self.protections:
            self.ept.protect(gpa, size, **permissions)

    def _record_ept(self) -> None:
        self.ept_exits.append(exit_fields(self.m_vmcs))
        self.react(self)

    def handle_ept_violation(self) -> None:
        self._record_ept()

    def handle_ept_misconfiguration(self) -> None:
        self._record_ept()

    @property
    def access(self) -> EptAccess:
        return self.ept.violation()


def protecting(*protections: tuple[int, int, dict[str, bool]]) -> type[EptRecorder]:
    return type("Protecting", (EptRecorder,), {"protections": protections})


def lift_and_step(handler: EptRecorder) -> None:
    """The DdiMon pattern: lift the page, step one instruction with MTF, restore."""
    access = handler.ept.violation()
    handler.lifted.append(access.page)  # type: ignore[attr-defined]
    handler.ept.restore(access.page)
    handler.monitor_trap_flag(True)


class Stepping(EptRecorder):
    """Lifts, steps and restores at every EPT violation (``lift_and_step``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lifted: list[int] = []
        self.mtf_exits: list[EptExit] = []
        self.react = lift_and_step

    def handle_monitor_trap_flag(self) -> None:
        self.mtf_exits.append(exit_fields(self.m_vmcs))
        self.monitor_trap_flag(False)
        for gpa, size, permissions in self.protections:
            self.ept.protect(gpa, size, **permissions)


def is_exit(reason: int) -> Callable[[EptExit], bool]:
    return lambda e: e.reason == reason


EPT_VIOLATION = int(ExitReason.EPT_VIOLATION)
EPT_MISCONFIGURATION = int(ExitReason.EPT_MISCONFIGURATION)
