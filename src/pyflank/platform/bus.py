"""The port-I/O bus: which device answers which port."""

from __future__ import annotations

from typing import Protocol


class PortDevice(Protocol):
    def handles(self, port: int) -> bool: ...
    def io_read(self, port: int, size: int) -> int: ...
    def io_write(self, port: int, size: int, value: int) -> None: ...


class PortBus:
    """Devices in attach order; ports nobody claims read as all ones and drop writes."""

    def __init__(self, *devices: PortDevice) -> None:
        self.devices: list[PortDevice] = list(devices)

    def attach(self, device: PortDevice) -> None:
        self.devices.append(device)

    def _device(self, port: int) -> PortDevice | None:
        for device in self.devices:
            if device.handles(port):
                return device
        return None

    def io_read(self, port: int, size: int) -> int:
        device = self._device(port)
        if device is None:
            return (1 << (8 * size)) - 1
        return device.io_read(port, size)

    def io_write(self, port: int, size: int, value: int) -> None:
        device = self._device(port)
        if device is not None:
            device.io_write(port, size, value)
