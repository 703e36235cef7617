"""External interrupts and guest time, between the processor and its machine.

``GuestClock`` keeps virtual time (``time``): it moves the machine's clock to the
instruction count of each exit, services the devices when a deadline passes, tells an
engine how much guest code it may run before the next deadline, and lets an idle vCPU
(HLT with interrupts enabled) sleep to the next deadline.  ``pending_event`` is the VMX
decision at a VM entry (SDM 26.6.5, 27.2.2): what an asserted INTR becomes.

A handler may also resume the guest in activity state HLT (field 0x4826, as a VMM does
after emulating HLT): the processor then runs no guest code until an event ends the HLT
(``wakes``) -- one it injects, an interrupt it delivers, or an exit an interrupt makes.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import Enum
from typing import Final

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import ActivityState
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.qualifications import InterruptionType
from pyflank.intel_x64.registers import RFLAGS_IF
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.processor import time
from pyflank.processor.machine import Machine
from pyflank.processor.policy import ExitPolicy
from pyflank.processor.records import ExitInformation

MAX_SLICE_NS: Final = 1_000_000  # host input and stop requests are seen within this
_BLOCKING = 0b11  # blocking by STI, by MOV SS
_VALID = 1 << 31
EXTERNAL_INTERRUPT_EXIT: Final = ExitInformation(int(ExitReason.EXTERNAL_INTERRUPT))
INTERRUPT_WINDOW_EXIT: Final = ExitInformation(int(ExitReason.INTERRUPT_WINDOW))


class Interrupt(Enum):
    NONE = "none"
    EXIT = "external-interrupt exit"
    WINDOW = "interrupt-window exit"
    DELIVER = "deliver through the guest IDT"


def interruptible(vmcs: Vmcs) -> bool:
    """RFLAGS.IF is set and nothing blocks (SDM 24.4.2, "Interruptibility state")."""
    return bool(vmcs.read(f.GUEST_RFLAGS) & RFLAGS_IF) and not (
        vmcs.read(f.GUEST_INTERRUPTIBILITY_STATE) & _BLOCKING
    )


def in_hlt(vmcs: Vmcs) -> bool:
    return vmcs.read(f.GUEST_ACTIVITY_STATE) == ActivityState.HLT


def wake(vmcs: Vmcs) -> None:
    """An event is delivered: the processor leaves the HLT state (SDM 26.6.2)."""
    vmcs.processor_write(f.GUEST_ACTIVITY_STATE, ActivityState.ACTIVE)


def can_wake(policy: ExitPolicy, vmcs: Vmcs) -> bool:
    """Whether an interrupt could ever end this HLT (NMIs aside: the PC raises none)."""
    return policy.external_interrupts or interruptible(vmcs)


def pending_event(machine: Machine, policy: ExitPolicy, vmcs: Vmcs) -> Interrupt:
    """What the next VM entry does about interrupts (an injected event goes first)."""
    pending = machine.interrupts.interrupt_pending()
    if pending and policy.external_interrupts:
        return Interrupt.EXIT  # exits whatever RFLAGS.IF says (SDM 25.2)
    if not (pending or policy.interrupt_window) or not interruptible(vmcs):
        return Interrupt.NONE
    return Interrupt.WINDOW if policy.interrupt_window else Interrupt.DELIVER


def external_interrupt_exit(machine: Machine, policy: ExitPolicy) -> ExitInformation:
    """Exit 1; with "acknowledge interrupt on exit" the vector is taken now (INTA) and
    reported in the VM-exit interruption information (SDM 27.2.2)."""
    if not policy.acknowledge_on_exit:
        return EXTERNAL_INTERRUPT_EXIT
    vector = machine.interrupts.acknowledge()
    info = vector | InterruptionType.EXTERNAL_INTERRUPT << 8 | _VALID
    return ExitInformation(int(ExitReason.EXTERNAL_INTERRUPT), interruption_information=info)


class GuestClock:
    """Virtual time of one vCPU over ``machine``."""

    def __init__(self, machine: Machine) -> None:
        self.machine = machine
        self.executed = 0  # guest code run, as of the last record (the engine's units)
        self.idle_ns = 0  # spent halted
        self.idle_hook: Callable[[], None] | None = None  # called while waiting for input

    @property
    def now_ns(self) -> int:
        return time.guest_ns(self.executed, self.idle_ns)

    def ran(self, executed: int) -> None:
        """The guest has run ``executed`` units: the machine's time catches up."""
        if executed > self.executed:
            self.executed = executed
        self._catch_up()

    def budget(self) -> int:
        """Guest code (the engine's units) it may run before it must pause (the next
        deadline)."""
        deadline = self.machine.next_deadline_ns()
        now = self.now_ns
        ahead = MAX_SLICE_NS if deadline is None else min(deadline - now, MAX_SLICE_NS)
        return time.units_for(ahead)

    def idle(self, stop: threading.Event) -> bool:
        """The vCPU is halted: sleep to the next deadline, or wait for host input.  False
        if nothing armed can ever wake it and no input is expected (or ``stop`` is set)."""
        machine = self.machine
        deadline = machine.next_deadline_ns()
        if deadline is not None:
            self.idle_ns += max(0, deadline - self.now_ns)
            self._catch_up()
            return True
        while not stop.is_set():  # only host input (the console) can wake it now
            if machine.wakeup.wait(0.05):
                machine.wakeup.clear()
                machine.service()
                return True
            hook = self.idle_hook
            if hook is not None:
                hook()  # (a debugger, a snapshot: the vCPU is halted, its state whole)
        return False

    def _catch_up(self) -> None:
        machine = self.machine
        now = self.now_ns
        if now > machine.clock.now_ns():
            machine.clock.advance_to(now)
        deadline = machine.next_deadline_ns()
        if (deadline is not None and deadline <= now) or machine.wakeup.is_set():
            machine.wakeup.clear()
            machine.service()
