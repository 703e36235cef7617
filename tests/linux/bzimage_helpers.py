"""A synthetic bzImage and ELF vmlinux, built field by field from the protocol's tables."""

from __future__ import annotations

import struct

from pyflank.platform.linux.setup_header import LAYOUT

KERNEL = bytes(range(256)) * 64  # 16 KiB of recognisable protected-mode kernel


def bzimage(**overrides: int) -> bytes:
    fields = {
        "setup_sects": 1, "boot_flag": 0xAA55, "jump": 0x66EB, "header": 0x53726448,
        "version": 0x020F, "loadflags": 0x01, "code32_start": 0x100000,
        "initrd_addr_max": 0x7FFF_FFFF, "kernel_alignment": 0x200000,
        "relocatable_kernel": 1, "xloadflags": 0x03, "cmdline_size": 0x7FF,
        "pref_address": 0x1000000, "init_size": 0x800000, "kernel_version": 0x300 - 0x200,
    }  # fmt: skip
    fields.update(overrides)
    setup = bytearray(1024)
    for name, value in fields.items():
        offset, fmt = LAYOUT[name]
        struct.pack_into("<" + fmt, setup, offset, value)
    setup[0x300:0x310] = b"6.9.9-test (x)\0\0"
    return bytes(setup) + KERNEL


def elf_with_pvh_note(entry: int, paddr: int = 0x1000000, vaddr: int = 0xFFFFFFFF81000000) -> bytes:
    """An ELF64 vmlinux-alike: one PT_LOAD at ``paddr`` (linked high), one PT_NOTE."""
    note = struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry)
    header_size, ph_size = 64, 56
    data_offset = header_size + 2 * ph_size
    load = struct.pack(
        "<IIQQQQQQ", 1, 5, data_offset, vaddr, paddr, len(KERNEL), len(KERNEL) + 0x1000, 0x1000
    )
    notes = struct.pack("<IIQQQQQQ", 4, 4, data_offset + len(KERNEL), 0, 0, len(note), len(note), 4)
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, vaddr, header_size, 0, 0, header_size, ph_size, 2, 64, 0, 0
    )
    return header + load + notes + KERNEL + note
