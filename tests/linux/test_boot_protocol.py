"""The Linux x86 boot protocol: the setup header, the zero page, the 64-bit entry state."""

from __future__ import annotations

import struct

import pytest
from bzimage_helpers import KERNEL, bzimage

from pyflank.intel_x64 import checks
from pyflank.intel_x64.checks import bits as b
from pyflank.memory import GuestPhysicalMemory
from pyflank.platform.linux import e820
from pyflank.platform.linux.assets import LinuxAssets
from pyflank.platform.linux.bzimage import load_bzimage, load_vmlinux
from pyflank.platform.linux.cmdline import PLATFORM_ARGUMENTS, compose
from pyflank.platform.linux.entry import BOOT_CS, BOOT_DS, BOOT_TSS
from pyflank.platform.linux.layout import LinuxLayout
from pyflank.platform.linux.payload import extract_vmlinux
from pyflank.platform.linux.setup_header import BootProtocolError, parse
from pyflank.vmm import Vm

MIB = 1 << 20
LAYOUT = LinuxLayout()


def test_the_setup_header_of_a_synthetic_image() -> None:
    header = parse(bzimage())
    assert header.protocol == "2.15" and header.kernel_release.startswith("6.9.9-test")
    assert header.setup_size == 1024 and header.relocatable_kernel == 1
    assert len(header.raw) == 0x202 + 0x66 - 0x1F1


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        (b"\0" * 100, "too short"),
        (bzimage(header=0), "not a bzImage"),
        (bzimage(version=0x0204), "2.06 or later"),
        (bzimage(loadflags=0), "zImage"),
        (bzimage()[:1024], "ends before"),
    ],
)
def test_images_that_cannot_be_booted_say_why(image: bytes, reason: str) -> None:
    with pytest.raises(BootProtocolError, match=reason):
        parse(image)


def test_fields_newer_than_the_protocol_read_as_zero() -> None:
    header = parse(bzimage(version=0x0206, pref_address=0x1000000, init_size=5))
    assert header.pref_address == 0 and header.init_size == 0 and header.cmdline_size == 0x7FF


def test_loading_a_bzimage_fills_the_zero_page_as_boot_rst_asks() -> None:
    memory = GuestPhysicalMemory(64 * MIB)
    initrd = b"INITRD" * 1000
    boot = load_bzimage(memory, bzimage(), cmdline="console=ttyS0", initrd=initrd)
    assert memory.read(0x1000000, len(KERNEL)) == KERNEL  # at pref_address
    assert boot.kernel == (0x1000000, 0x800000)
    page = memory.read(LAYOUT.boot_params, 0x1000)
    image_bytes = bzimage()
    assert page[0x1F1:0x210] == image_bytes[0x1F1:0x210]  # the image's own header ...
    assert page[0x22C:0x268] == image_bytes[0x22C:0x268]  # ... around what the loader fills
    assert page[0x210] == 0xFF  # type_of_loader: undefined
    (cmd_line_ptr,) = struct.unpack_from("<I", page, 0x228)
    assert memory.read(cmd_line_ptr, 14) == b"console=ttyS0\0"
    image, size = struct.unpack_from("<II", page, 0x218)
    assert size == len(initrd) and image % 0x1000 == 0 and memory.read(image, size) == initrd
    assert image + size <= 64 * MIB and image >= 0x1000000 + 0x800000
    entries = page[0x1E8]
    table = [struct.unpack_from("<QQI", page, 0x2D0 + 20 * i) for i in range(entries)]
    assert table == [(0, 0x9FC00, 1), (0x9FC00, 0x60400, 2), (MIB, 63 * MIB, 1)]


def test_the_initrd_respects_initrd_addr_max() -> None:
    memory = GuestPhysicalMemory(256 * MIB)
    boot = load_bzimage(memory, bzimage(initrd_addr_max=0x2FF_FFFF), cmdline="", initrd=b"x" * 5000)
    assert boot.initrd is not None and boot.initrd[0] + 5000 <= 0x300_0000
    with pytest.raises(BootProtocolError, match="does not fit"):
        load_bzimage(memory, bzimage(initrd_addr_max=0x17F_FFFF), cmdline="", initrd=b"x" * MIB)


def test_the_64_bit_entry_state_passes_every_vm_entry_check() -> None:
    vm = Vm(memory_size=64 * MIB)
    boot = load_bzimage(vm.memory, bzimage(), cmdline="console=ttyS0")
    entry, vcpu = boot.entry, vm.vcpus[0]
    assert entry.long_mode and entry.rip == 0x1000000 + 0x200
    assert entry.registers == {"rsi": LAYOUT.boot_params}
    assert entry.cr0 & b.CR0_PG and entry.cr4 & b.CR4_PAE and entry.efer & b.EFER_LMA
    assert not entry.rflags & b.RFLAGS_IF
    assert entry.segments["cs"].selector == BOOT_CS and entry.segments["ss"].selector == BOOT_DS
    for field, value in entry.vmcs_fields().items():
        vcpu.vmcs.write(field, value)
    assert checks.check_all(vcpu.vmcs, vcpu.handler.m_cpu) == []
    gdt = vm.memory.read(LAYOUT.gdt, BOOT_TSS + 16)
    (code,) = struct.unpack_from("<Q", gdt, BOOT_CS)
    assert code >> 53 & 1 and code >> 47 & 1  # L and P: a 64-bit code segment
    pml4 = vm.memory.read_u64(entry.cr3)
    pdpt = vm.memory.read_u64(pml4 & ~0xFFF)
    pd = [vm.memory.read_u64((pdpt & ~0xFFF) + 8 * i) for i in range(32)]
    assert [e & ~0xFFF & ((1 << 52) - 1) for e in pd] == [i * 2 * MIB for i in range(32)]
    assert all(e & 0x81 == 0x81 for e in pd)  # present 2 MiB pages: all of RAM, identity


