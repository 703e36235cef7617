"""The newc writer and the initramfs /init: what the kernel will unpack and run."""

from __future__ import annotations

import gzip
import stat

from iced_x86 import Decoder, Formatter, FormatterSyntax

from pyflank.platform.linux import cpio, initramfs


def test_newc_round_trip_with_device_nodes_and_symlinks() -> None:
    entries = [
        cpio.directory("dev"),
        cpio.char_device("dev/console", 5, 1),
        cpio.regular("init", b"#!/bin/sh\n", 0o755),
        cpio.symlink("bin/sh", "busybox"),
        cpio.regular("odd", b"x" * 5),
    ]
    data = cpio.archive(entries)
    assert data.startswith(b"070701") and len(data) % 4 == 0
    assert data.endswith(b"TRAILER!!!\0" + b"\0" * (-(110 + 11) % 4))
    back = cpio.parse(data)
    assert [(e.name, e.mode, e.data, e.rdev) for e in back] == [
        (e.name, e.mode, e.data, e.rdev) for e in entries
    ]
    assert stat.S_ISCHR(back[1].mode) and back[1].rdev == (5, 1)


def test_the_same_inputs_give_the_same_bytes() -> None:
    assert initramfs.build(b"\x7fELF fake busybox") == initramfs.build(b"\x7fELF fake busybox")


def test_the_initramfs_holds_init_busybox_applets_and_a_console() -> None:
    entries = {e.name: e for e in cpio.parse(gzip.decompress(initramfs.build(b"BB")))}
    assert entries["bin/busybox"].data == b"BB" and entries["init"].mode & 0o111
    assert entries["init"].data.startswith(b"#!/bin/sh\n")
    assert initramfs.MARKER.encode() in entries["init"].data
    assert entries["dev/console"].rdev == (5, 1)
    assert entries["bin/sh"].data == b"busybox" and stat.S_ISLNK(entries["bin/sh"].mode)
    for applet in ("mount", "setsid", "cttyhack"):
        assert f"bin/{applet}" in entries


def test_the_poweroff_program_drains_the_console_writes_port_f4_then_asks_the_kernel() -> None:
    program = initramfs.poweroff_program()
    entry = int.from_bytes(program[24:32], "little")
    code = program[64 + 56 :]
    assert entry == initramfs._LOAD_ADDRESS + 64 + 56
    formatter = Formatter(FormatterSyntax.INTEL)
    text = [formatter.format(i) for i in Decoder(64, code, ip=entry)]
    numbers, eax = [], None
    for line in text:
        if line.startswith("mov eax,"):
            eax = line.split(",")[1]
        elif line == "syscall":
            numbers.append(eax)
    assert numbers == ["10h", "0ADh", "0A9h", "3Ch"]  # ioctl (tcdrain), ioperm, reboot, exit
    assert "out dx,al" in text
