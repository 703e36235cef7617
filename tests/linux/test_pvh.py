"""The PVH entry (ELF vmlinux, hvm_start_info) and the vmlinux inside a bzImage."""

from __future__ import annotations

import ctypes
import os
import struct
from collections import Counter

import pytest
from bzimage_helpers import KERNEL, bzimage, elf_with_pvh_note
from linux_runs import boot_to_power_off

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.exit_handler.unrestricted import UnrestrictedGuest
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.memory import GuestPhysicalMemory
from pyflank.platform.linux import payload
from pyflank.platform.linux.assets import LinuxAssets, vmlinux
from pyflank.platform.linux.initramfs import MARKER
from pyflank.platform.linux.layout import LinuxLayout
from pyflank.platform.linux.pvh import (
    MEMMAP_OFFSET,
    MODLIST_OFFSET,
    START_INFO,
    START_INFO_MAGIC,
    load_pvh,
    phys32_entry,
)
from pyflank.platform.linux.setup_header import BootProtocolError
from pyflank.vmm import Vm

MIB = 1 << 20
LAYOUT = LinuxLayout()


def test_the_pvh_note_names_the_entry_and_start_info_describes_the_machine() -> None:
    image = elf_with_pvh_note(entry=0x1000850)
    assert phys32_entry(image) == 0x1000850
    memory = GuestPhysicalMemory(64 * MIB)
    boot = load_pvh(memory, image, cmdline="console=ttyS0", initrd=b"RD" * 100)
    assert memory.read(0x1000000, len(KERNEL)) == KERNEL  # at the physical address
    assert memory.read(0x1000000 + len(KERNEL), 0x1000) == bytes(0x1000)  # bss
    entry = boot.entry
    assert entry.rip == 0x1000850 and entry.registers == {"rbx": LAYOUT.start_info}
    assert not entry.long_mode and entry.cr0 == 0x11 and entry.rflags == 0x2
    assert (
        entry.segments["cs"].access_rights == 0xC09B
        and entry.segments["tr"].access_rights & 0xF == 11
    )
    info = START_INFO.unpack(memory.read(LAYOUT.start_info, START_INFO.size))
    magic, version, _flags, modules, modlist, cmdline, rsdp, memmap, entries, _ = info
    assert (magic, version, modules, rsdp) == (START_INFO_MAGIC, 1, 1, 0)
    assert memory.read(cmdline, 14) == b"console=ttyS0\0"
    assert modlist == LAYOUT.start_info + MODLIST_OFFSET
    paddr, size = struct.unpack_from("<QQ", memory.read(modlist, 16))
    assert memory.read(paddr, size) == b"RD" * 100 and paddr % 0x1000 == 0
    assert memmap == LAYOUT.start_info + MEMMAP_OFFSET and entries == 3
    assert struct.unpack("<QQII", memory.read(memmap + 48, 24)) == (MIB, 63 * MIB, 1, 0)


def test_an_elf_without_the_note_is_refused() -> None:
    image = bytearray(elf_with_pvh_note(entry=0))
    image[-12:-8] = struct.pack("<I", 5)  # the note's type: not PHYS32_ENTRY
    with pytest.raises(BootProtocolError, match="no PVH entry"):
        load_pvh(GuestPhysicalMemory(64 * MIB), bytes(image), cmdline="")


def _lz4_compress(data: bytes) -> bytes:
    library = payload._liblz4()
    if library is None:
        pytest.skip("no liblz4 to compress the test data with")
    library.LZ4_compress_default.argtypes = [
        ctypes.c_char_p,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_int,
    ]
    out = ctypes.create_string_buffer(len(data) * 2 + 64)
    size = library.LZ4_compress_default(data, out, len(data), len(out))
    return out.raw[:size]


def test_legacy_lz4_decodes_the_same_natively_and_in_python() -> None:
    data = (b"pyflank " * 3000 + os.urandom(2000) + b"\0" * 5000) * 3
    block = _lz4_compress(data)
    stream = struct.pack("<II", payload.LZ4_LEGACY_MAGIC, len(block)) + block
    stream += struct.pack("<I", len(data))  # the build's size trailer
    assert payload.lz4_legacy(stream) == data
    assert payload.lz4_legacy(stream, native=False) == data


def test_a_bzimage_without_a_known_payload_is_refused() -> None:
    image = bzimage(payload_offset=0, payload_length=16)
    with pytest.raises(BootProtocolError, match="not supported"):
        payload.extract_vmlinux(image)


def test_debians_vmlinux_has_a_pvh_entry_and_loads(linux_assets: LinuxAssets) -> None:
    elf = vmlinux(linux_assets.kernel).read_bytes()
    entry = phys32_entry(elf)
    assert entry is not None and 0x1000000 <= entry < 0x4000000
    memory = GuestPhysicalMemory(256 * MIB)
    boot = load_pvh(
        memory, elf, cmdline="console=ttyS0", initrd=linux_assets.initramfs.read_bytes()
    )
    assert boot.kernel[0] == 0x1000000 and boot.initrd is not None


class CountingUnrestricted(UnrestrictedGuest):
    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[int] = Counter()

    def handle_exit(self, reason: int) -> None:
        self.counts[reason & 0xFFFF] += 1
        super().handle_exit(reason)


def test_linux_boots_to_init_by_its_pvh_entry(linux_assets: LinuxAssets) -> None:
    """The ELF vmlinux entered as PVH defines (32-bit, paging off, EBX at hvm_start_info):
    the kernel turns long mode on under an unrestricted guest and reaches /init."""
    vm, _, text = boot_to_power_off(
        linux_assets, CountingUnrestricted, kernel=vmlinux(linux_assets.kernel), timeout=120
    )
    assert f"{MARKER} uptime" in text and linux_assets.kernel.release in text
    handler = vm.vcpus[0].handler
    assert isinstance(handler, CountingUnrestricted)
    # Linux's PVH code writes CR0 without NE, its 64-bit code with it: one exit.
    assert handler.counts[ExitReason.CONTROL_REGISTER_ACCESS] == 1
    assert handler.counts[ExitReason.CPUID] > 0 and handler.counts[ExitReason.WRMSR] > 0


def test_a_vmlinux_needs_a_handler_that_runs_an_unrestricted_guest(
    linux_assets: LinuxAssets,
) -> None:
    class Plain(ExitHandlerIntelX64):
        pass

    with pytest.raises(ValueError, match="unrestricted guest"):
        Vm.boot_linux(vmlinux(linux_assets.kernel), handler=Plain)