def test_the_32_bit_entry_is_there_for_loaders_that_want_it() -> None:
    memory = GuestPhysicalMemory(64 * MIB)
    boot = load_bzimage(memory, bzimage(), cmdline="", long_mode=False)
    assert not boot.entry.long_mode and boot.entry.rip == 0x1000000
    assert boot.entry.cr0 & b.CR0_PG == 0 and boot.entry.registers == {"rsi": LAYOUT.boot_params}


def test_what_does_not_fit_is_refused() -> None:
    with pytest.raises(BootProtocolError, match="needs 24 MiB"):
        load_bzimage(GuestPhysicalMemory(16 * MIB), bzimage(), cmdline="")
    with pytest.raises(BootProtocolError, match="command line"):
        load_bzimage(GuestPhysicalMemory(64 * MIB), bzimage(), cmdline="x" * 2048)
    with pytest.raises(BootProtocolError, match="64-bit entry"):
        load_bzimage(GuestPhysicalMemory(64 * MIB), bzimage(xloadflags=0), cmdline="")
    with pytest.raises(ValueError, match="3 GiB"):
        e820.memory_map(4 << 30)


def test_the_platform_arguments_follow_what_the_user_passes() -> None:
    line = compose("console=ttyS0")
    assert line.startswith("console=ttyS0 acpi=off ")
    assert {a.split("=")[0] for a in line.split()[1:]} == {a for a, _, _ in PLATFORM_ARGUMENTS}
    assert "tsc_early_khz=3000000" in compose("", tsc_khz=3_000_000)
    assert "lpj=12000000" in compose("", tsc_khz=3_000_000)  # 3 GHz / HZ 250
    mine = compose("console=ttyS0 panic=10 -- init-arg")
    assert "panic=10" in mine and "panic=-1" not in mine
    assert mine.endswith(" -- init-arg") and mine.count("--") == 1


def test_debians_kernel_loads_with_its_own_header(linux_assets: LinuxAssets) -> None:
    image = linux_assets.kernel.bzimage.read_bytes()
    header = parse(image)
    assert header.kernel_release.split()[0] == linux_assets.kernel.release
    assert header.relocatable_kernel and header.xloadflags & 1 and header.init_size
    memory = GuestPhysicalMemory(256 * MIB)
    initrd = linux_assets.initramfs.read_bytes()
    boot = load_bzimage(memory, image, cmdline=compose("console=ttyS0"), initrd=initrd)
    assert boot.entry.rip == header.pref_address + 0x200
    assert boot.initrd is not None and boot.initrd[0] >= sum(boot.kernel)
    with pytest.raises(BootProtocolError, match="MiB of RAM"):
        load_bzimage(GuestPhysicalMemory(32 * MIB), image, cmdline="")


def test_debians_kernel_is_entered_past_its_decompressor(linux_assets: LinuxAssets) -> None:
    image = linux_assets.kernel.bzimage.read_bytes()
    header = parse(image)
    elf = extract_vmlinux(image)
    memory = GuestPhysicalMemory(256 * MIB)
    initrd = linux_assets.initramfs.read_bytes()
    boot = load_vmlinux(memory, image, cmdline=compose("console=ttyS0"), initrd=initrd)
    entry = struct.unpack_from("<Q", elf, 24)[0]  # e_entry: startup_64's physical address
    assert boot.entry.rip == entry == boot.kernel[0] == header.pref_address
    assert boot.entry.long_mode and boot.entry.registers["rsi"] == boot.boot_info
    segment = struct.unpack_from("<Q", elf, 32)[0]  # e_phoff; the first PT_LOAD is .text
    offset = struct.unpack_from("<Q", elf, segment + 8)[0]
    assert memory.read(entry, 64) == elf[offset : offset + 64]
    zero_page = memory.read(boot.boot_info, 4096)
    assert struct.unpack_from("<I", zero_page, 0x228)[0] == boot.cmdline_address
    assert boot.initrd is not None and boot.initrd[0] >= sum(boot.kernel)
    assert struct.unpack_from("<II", zero_page, 0x218) == boot.initrd


def test_the_guest_can_run_the_bzimages_own_decompressor(linux_assets: LinuxAssets) -> None:
    image = linux_assets.kernel.bzimage.read_bytes()
    vm = Vm.boot_linux(image, decompress_in_guest=True)
    assert vm.linux is not None
    assert vm.linux.entry.rip == parse(image).pref_address + 0x200
