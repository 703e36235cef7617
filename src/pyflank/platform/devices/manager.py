"""The device manager: the one place that decides where each device lives.

Devices never know their own addresses; the manager places them on the port-I/O or the
MMIO bus and can say what lives where (as ``/proc/ioports`` would).
"""

from __future__ import annotations

from pyflank.platform.devices.bus import BusDevice, MmioBus, Placement, PortBus


class DeviceManager:
    def __init__(self) -> None:
        self.io = PortBus()
        self.mmio = MmioBus()

    def add_io(self, name: str, device: BusDevice, base: int, length: int) -> Placement:
        return self.io.insert(device, base, length, name)

    def add_mmio(self, name: str, device: BusDevice, base: int, length: int) -> Placement:
        return self.mmio.insert(device, base, length, name)

    def describe(self) -> str:
        lines = [f"io   {p}" for p in self.io.placements()]
        lines += [f"mmio {p}" for p in self.mmio.placements()]
        return "\n".join(lines)
