"""The PC platform: the legacy devices Linux touches, wired and placed as on a PC.

One table (``PC_PORTS``) says where each device lives; ``PcPlatform`` builds them over one
virtual clock, wires their interrupt lines to the 8259 pair, and offers a processor what
it needs: the port bus, the interrupt controller, the earliest timer deadline and
``service()`` at it, the machine-control requests (power off, reset), and ``wakeup``
(set when host input arrives for a halted vCPU).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from pyflank.platform.devices.bus import BusDevice, PortBus, Window
from pyflank.platform.devices.clock import Timed, VirtualClock
from pyflank.platform.devices.i8042 import COMMAND, DATA, I8042
from pyflank.platform.devices.irq import InterruptController, IrqLine
from pyflank.platform.devices.manager import DeviceManager
from pyflank.platform.devices.pic import PicPair
from pyflank.platform.devices.pit import Pit8254, SystemControlB
from pyflank.platform.devices.power import DebugExit, MachineControl
from pyflank.platform.devices.rtc import CmosRtc
from pyflank.platform.devices.uart import PORT_COUNT, Uart16550

# name: (base port, port count)
PC_PORTS: Final = {
    "pic-master": (0x20, 2),
    "pit": (0x40, 4),
    "i8042-data": (0x60, 1),
    "port-b": (0x61, 1),
    "i8042-command": (0x64, 1),
    "rtc": (0x70, 2),
    "pic-slave": (0xA0, 2),
    "debug-exit": (0xF4, 1),
    "com1": (0x3F8, PORT_COUNT),
    "elcr": (0x4D0, 2),
}
# ISA interrupt lines
IRQ_PIT, IRQ_KEYBOARD, IRQ_COM1, IRQ_RTC, IRQ_MOUSE = 0, 1, 4, 8, 12
DEFAULT_MEMORY: Final = 256 << 20


@dataclass(frozen=True)
class PcConfig:
    memory_size: int = DEFAULT_MEMORY  # reported in CMOS as a BIOS would
    rtc_start: int | None = None  # Unix time at virtual 0; None: the host's, read once
    debug_exit: bool = True  # isa-debug-exit at 0xF4


class PcPlatform:
    def __init__(
        self,
        clock: VirtualClock,
        config: PcConfig | None = None,
        *,
        console: Callable[[int], None] | None = None,
    ) -> None:
        config = config or PcConfig()
        self.clock = clock
        self.config = config
        self.devices = DeviceManager()
        self.machine = MachineControl()
        self.wakeup = threading.Event()
        self.pic = PicPair()
        self.pit = Pit8254(clock, self._line(IRQ_PIT))
        self.port_b = SystemControlB(self.pit, clock)
        start = int(time.time()) if config.rtc_start is None else config.rtc_start
        self.rtc = CmosRtc(clock, start, self._line(IRQ_RTC), memory_size=config.memory_size)
        self.i8042 = I8042(self.machine, self._line(IRQ_KEYBOARD), self._line(IRQ_MOUSE))
        self.com1 = Uart16550(self._line(IRQ_COM1), clock, sink=console, wakeup=self.wakeup)
        placed: dict[str, BusDevice] = {
            "pic-master": self.pic.master_ports,
            "pic-slave": self.pic.slave_ports,
            "elcr": self.pic.elcr_ports,
            "pit": self.pit,
            "port-b": self.port_b,
            "rtc": self.rtc,
            "i8042-data": Window(self.i8042, DATA),
            "i8042-command": Window(self.i8042, COMMAND),
            "com1": self.com1,
        }
        if config.debug_exit:
            placed["debug-exit"] = DebugExit(self.machine)
        for name, device in placed.items():
            self.devices.add_io(name, device, *PC_PORTS[name])
        self.timed: tuple[Timed, ...] = (self.pit, self.rtc, self.com1)

    def _line(self, irq: int) -> IrqLine:
        return IrqLine(self.pic, irq)

    @property
    def io(self) -> PortBus:
        return self.devices.io

    @property
    def interrupts(self) -> InterruptController:
        return self.pic

    def next_deadline_ns(self) -> int | None:
        """The earliest virtual time a device needs ``service()`` (None: no timer armed)."""
        earliest = None  # (a loop: this runs on every exit of a machine)
        for device in self.timed:
            deadline = device.next_deadline_ns()
            if deadline is not None and (earliest is None or deadline < earliest):
                earliest = deadline
        return earliest

    def service(self) -> None:
        """Let every device act on what fell due by the clock's now (timer edges, the
        UART's input and character timeout)."""
        for device in self.timed:
            device.service()
