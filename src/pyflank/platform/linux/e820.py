"""The guest's physical memory map, as the e820 table and PVH's memmap both carry it.

The platform has RAM at ``[0, size)`` with the PC's legacy hole: usable below the EBDA
(0x9FC00), reserved from there to 1 MiB (EBDA, VGA window, option and BIOS ROMs), usable
from 1 MiB to the end of RAM.  RAM stays below the 32-bit MMIO hole (3 GiB).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

RAM, RESERVED = 1, 2  # E820_TYPE_RAM, E820_TYPE_RESERVED
EBDA_START: Final = 0x9FC00
HIGH_MEMORY: Final = 0x100000
MMIO_HOLE: Final = 0xC000_0000
ENTRY = struct.Struct("<QQI")  # boot_params.e820_table[]: addr, size, type


@dataclass(frozen=True)
class Region:
    address: int
    size: int
    kind: int

    @property
    def end(self) -> int:
        return self.address + self.size


def memory_map(ram_size: int) -> tuple[Region, ...]:
    if ram_size <= HIGH_MEMORY:
        raise ValueError(f"{ram_size:#x} bytes of RAM: a Linux guest needs more than 1 MiB")
    if ram_size > MMIO_HOLE:
        raise ValueError(f"{ram_size:#x} bytes of RAM: at most 3 GiB (below the MMIO hole)")
    return (
        Region(0, EBDA_START, RAM),
        Region(EBDA_START, HIGH_MEMORY - EBDA_START, RESERVED),
        Region(HIGH_MEMORY, ram_size - HIGH_MEMORY, RAM),
    )


def usable_top(regions: tuple[Region, ...]) -> int:
    return max(r.end for r in regions if r.kind == RAM)
