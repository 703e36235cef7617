"""The port bus as ``vmm.Vm`` builds it today: ``PortBus(com1)`` places COM1 at 0x3F8.

The bus itself is ``pyflank.platform.devices.bus.PortBus`` (range-mapped, offsets, the
``io_read``/``io_write`` facade the backends call); this module goes once ``Vm`` builds a
``PcPlatform``.
"""

from __future__ import annotations

from pyflank.platform.devices import bus
from pyflank.platform.devices.pc import PC_PORTS


class PortBus(bus.PortBus):
    def __init__(self, com1: bus.BusDevice | None = None) -> None:
        super().__init__()
        if com1 is not None:
            self.insert(com1, *PC_PORTS["com1"], "com1")
