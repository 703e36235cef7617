"""The initramfs the Linux tests and ``make run`` boot: busybox and an ``/init`` that
prints a marker line, offers a shell on the console, and powers the machine off.

``/init`` prints ``MARKER`` followed by the uptime, the kernel release and the memory
the kernel sees, using shell built-ins only (nothing forks before the marker).  With
``pyflank.poweroff`` on the kernel command line it powers off right after the marker;
otherwise it runs a shell on the console and powers off when the shell exits.  Powering
off is ``/bin/pyflank-poweroff``, a tiny program assembled here: it waits until the
console has sent everything (tcdrain: the UART sends from its interrupt), writes port 0xF4
(the isa-debug-exit convention pyflank's platform and QEMU's ``-device isa-debug-exit``
share) and, where nothing answers there, asks the kernel to power off (with ``acpi=off``
the kernel then halts: "reboot: System halted", HLT with interrupts off).
"""

from __future__ import annotations

import struct
from typing import Final

from pyflank.platform.assemble import assemble
from pyflank.platform.linux import cpio

MARKER: Final = "pyflank-init:"
POWEROFF_FLAG: Final = "pyflank.poweroff"
DEBUG_EXIT_PORT: Final = 0xF4
_APPLET_NAMES = """
    ash cat chmod cp cttyhack date dd df dmesg echo env false free grep halt head hostname
    kill ln ls mkdir mknod mount mv poweroff ps pwd readlink reboot rm rmdir sed setsid sh
    sleep stat stty sync tail test top touch true umount uname uptime vi wc
"""
APPLETS: Final = tuple(_APPLET_NAMES.split())  # symlinks to busybox in /bin

INIT_SCRIPT: Final = f"""#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
read -r up _ < /proc/uptime
read -r release < /proc/sys/kernel/osrelease
while read -r key value _; do
    [ "$key" = MemTotal: ] && memory=$value && break
done < /proc/meminfo
echo "{MARKER} uptime $up s, kernel $release, memory $memory kB"
read -r cmdline < /proc/cmdline
case " $cmdline " in
*" {POWEROFF_FLAG} "*) ;;
*) setsid cttyhack sh ;;
esac
echo "{MARKER} powering off"
exec /bin/pyflank-poweroff
"""

_LOAD_ADDRESS: Final = 0x400000
_SYS_IOCTL, _SYS_IOPERM, _SYS_REBOOT, _SYS_EXIT = 16, 173, 169, 60
_TCSBRK: Final = 0x5409  # with argument 1: tcdrain
_REBOOT_MAGIC1, _REBOOT_MAGIC2, _REBOOT_POWER_OFF = 0xFEE1DEAD, 672274793, 0x4321FEDC
POWEROFF_SOURCE: Final = f"""
    mov eax, {_SYS_IOCTL}
    mov edi, 1
    mov esi, {_TCSBRK}
    mov edx, 1
    syscall
    mov eax, {_SYS_IOPERM}
    mov edi, {DEBUG_EXIT_PORT}
    mov esi, 1
    mov edx, 1
    syscall
    test eax, eax
    jnz kernel_power_off
    mov dx, {DEBUG_EXIT_PORT}
    xor eax, eax
    out dx, al
kernel_power_off:
    mov eax, {_SYS_REBOOT}
    mov edi, {_REBOOT_MAGIC1}
    mov esi, {_REBOOT_MAGIC2}
    mov edx, {_REBOOT_POWER_OFF}
    syscall
    mov eax, {_SYS_EXIT}
    mov edi, 1
    syscall
"""


def static_elf(code: bytes, address: int = _LOAD_ADDRESS) -> bytes:
    """An ELF64 x86-64 executable of one read/execute segment holding ``code``."""
    header_size, program_header_size = 64, 56
    entry = address + header_size + program_header_size
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, entry, header_size, 0, 0, header_size,
        program_header_size, 1, 64, 0, 0,
    )  # fmt: skip
    size = header_size + program_header_size + len(code)
    segment = struct.pack("<IIQQQQQQ", 1, 5, 0, address, address, size, size, 0x1000)
    return header + segment + code


def poweroff_program() -> bytes:
    start = _LOAD_ADDRESS + 64 + 56
    return static_elf(assemble(POWEROFF_SOURCE, start), _LOAD_ADDRESS)


def entries(busybox: bytes) -> list[cpio.Entry]:
    tree = [cpio.directory(d) for d in ("bin", "dev", "proc", "sys", "tmp", "root", "etc")]
    tree += [
        cpio.char_device("dev/console", 5, 1),
        cpio.char_device("dev/null", 1, 3, 0o666),
        cpio.regular("bin/busybox", busybox, 0o755),
        cpio.regular("bin/pyflank-poweroff", poweroff_program(), 0o755),
        cpio.regular("init", INIT_SCRIPT.encode(), 0o755),
        cpio.regular("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"),
    ]
    tree += [cpio.symlink(f"bin/{applet}", "busybox") for applet in APPLETS]
    return tree


def build(busybox: bytes) -> bytes:
    """The gzip'd newc initramfs (the same busybox gives the same bytes)."""
    return cpio.gzip_archive(entries(busybox))
