"""The kernel's BTF (BPF Type Format, Documentation/bpf/btf.rst): where a structure's members
are, without headers or debug information.

A kernel built with CONFIG_DEBUG_INFO_BTF carries the types of its own C source in the
``.BTF`` section of its image, between ``__start_BTF`` and ``__stop_BTF`` (also what
``/sys/kernel/btf/vmlinux`` shows).  The blob is a header (magic 0xEB9F, version, flags,
header length, then the offsets and lengths of the type and string sections), the types
one after another (a 12-byte ``btf_type``: name offset, info -- kind in bits 28:24, the
member count in 15:0, kind_flag in 31 -- and size or type, followed by what the kind
adds), and a table of NUL-terminated strings.  Type ids count from 1 in order.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

MAGIC = 0xEB9F
_HEADER = struct.Struct("<HBBIIIII")
_TYPE = struct.Struct("<III")
_MEMBER = struct.Struct("<III")
STRUCT, UNION = 4, 5
# Bytes each kind adds after its btf_type: (fixed, per member).
_EXTRA = {
    1: (4, 0),  # INT
    2: (0, 0),  # PTR
    3: (12, 0),  # ARRAY
    4: (0, 12),  # STRUCT
    5: (0, 12),  # UNION
    6: (0, 8),  # ENUM
    7: (0, 0),  # FWD
    8: (0, 0),  # TYPEDEF
    9: (0, 0),  # VOLATILE
    10: (0, 0),  # CONST
    11: (0, 0),  # RESTRICT
    12: (0, 0),  # FUNC
    13: (0, 8),  # FUNC_PROTO
    14: (4, 0),  # VAR
    15: (0, 12),  # DATASEC
    16: (0, 0),  # FLOAT
    17: (4, 0),  # DECL_TAG
    18: (0, 0),  # TYPE_TAG
    19: (0, 12),  # ENUM64
}


class BtfError(ValueError):
    """Not BTF, or not BTF this reader knows."""


@dataclass(frozen=True)
class Member:
    name: str
    offset: int  # bytes from the start of the outermost structure
    type_id: int


class Btf:
    """The types of one BTF blob: ``members("task_struct")``."""

    def __init__(self, blob: bytes) -> None:
        if len(blob) < _HEADER.size:
            raise BtfError("too short for a BTF header")
        magic, _version, _flags, header, type_off, type_len, str_off, str_len = _HEADER.unpack_from(
            blob
        )
        if magic != MAGIC:
            raise BtfError(f"bad BTF magic {magic:#x}")
        self._types = blob[header + type_off : header + type_off + type_len]
        self._strings = blob[header + str_off : header + str_off + str_len]
        self._offsets: list[int] = [0]  # where each type id starts in the type section
        self._structs: dict[str, int] = {}
        self._index()

    def _index(self) -> None:
        types, at = self._types, 0
        while at + _TYPE.size <= len(types):
            name, info, _ = _TYPE.unpack_from(types, at)
            kind, count = info >> 24 & 0x1F, info & 0xFFFF
            extra = _EXTRA.get(kind)
            if extra is None:
                raise BtfError(f"unknown BTF kind {kind} at type {len(self._offsets)}")
            self._offsets.append(at)
            if kind in (STRUCT, UNION) and name:
                self._structs.setdefault(self.string(name), len(self._offsets) - 1)
            at += _TYPE.size + extra[0] + extra[1] * count

    def string(self, offset: int) -> str:
        end = self._strings.index(b"\0", offset)
        return self._strings[offset:end].decode("utf-8", "replace")

    def struct_id(self, name: str) -> int:
        """The type id of ``struct name`` (``KeyError`` if the blob has none)."""
        return self._structs[name]

    def members(self, name: str) -> dict[str, Member]:
        """The members of ``struct name`` by name, those of its anonymous structs and
        unions included, with byte offsets from its start."""
        found: dict[str, Member] = {}
        self._collect(self.struct_id(name), 0, found)
        return found

    def _collect(self, type_id: int, base: int, found: dict[str, Member]) -> None:
        at = self._offsets[type_id]
        _, info, _ = _TYPE.unpack_from(self._types, at)
        bitfields = bool(info >> 31)
        for index in range(info & 0xFFFF):
            name, member_type, offset = _MEMBER.unpack_from(
                self._types, at + _TYPE.size + index * _MEMBER.size
            )
            bits = offset & 0xFF_FFFF if bitfields else offset
            where = base + bits // 8
            if name:
                found.setdefault(self.string(name), Member(self.string(name), where, member_type))
            else:
                inner = self._resolve(member_type)
                if inner is not None:
                    self._collect(inner, where, found)

    def _resolve(self, type_id: int) -> int | None:
        """The struct or union a type id names through typedefs and qualifiers, if any."""
        for _ in range(16):
            _, info, target = _TYPE.unpack_from(self._types, self._offsets[type_id])
            kind = info >> 24 & 0x1F
            if kind in (STRUCT, UNION):
                return type_id
            if kind not in (8, 9, 10, 11, 18):  # typedef, volatile, const, restrict, tag
                return None
            type_id = target
        return None
