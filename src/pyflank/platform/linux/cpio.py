"""The newc (SVR4, "070701") cpio format the kernel unpacks an initramfs from, in Python.

Entries carry their own mode, owner and device numbers, so device nodes and root-owned
files are written without root and without a cpio tool.
"""

from __future__ import annotations

import gzip
import stat
from dataclasses import dataclass
from typing import Final

MAGIC: Final = b"070701"
TRAILER: Final = "TRAILER!!!"


@dataclass(frozen=True)
class Entry:
    name: str  # without a leading slash
    mode: int  # file type and permission bits (stat.S_IF* | 0o755 ...)
    data: bytes = b""  # file contents, or a symlink's target
    rdev: tuple[int, int] = (0, 0)  # major, minor of a device node
    mtime: int = 0


def directory(name: str) -> Entry:
    return Entry(name, stat.S_IFDIR | 0o755)


def regular(name: str, data: bytes, mode: int = 0o644) -> Entry:
    return Entry(name, stat.S_IFREG | mode, data)


def symlink(name: str, target: str) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode())


def char_device(name: str, major: int, minor: int, mode: int = 0o600) -> Entry:
    return Entry(name, stat.S_IFCHR | mode, rdev=(major, minor))


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(entry: Entry, inode: int) -> bytes:
    name = entry.name.encode() + b"\0"
    nlink = 2 if stat.S_ISDIR(entry.mode) else 1
    fields = (
        inode, entry.mode, 0, 0, nlink, entry.mtime, len(entry.data),
        0, 0, entry.rdev[0], entry.rdev[1], len(name), 0,
    )  # fmt: skip
    header = MAGIC + b"".join(b"%08X" % value for value in fields) + name
    return header + _pad4(len(header))


def archive(entries: list[Entry]) -> bytes:
    """The uncompressed archive, ending with the trailer (names must be unique)."""
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError("an initramfs entry appears twice")
    parts = []
    for inode, entry in enumerate([*entries, Entry(TRAILER, 0)], start=1):
        parts.append(_header(entry, 0 if entry.name == TRAILER else inode))
        parts.append(entry.data + _pad4(len(entry.data)))
    return b"".join(parts)


def gzip_archive(entries: list[Entry]) -> bytes:
    """gzip'd, with mtime 0: the same entries give the same bytes."""
    return gzip.compress(archive(entries), compresslevel=9, mtime=0)


def parse(data: bytes) -> list[Entry]:
    """Read an uncompressed newc archive back (for tests and for inspecting an initrd)."""
    entries: list[Entry] = []
    offset = 0
    while True:
        if data[offset : offset + 6] != MAGIC:
            raise ValueError(f"no newc header at offset {offset}")
        fields = [int(data[offset + 6 + 8 * i : offset + 14 + 8 * i], 16) for i in range(13)]
        name_size, file_size = fields[11], fields[6]
        name_start = offset + 110
        name = data[name_start : name_start + name_size - 1].decode()
        data_start = name_start + name_size + (-(110 + name_size) % 4)
        if name == TRAILER:
            return entries
        contents = data[data_start : data_start + file_size]
        entries.append(Entry(name, fields[1], contents, (fields[9], fields[10]), fields[5]))
        offset = data_start + file_size + (-file_size % 4)
