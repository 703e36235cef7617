"""The range-mapped buses and the device manager: offsets, overlaps, unclaimed accesses."""

from __future__ import annotations

import logging

import pytest

from pyflank.platform.devices.bus import BusError, MmioBus, PortBus, Window
from pyflank.platform.devices.manager import DeviceManager


class Recorder:
    def __init__(self) -> None:
        self.accesses: list[tuple[str, int, int, int | None]] = []

    def read(self, offset: int, size: int) -> int:
        self.accesses.append(("r", offset, size, None))
        return 0x40 + offset

    def write(self, offset: int, size: int, value: int) -> None:
        self.accesses.append(("w", offset, size, value))


@pytest.mark.parametrize("bus_type", [PortBus, MmioBus])
def test_devices_see_offsets_not_addresses(bus_type: type[PortBus] | type[MmioBus]) -> None:
    bus = bus_type()
    device = Recorder()
    bus.insert(device, 0x3F8, 8, "uart")
    assert bus.read(0x3FD, 1) == 0x45
    bus.write(0x3F8, 2, 0x1234)
    assert device.accesses == [("r", 5, 1, None), ("w", 0, 2, 0x1234)]
    assert bus.find(0x3FF) is not None and bus.find(0x400) is None


def test_overlapping_and_impossible_placements_are_refused() -> None:
    bus = PortBus()
    bus.insert(Recorder(), 0x40, 4, "pit")
    bus.insert(Recorder(), 0x44, 4, "after")  # touching is fine
    for base, length in ((0x43, 1), (0x3E, 4), (0x40, 8), (0x30, 0x20)):
        with pytest.raises(BusError, match="overlaps"):
            bus.insert(Recorder(), base, length, "intruder")
    for base, length in ((0xFFFF, 2), (-1, 1), (0x10, 0)):
        with pytest.raises(BusError, match="not usable"):
            bus.insert(Recorder(), base, length, "bad")
    assert [p.name for p in bus.placements()] == ["pit", "after"]


def test_removed_devices_stop_answering() -> None:
    bus = PortBus()
    device = Recorder()
    bus.insert(device, 0x70, 2)
    assert bus.remove(0x70) is device
    assert bus.read(0x71, 1) == 0xFF
    with pytest.raises(BusError):
        bus.remove(0x70)


def test_unclaimed_reads_float_high_and_each_address_is_logged_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bus = PortBus()
    caplog.set_level(logging.INFO, "pyflank.platform.devices")
    assert bus.io_read(0x2E, 1) == 0xFF and bus.io_read(0x2E, 2) == 0xFFFF
    assert bus.io_read(0xCFC, 4) == 0xFFFF_FFFF
    bus.io_write(0x87, 1, 0)
    bus.io_write(0x87, 1, 1)
    assert bus.unclaimed.counts == {0x2E: 2, 0xCFC: 1, 0x87: 2}
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3 and "0x87" in logged[2] and "write 0x0" in logged[2]


def test_the_unclaimed_log_is_bounded(caplog: pytest.LogCaptureFixture) -> None:
    bus = MmioBus()
    bus.unclaimed.log_limit, bus.unclaimed.track_limit = 4, 8
    caplog.set_level(logging.INFO, "pyflank.platform.devices")
    for address in range(0, 0x10000, 0x1000):
        bus.read(address, 4)
    assert len(caplog.records) == 5  # four addresses, then "counted, not logged"
    assert len(bus.unclaimed.counts) == 8 and bus.unclaimed.untracked == 8


def test_a_window_shows_one_device_at_two_places() -> None:
    manager = DeviceManager()
    device = Recorder()
    manager.add_io("kbc-data", Window(device, 0), 0x60, 1)
    manager.add_io("kbc-command", Window(device, 4), 0x64, 1)
    manager.io.io_write(0x64, 1, 0xAA)
    manager.io.io_read(0x60, 1)
    assert device.accesses == [("w", 4, 1, 0xAA), ("r", 0, 1, None)]
    assert manager.describe().splitlines() == [
        "io   0x0060-0x0060 kbc-data",
        "io   0x0064-0x0064 kbc-command",
    ]
