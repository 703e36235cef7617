"""The snapshot file, spelled once: a container of checked sections.

    magic     8 bytes   89 'P' 'F' 'S' 'N' 'A' 'P' 0a
    version   u32 LE    FORMAT_VERSION; a file of another version is refused
    sections, each:
        tag       4 ASCII bytes
        length    u64 LE
        payload   length bytes
        crc32     u32 LE, of the payload
    "END " (empty) is the last section: a file without it was cut short.

The sections of version 1, in this order:

``META``  JSON: ``format`` ("pyflank-snapshot"), ``version``, ``pyflank``, ``unicorn`` (the
          engine build the CPU contexts are for), ``memory_size``, ``vcpus``, ``platform``
          ("pc" or "minimal"), ``created`` (UTC, ISO 8601).
``DEVS``  JSON: the platform's devices and the port bus (``state.capture``), guest time
          included (the virtual clock).
``VCPU``  JSON, one per vCPU: ``vcpuid``, ``point`` ("engine": between two instructions in
          the engine; "idle": halted, waiting for an interrupt), ``vmcs`` (``state``,
          ``entries``, ``fields``: encoding -> value for every field not 0), ``state_save``,
          ``debug_ring``, ``processor`` (exits, failed entries, guest time), ``engine`` (the
          progress count, the time slice's end, idle time, fields it noted, instruction
          count), ``cpu`` (the CPU model's tables), ``handler`` (its class and state).
``UCTX``  u32 LE vCPU id, then that vCPU's unicorn CPU context.
``HOST``  u32 LE vCPU id, then its VM-entry stub's host region.
``RAM ``  extents (u64 LE guest-physical address, u64 LE length, the bytes) covering every
          page of guest RAM that is not all zero; the rest is zero.

Numbers in JSON are JSON numbers (Python reads 64-bit values exactly).
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from typing import IO, Any, Final

MAGIC: Final = b"\x89PFSNAP\n"
FORMAT: Final = "pyflank-snapshot"
FORMAT_VERSION: Final = 1
_VERSION = struct.Struct("<I")
_HEADER = struct.Struct("<4sQ")
_CRC = struct.Struct("<I")
_EXTENT = struct.Struct("<QQ")
_VCPU = struct.Struct("<I")
END: Final = b"END "
_CHUNK = 1 << 20


class SnapshotError(ValueError):
    """A file that is not a snapshot this pyflank can restore; the message says why."""


class Writer:
    """Writes sections to ``file`` (opened for binary writing)."""

    def __init__(self, file: IO[bytes]) -> None:
        self.file = file
        file.write(MAGIC + _VERSION.pack(FORMAT_VERSION))

    def section(self, tag: bytes, payload: bytes) -> None:
        self.file.write(_HEADER.pack(tag, len(payload)) + payload)
        self.file.write(_CRC.pack(zlib.crc32(payload)))

    def json(self, tag: bytes, document: Any) -> None:
        self.section(tag, json.dumps(document, separators=(",", ":")).encode())

    def for_vcpu(self, tag: bytes, vcpuid: int, payload: bytes) -> None:
        self.section(tag, _VCPU.pack(vcpuid) + payload)

    def ram(self, view: memoryview, extents: list[tuple[int, int]]) -> None:
        """The RAM section: ``extents`` ((address, length) of ``view``) with their bytes."""
        length = sum(_EXTENT.size + n for _, n in extents)
        self.file.write(_HEADER.pack(b"RAM ", length))
        crc = 0
        for gpa, n in extents:
            head = _EXTENT.pack(gpa, n)
            crc = zlib.crc32(head, crc)
            self.file.write(head)
            for start in range(gpa, gpa + n, _CHUNK):
                piece = view[start : min(start + _CHUNK, gpa + n)]
                crc = zlib.crc32(piece, crc)
                self.file.write(piece)
        self.file.write(_CRC.pack(crc))

    def end(self) -> None:
        self.section(END, b"")


class Reader:
    """Reads the sections of ``file`` (opened for binary reading), checking each."""

    def __init__(self, file: IO[bytes], name: str = "snapshot") -> None:
        self.file = file
        self.name = name
        head = file.read(len(MAGIC) + _VERSION.size)
        if head[: len(MAGIC)] != MAGIC:
            raise SnapshotError(f"{name} is not a pyflank snapshot (no snapshot header)")
        if len(head) < len(MAGIC) + _VERSION.size:
            raise SnapshotError(f"{name} is cut short in its header")
        (version,) = _VERSION.unpack_from(head, len(MAGIC))
        if version != FORMAT_VERSION:
            raise SnapshotError(f"{name} is a version {version} snapshot; this pyflank reads "
                                f"version {FORMAT_VERSION} only")  # fmt: skip

    def next(self) -> tuple[bytes, int]:
        """The next section's tag and length (its payload is read next)."""
        header = self.file.read(_HEADER.size)
        if len(header) < _HEADER.size:
            raise SnapshotError(f"{self.name} is cut short (no end section)")
        tag, length = _HEADER.unpack(header)
        return tag, length

    def payload(self, tag: bytes, length: int) -> bytes:
        data = self.file.read(length)
        if len(data) < length:
            raise SnapshotError(f"{self.name} is cut short in its {_tag(tag)} section")
        self._check(tag, zlib.crc32(data))
        return data

    def json(self, tag: bytes, length: int) -> Any:
        try:
            return json.loads(self.payload(tag, length))
        except ValueError as exc:
            what = f"{self.name}: its {_tag(tag)} section"
            raise SnapshotError(f"{what} is not JSON: {exc}") from None

    def ram(self, length: int, view: memoryview) -> Iterator[tuple[int, int]]:
        """Read the RAM section into ``view``; yields each extent as it lands."""
        crc = 0
        left = length
        while left > 0:
            head = self.file.read(_EXTENT.size)
            if len(head) < _EXTENT.size:
                raise SnapshotError(f"{self.name} is cut short in its RAM section")
            crc = zlib.crc32(head, crc)
            gpa, n = _EXTENT.unpack(head)
            left -= _EXTENT.size + n
            if gpa + n > len(view) or left < 0:
                raise SnapshotError(f"{self.name}: a RAM extent at {gpa:#x} lies outside RAM")
            target = view[gpa : gpa + n]
            if self.file.readinto(target) != n:  # type: ignore[attr-defined]
                raise SnapshotError(f"{self.name} is cut short in its RAM section")
            crc = zlib.crc32(target, crc)
            yield gpa, n
        self._check(b"RAM ", crc)

    def _check(self, tag: bytes, crc: int) -> None:
        saved = self.file.read(_CRC.size)
        if len(saved) < _CRC.size:
            raise SnapshotError(f"{self.name} is cut short after its {_tag(tag)} section")
        if _CRC.unpack(saved)[0] != crc:
            raise SnapshotError(f"{self.name} is corrupt: its {_tag(tag)} section fails its "
                                "checksum")  # fmt: skip


def vcpu_payload(data: bytes) -> tuple[int, bytes]:
    """(vCPU id, the rest) of a per-vCPU binary section."""
    (vcpuid,) = _VCPU.unpack_from(data)
    return vcpuid, data[_VCPU.size :]


def _tag(tag: bytes) -> str:
    return tag.decode("ascii", "replace").strip()


def nonzero_extents(view: memoryview, page: int = 0x1000) -> list[tuple[int, int]]:
    """(address, length) runs of the pages of ``view`` that are not all zero."""
    zero_chunk = bytes(_CHUNK)
    zero_page = bytes(page)
    extents: list[tuple[int, int]] = []
    start = None
    for chunk in range(0, len(view), _CHUNK):
        end = min(chunk + _CHUNK, len(view))
        if view[chunk:end] == zero_chunk[: end - chunk]:
            if start is not None:
                extents.append((start, chunk - start))
                start = None
            continue
        for address in range(chunk, end, page):
            if view[address : address + page] == zero_page[: min(page, end - address)]:
                if start is not None:
                    extents.append((start, address - start))
                    start = None
            elif start is None:
                start = address
    if start is not None:
        extents.append((start, len(view) - start))
    return extents
