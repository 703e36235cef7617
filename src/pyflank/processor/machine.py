"""What the processor needs of the machine around it: interrupts and time.

``PcPlatform`` (``platform.devices``) is one: its interrupt controller gives INTR and the
INTA cycle, its devices say when they next need service, and its clock is virtual.  The
processor advances that clock from the guest's instruction count, services the devices
when a deadline passes, and decides what an asserted INTR becomes, the VMX way: an
external-interrupt exit (with "external-interrupt exiting"), an interrupt-window exit,
or delivery through the guest IDT when RFLAGS.IF allows it.
"""

from __future__ import annotations

import threading
from typing import Protocol

from pyflank.platform.devices.clock import VirtualClock
from pyflank.platform.devices.irq import InterruptController
from pyflank.platform.devices.power import MachineControl


class Machine(Protocol):
    @property
    def interrupts(self) -> InterruptController: ...

    clock: VirtualClock
    wakeup: threading.Event  # set when host input arrives for a halted vCPU
    machine: MachineControl  # a power-off or reset the guest asked for

    def next_deadline_ns(self) -> int | None: ...  # the earliest device deadline, if any
    def service(self) -> None: ...  # act on everything that fell due by the clock's now
