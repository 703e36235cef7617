"""Loading a bzImage by the Linux x86 boot protocol: kernel, command line, initrd, zero page.

The protected-mode kernel goes to ``pref_address`` when it is relocatable (where it
would move itself anyway), else to 1 MiB; ``init_size`` bytes from there are the
kernel's.  The initrd goes as high as ``initrd_addr_max`` and RAM allow, page-aligned,
above the kernel.  The entry is the 64-bit one (``xloadflags`` bit 0, at load + 0x200)
or the 32-bit one at the load address; RSI holds the zero page either way.

``load_vmlinux`` boots the same bzImage without its decompressor: the ELF kernel it
carries, decompressed on the host, loaded at its physical addresses and entered at its
own ``startup_64`` with the zero page, as firecracker enters a ``vmlinux``.  The kernel
is then where it was linked (no KASLR of the image), and the guest skips work that is
seconds on a software CPU and tells the handler nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from pyflank.memory import GuestPhysicalMemory
from pyflank.platform.linux import boot_params
from pyflank.platform.linux.e820 import Region, memory_map, usable_top
from pyflank.platform.linux.entry import EntryState, long_mode_entry, protected_mode_entry
from pyflank.platform.linux.layout import LinuxLayout
from pyflank.platform.linux.payload import extract_vmlinux
from pyflank.platform.linux.setup_header import XLF_KERNEL_64, BootProtocolError, SetupHeader, parse
from pyflank.platform.loader import LoadError, load_elf

LOW_LOAD_ADDRESS = 0x100000
_PAGE = 0x1000


@dataclass(frozen=True)
class LinuxBoot:
    """What was put where, and the state the vCPU starts in."""

    entry: EntryState
    kernel: tuple[int, int]  # load address, bytes the kernel may use from there
    initrd: tuple[int, int] | None  # address, size
    cmdline: str
    cmdline_address: int
    boot_info: int  # boot_params (bzImage) or hvm_start_info (PVH)
    memory_map: tuple[Region, ...]
    header: SetupHeader | None = None


def load_address(header: SetupHeader) -> int:
    if header.relocatable_kernel and header.pref_address:
        if header.pref_address % max(header.kernel_alignment, 1):
            raise BootProtocolError("pref_address is not aligned to kernel_alignment")
        return header.pref_address
    return LOW_LOAD_ADDRESS


def write_cmdline(
    memory: GuestPhysicalMemory, layout: LinuxLayout, cmdline: str, limit: int
) -> int:
    data = cmdline.encode()
    if len(data) > min(limit, layout.cmdline_limit - 1):
        raise BootProtocolError(f"the command line has {len(data)} bytes; the kernel takes {limit}")
    memory.write(layout.cmdline, data + b"\0")
    return layout.cmdline


def place_initrd(
    memory: GuestPhysicalMemory, initrd: bytes, lowest: int, highest: int
) -> tuple[int, int]:
    """Put ``initrd`` at the highest page-aligned address with its last byte at or below
    ``highest``, not below ``lowest``."""
    address = (highest + 1 - len(initrd)) & ~(_PAGE - 1)
    if address < lowest:
        raise BootProtocolError(
            f"the {len(initrd)}-byte initrd does not fit between {lowest:#x} and {highest:#x}"
        )
    memory.write(address, initrd)
    return address, len(initrd)


def load_bzimage(
    memory: GuestPhysicalMemory,
    image: bytes,
    *,
    cmdline: str,
    initrd: bytes | None = None,
    layout: LinuxLayout | None = None,
    long_mode: bool = True,
) -> LinuxBoot:
    layout = layout or LinuxLayout()
    header = parse(image)
    if long_mode and not header.xloadflags & XLF_KERNEL_64:
        raise BootProtocolError("this kernel has no 64-bit entry (xloadflags bit 0)")
    regions = memory_map(memory.size)
    kernel = image[header.setup_size :]
    base = load_address(header)
    extent = max(header.init_size, len(kernel))
    if base + extent > usable_top(regions):
        need = (base + extent + (1 << 20) - 1) >> 20
        raise BootProtocolError(f"the kernel needs {need} MiB of RAM; the guest has less")
    memory.write(base, kernel)
    address = write_cmdline(memory, layout, cmdline, header.cmdline_size)
    placed = None
    if initrd is not None:
        highest = min(header.initrd_addr_max or 0x37FF_FFFF, usable_top(regions) - 1)
        placed = place_initrd(memory, initrd, base + extent, highest)
    zero_page = boot_params.build(header, cmdline=address, e820=regions, initrd=placed)
    memory.write(layout.boot_params, zero_page)
    registers = {"rsi": layout.boot_params}
    if long_mode:
        entry = long_mode_entry(memory, layout, base + header.entry_64, registers)
    else:
        entry = protected_mode_entry(memory, layout, base, registers, "linux 32-bit")
    return LinuxBoot(
        entry, (base, extent), placed, cmdline, address, layout.boot_params, regions, header
    )


def load_vmlinux(
    memory: GuestPhysicalMemory,
    image: bytes,
    *,
    cmdline: str,
    initrd: bytes | None = None,
    layout: LinuxLayout | None = None,
) -> LinuxBoot:
    """The bzImage ``image``'s kernel entered past its decompressor (module docstring)."""
    layout = layout or LinuxLayout()
    header = parse(image)
    if not header.xloadflags & XLF_KERNEL_64:
        raise BootProtocolError("this kernel has no 64-bit entry (xloadflags bit 0)")
    vmlinux = extract_vmlinux(image)
    regions = memory_map(memory.size)
    try:
        loaded = load_elf(memory, vmlinux, physical=True)
    except LoadError as exc:
        raise BootProtocolError(f"the kernel inside the bzImage: {exc}") from exc
    base = min(gpa for gpa, _ in loaded.segments)
    end = max(gpa + size for gpa, size in loaded.segments)
    extent = max(end - base, header.init_size)
    if base + extent > usable_top(regions):
        need = (base + extent + (1 << 20) - 1) >> 20
        raise BootProtocolError(f"the kernel needs {need} MiB of RAM; the guest has less")
    address = write_cmdline(memory, layout, cmdline, header.cmdline_size)
    placed = None
    if initrd is not None:
        highest = min(header.initrd_addr_max or 0x37FF_FFFF, usable_top(regions) - 1)
        placed = place_initrd(memory, initrd, base + extent, highest)
    zero_page = boot_params.build(header, cmdline=address, e820=regions, initrd=placed)
    memory.write(layout.boot_params, zero_page)
    entry = long_mode_entry(memory, layout, loaded.entry, {"rsi": layout.boot_params})
    return LinuxBoot(
        entry, (base, extent), placed, cmdline, address, layout.boot_params, regions, header
    )
