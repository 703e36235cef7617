"""The bzImage setup header (Linux's Documentation/arch/x86/boot.rst), as one field table.

``parse`` checks what a 64-bit direct boot relies on: the boot-sector signature, the
"HdrS" magic, protocol 2.06 or later (``cmdline_size``), a relocatable kernel (2.05)
that can be entered in 64-bit mode (``xloadflags``, 2.12).  Fields a protocol version
does not have read as zero.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

SETUP_HEADER_OFFSET: Final = 0x1F1
BOOT_FLAG: Final = 0xAA55
HEADER_MAGIC: Final = 0x53726448  # "HdrS"
MIN_PROTOCOL: Final = 0x0206
LOADED_HIGH, KEEP_SEGMENTS, CAN_USE_HEAP = 0x01, 0x40, 0x80
XLF_KERNEL_64, XLF_CAN_BE_LOADED_ABOVE_4G = 0x01, 0x02

# (name, offset in the image and in boot_params, struct format, protocol that added it)
FIELDS: Final = (
    ("setup_sects", 0x1F1, "B", 0x0000),
    ("root_flags", 0x1F2, "H", 0x0000),
    ("syssize", 0x1F4, "I", 0x0204),
    ("ram_size", 0x1F8, "H", 0x0000),
    ("vid_mode", 0x1FA, "H", 0x0000),
    ("root_dev", 0x1FC, "H", 0x0000),
    ("boot_flag", 0x1FE, "H", 0x0000),
    ("jump", 0x200, "H", 0x0200),
    ("header", 0x202, "I", 0x0200),
    ("version", 0x206, "H", 0x0200),
    ("realmode_swtch", 0x208, "I", 0x0200),
    ("start_sys_seg", 0x20C, "H", 0x0200),
    ("kernel_version", 0x20E, "H", 0x0200),
    ("type_of_loader", 0x210, "B", 0x0200),
    ("loadflags", 0x211, "B", 0x0200),
    ("setup_move_size", 0x212, "H", 0x0200),
    ("code32_start", 0x214, "I", 0x0200),
    ("ramdisk_image", 0x218, "I", 0x0200),
    ("ramdisk_size", 0x21C, "I", 0x0200),
    ("bootsect_kludge", 0x220, "I", 0x0200),
    ("heap_end_ptr", 0x224, "H", 0x0201),
    ("ext_loader_ver", 0x226, "B", 0x0202),
    ("ext_loader_type", 0x227, "B", 0x0202),
    ("cmd_line_ptr", 0x228, "I", 0x0202),
    ("initrd_addr_max", 0x22C, "I", 0x0203),
    ("kernel_alignment", 0x230, "I", 0x0205),
    ("relocatable_kernel", 0x234, "B", 0x0205),
    ("min_alignment", 0x235, "B", 0x020A),
    ("xloadflags", 0x236, "H", 0x020C),
    ("cmdline_size", 0x238, "I", 0x0206),
    ("hardware_subarch", 0x23C, "I", 0x0207),
    ("hardware_subarch_data", 0x240, "Q", 0x0207),
    ("payload_offset", 0x248, "I", 0x0208),
    ("payload_length", 0x24C, "I", 0x0208),
    ("setup_data", 0x250, "Q", 0x0209),
    ("pref_address", 0x258, "Q", 0x020A),
    ("init_size", 0x260, "I", 0x020A),
    ("handover_offset", 0x264, "I", 0x020B),
    ("kernel_info_offset", 0x268, "I", 0x020F),
)
LAYOUT: Final = {name: (offset, fmt) for name, offset, fmt, _ in FIELDS}


class BootProtocolError(ValueError):
    """The image cannot be booted this way (the message says why)."""


@dataclass(frozen=True)
class SetupHeader:
    fields: dict[str, int]
    raw: bytes  # the header bytes as the image has them, 0x1F1 to its end
    kernel_release: str  # the string kernel_version points at

    def __getattr__(self, name: str) -> int:
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(name) from None

    @property
    def protocol(self) -> str:
        return f"{self.fields['version'] >> 8}.{self.fields['version'] & 0xFF:02d}"

    @property
    def setup_size(self) -> int:
        """Bytes of real-mode setup before the protected-mode kernel (boot sector too)."""
        return ((self.fields["setup_sects"] or 4) + 1) * 512

    @property
    def entry_64(self) -> int:
        """The 64-bit entry's offset from the protected-mode kernel's load address."""
        return 0x200


def parse(image: bytes) -> SetupHeader:
    if len(image) < 0x300:
        raise BootProtocolError(f"{len(image)} bytes is too short for a bzImage")
    fields = {}
    for name, offset, fmt, _ in FIELDS:
        (fields[name],) = struct.unpack_from("<" + fmt, image, offset)
    if fields["boot_flag"] != BOOT_FLAG or fields["header"] != HEADER_MAGIC:
        raise BootProtocolError("not a bzImage: no 0xAA55 boot flag and 'HdrS' header")
    version = fields["version"]
    for name, _, _, since in FIELDS:
        if version < since:
            fields[name] = 0
    end = 0x202 + (fields["jump"] >> 8)  # the header's end, from the jump's displacement
    header = SetupHeader(fields, image[SETUP_HEADER_OFFSET:end], _release(image, fields))
    if version < MIN_PROTOCOL:
        raise BootProtocolError(f"boot protocol {header.protocol}: 2.06 or later is needed")
    if not fields["loadflags"] & LOADED_HIGH:
        raise BootProtocolError("a zImage (loaded low) cannot be booted; use a bzImage")
    if len(image) <= header.setup_size:
        raise BootProtocolError("the image ends before its protected-mode kernel")
    return header


def _release(image: bytes, fields: dict[str, int]) -> str:
    pointer = fields["kernel_version"]
    if not pointer:
        return ""
    start = pointer + 0x200
    text = image[start : image.find(b"\0", start, start + 256)]
    return text.decode("ascii", "replace")
