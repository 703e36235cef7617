"""Range-mapped buses: which device answers an address, and at which offset.

One bus per address space (port I/O, MMIO).  The bus refuses overlapping placements,
hands each access to the device with the offset inside its range, and answers an
unclaimed address as the PC does: reads float high (all ones), writes go nowhere, and
each such address is logged once (``UnclaimedAccesses``).
"""

from __future__ import annotations

import bisect
import logging
from dataclasses import dataclass
from typing import Final, Protocol

log = logging.getLogger("pyflank.platform.devices")

PORT_SPACE: Final = 0x1_0000
MMIO_SPACE: Final = 1 << 52


class BusDevice(Protocol):
    """A device as a bus sees it: registers at offsets from where it was placed."""

    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...


class BusError(ValueError):
    """A placement the bus refuses (empty, outside the address space, overlapping)."""


@dataclass(frozen=True)
class Placement:
    name: str
    base: int
    length: int
    device: BusDevice

    @property
    def end(self) -> int:  # exclusive
        return self.base + self.length

    def __str__(self) -> str:
        return f"{self.base:#06x}-{self.end - 1:#06x} {self.name}"


def all_ones(size: int) -> int:
    return (1 << (8 * size)) - 1


class UnclaimedAccesses:
    """Counts accesses nobody claims; logs the first at each address, up to ``log_limit``
    addresses (a guest probing a whole range must not flood the log)."""

    def __init__(self, space: str, *, log_limit: int = 64, track_limit: int = 4096) -> None:
        self.space = space
        self.log_limit = log_limit
        self.track_limit = track_limit
        self.counts: dict[int, int] = {}
        self.untracked = 0  # accesses at addresses beyond track_limit distinct ones

    def record(self, address: int, size: int, value: int | None) -> None:
        count = self.counts.get(address)
        if count is not None:
            self.counts[address] = count + 1
            return
        if len(self.counts) >= self.track_limit:
            self.untracked += 1
            return
        self.counts[address] = 1
        seen = len(self.counts)
        if seen <= self.log_limit:
            what = "read" if value is None else f"write {value:#x}"
            log.info("unclaimed %s %s of %d byte(s) at %#x", self.space, what, size, address)
            if seen == self.log_limit:
                log.info("further unclaimed %s addresses are counted, not logged", self.space)


class Bus:
    """Placements sorted by base; lookup by bisection."""

    def __init__(self, space: str, size: int) -> None:
        self.space = space
        self.size = size
        self.unclaimed = UnclaimedAccesses(space)
        self._bases: list[int] = []
        self._placements: list[Placement] = []

    def insert(
        self, device: BusDevice, base: int, length: int, name: str | None = None
    ) -> Placement:
        """Place ``device`` at ``[base, base + length)``; ``BusError`` on any overlap."""
        label = name or type(device).__name__
        if length <= 0 or base < 0 or base + length > self.size:
            raise BusError(f"{label}: {self.space} range {base:#x}+{length:#x} is not usable")
        index = bisect.bisect_right(self._bases, base)
        for neighbour in self._placements[max(0, index - 1) : index + 1]:
            if base < neighbour.end and neighbour.base < base + length:
                raise BusError(
                    f"{label} at {base:#x}+{length:#x} overlaps {neighbour.name} "
                    f"({neighbour.base:#x}+{neighbour.length:#x})"
                )
        placement = Placement(label, base, length, device)
        self._bases.insert(index, base)
        self._placements.insert(index, placement)
        return placement

    def remove(self, base: int) -> BusDevice:
        index = bisect.bisect_left(self._bases, base)
        if index == len(self._bases) or self._bases[index] != base:
            raise BusError(f"no device placed at {self.space} {base:#x}")
        del self._bases[index]
        return self._placements.pop(index).device

    def placements(self) -> tuple[Placement, ...]:
        return tuple(self._placements)

    def find(self, address: int) -> Placement | None:
        index = bisect.bisect_right(self._bases, address) - 1
        if index >= 0:
            placement = self._placements[index]
            if address < placement.end:
                return placement
        return None

    def read(self, address: int, size: int) -> int:
        placement = self.find(address)
        if placement is None:
            self.unclaimed.record(address, size, None)
            return all_ones(size)
        return placement.device.read(address - placement.base, size)

    def write(self, address: int, size: int, value: int) -> None:
        placement = self.find(address)
        if placement is None:
            self.unclaimed.record(address, size, value)
            return
        placement.device.write(address - placement.base, size, value)


class PortBus(Bus):
    """The 64 KiB port-I/O space, with a per-port index: every IN/OUT looks it up, so the
    lookup is one dict access.  ``io_read``/``io_write`` are what the backends call."""

    def __init__(self) -> None:
        super().__init__("port", PORT_SPACE)
        self._index: dict[int, Placement] = {}

    def insert(
        self, device: BusDevice, base: int, length: int, name: str | None = None
    ) -> Placement:
        placement = super().insert(device, base, length, name)
        self._index.update(dict.fromkeys(range(base, base + length), placement))
        return placement

    def remove(self, base: int) -> BusDevice:
        device = super().remove(base)
        self._index = {p: pl for p, pl in self._index.items() if pl.base != base}
        return device

    def find(self, address: int) -> Placement | None:
        return self._index.get(address)

    def read(self, address: int, size: int) -> int:
        placement = self._index.get(address)
        if placement is None:
            self.unclaimed.record(address, size, None)
            return (1 << (8 * size)) - 1
        return placement.device.read(address - placement.base, size)

    def write(self, address: int, size: int, value: int) -> None:
        placement = self._index.get(address)
        if placement is None:
            self.unclaimed.record(address, size, value)
            return
        placement.device.write(address - placement.base, size, value)

    io_read = read
    io_write = write


class MmioBus(Bus):
    def __init__(self) -> None:
        super().__init__("mmio", MMIO_SPACE)


class Window:
    """A slice of one device's registers placed on its own: a device with registers in
    several ranges (the i8042 at 0x60 and 0x64) is one object seen through windows."""

    __slots__ = ("device", "offset")

    def __init__(self, device: BusDevice, offset: int) -> None:
        self.device = device
        self.offset = offset

    def read(self, offset: int, size: int) -> int:
        return self.device.read(self.offset + offset, size)

    def write(self, offset: int, size: int, value: int) -> None:
        self.device.write(self.offset + offset, size, value)
