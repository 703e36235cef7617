"""The boot_params "zero page" a loader hands the kernel (arch/x86/include/uapi/asm/bootparam.h).

Zeroed, then the image's own setup header copied in at 0x1F1 (as the protocol asks of a
64-bit loader), then what the loader fills: type_of_loader, the command line pointer,
the initrd, and the e820 map.  Pointers above 4 GiB go in the ``ext_*`` fields.
"""

from __future__ import annotations

import struct
from typing import Final

from pyflank.platform.linux.e820 import ENTRY, Region
from pyflank.platform.linux.setup_header import LAYOUT, SETUP_HEADER_OFFSET, SetupHeader

BOOT_PARAMS_SIZE: Final = 0x1000
EXT_RAMDISK_IMAGE, EXT_RAMDISK_SIZE, EXT_CMD_LINE_PTR = 0x0C0, 0x0C4, 0x0C8
E820_ENTRIES, E820_TABLE, E820_MAX = 0x1E8, 0x2D0, 128
UNDEFINED_LOADER: Final = 0xFF  # boot.rst: a loader without an assigned ID


def _put(page: bytearray, name: str, value: int) -> None:
    """A setup-header field of the zero page (it sits where the image has it)."""
    offset, fmt = LAYOUT[name]
    struct.pack_into("<" + fmt, page, offset, value)


def _split(page: bytearray, low_field: str, high_offset: int, value: int) -> None:
    _put(page, low_field, value & 0xFFFF_FFFF)
    struct.pack_into("<I", page, high_offset, value >> 32)


def build(
    header: SetupHeader,
    *,
    cmdline: int,
    e820: tuple[Region, ...],
    initrd: tuple[int, int] | None = None,
) -> bytes:
    """The zero page: ``cmdline`` is the command line's address, ``initrd`` (address,
    size) the initial RAM disk's."""
    if len(e820) > E820_MAX:
        raise ValueError(f"{len(e820)} e820 entries: boot_params holds {E820_MAX}")
    page = bytearray(BOOT_PARAMS_SIZE)
    page[SETUP_HEADER_OFFSET : SETUP_HEADER_OFFSET + len(header.raw)] = header.raw
    _put(page, "type_of_loader", UNDEFINED_LOADER)
    _split(page, "cmd_line_ptr", EXT_CMD_LINE_PTR, cmdline)
    if initrd is not None:
        _split(page, "ramdisk_image", EXT_RAMDISK_IMAGE, initrd[0])
        _split(page, "ramdisk_size", EXT_RAMDISK_SIZE, initrd[1])
    page[E820_ENTRIES] = len(e820)
    for index, region in enumerate(e820):
        offset = E820_TABLE + index * ENTRY.size
        ENTRY.pack_into(page, offset, region.address, region.size, region.kind)
    return bytes(page)
