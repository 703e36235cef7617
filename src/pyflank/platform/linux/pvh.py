"""The PVH entry for an ELF ``vmlinux``: the Xen note that names it, ``hvm_start_info``.

The kernel says where to enter in a ``XEN_ELFNOTE_PHYS32_ENTRY`` note (owner "Xen");
it is entered in 32-bit protected mode with paging off and EBX pointing at an
``hvm_start_info`` (xen/include/public/arch-x86/hvm/start_info.h, version 1): the command
line, the initrd as module 0, and the memory map.  Segments load at their physical
addresses.
"""

from __future__ import annotations

import io
import struct
from typing import Final

from elftools.elf.elffile import ELFFile
from elftools.elf.segments import NoteSegment

from pyflank.memory import GuestPhysicalMemory
from pyflank.platform.linux.bzimage import LinuxBoot, place_initrd, write_cmdline
from pyflank.platform.linux.e820 import memory_map, usable_top
from pyflank.platform.linux.entry import protected_mode_entry
from pyflank.platform.linux.layout import LinuxLayout
from pyflank.platform.linux.setup_header import BootProtocolError
from pyflank.platform.loader import LoadError, load_elf

XEN_ELFNOTE_PHYS32_ENTRY: Final = 18
START_INFO_MAGIC: Final = 0x336EC578
START_INFO = struct.Struct("<IIIIQQQQII")  # magic, version, flags, nr_modules, modlist,
# cmdline, rsdp, memmap paddrs, memmap entries, reserved
MODULE = struct.Struct("<QQQQ")  # paddr, size, cmdline paddr, reserved
MEMMAP_ENTRY = struct.Struct("<QQII")  # addr, size, type, reserved
MODLIST_OFFSET, MEMMAP_OFFSET = 0x40, 0x80
COMMAND_LINE_SIZE: Final = 2048 - 1  # x86's COMMAND_LINE_SIZE, without the NUL


def phys32_entry(vmlinux: bytes) -> int | None:
    """The PVH entry point the kernel's notes give, or None (no PVH support)."""
    elf = ELFFile(io.BytesIO(vmlinux))
    for segment in elf.iter_segments():
        if not isinstance(segment, NoteSegment):
            continue
        for note in segment.iter_notes():
            # pyelftools leaves the types of notes it does not know as numbers
            if note["n_name"] == "Xen" and str(note["n_type"]) == str(XEN_ELFNOTE_PHYS32_ENTRY):
                desc = note["n_desc"]
                raw = desc if isinstance(desc, bytes) else desc.encode("latin-1")
                return int.from_bytes(raw[:4], "little")
    return None


def load_pvh(
    memory: GuestPhysicalMemory,
    vmlinux: bytes,
    *,
    cmdline: str,
    initrd: bytes | None = None,
    layout: LinuxLayout | None = None,
) -> LinuxBoot:
    layout = layout or LinuxLayout()
    try:
        entry_point = phys32_entry(vmlinux)
        if entry_point is None:
            raise BootProtocolError("this vmlinux has no PVH entry (XEN_ELFNOTE_PHYS32_ENTRY)")
        loaded = load_elf(memory, vmlinux, physical=True)
    except LoadError as exc:
        raise BootProtocolError(str(exc)) from exc
    regions = memory_map(memory.size)
    kernel_start = min(gpa for gpa, _ in loaded.segments)
    kernel_end = max(gpa + size for gpa, size in loaded.segments)
    address = write_cmdline(memory, layout, cmdline, COMMAND_LINE_SIZE)
    placed = None
    modules = 0
    if initrd is not None:
        placed = place_initrd(memory, initrd, kernel_end, usable_top(regions) - 1)
        memory.write(layout.start_info + MODLIST_OFFSET, MODULE.pack(*placed, 0, 0))
        modules = 1
    for index, region in enumerate(regions):
        memory.write(
            layout.start_info + MEMMAP_OFFSET + index * MEMMAP_ENTRY.size,
            MEMMAP_ENTRY.pack(region.address, region.size, region.kind, 0),
        )
    info = START_INFO.pack(
        START_INFO_MAGIC, 1, 0, modules, layout.start_info + MODLIST_OFFSET, address, 0,
        layout.start_info + MEMMAP_OFFSET, len(regions), 0,
    )  # fmt: skip
    memory.write(layout.start_info, info)
    registers = {"rbx": layout.start_info}
    entry = protected_mode_entry(memory, layout, entry_point, registers, "pvh")
    return LinuxBoot(
        entry,
        (kernel_start, kernel_end - kernel_start),
        placed,
        cmdline,
        address,
        layout.start_info,
        regions,
    )
