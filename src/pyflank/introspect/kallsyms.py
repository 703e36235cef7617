"""A running Linux kernel's symbols, from its own kallsyms tables in guest memory.

Debian ships ``System.map`` as a placeholder (the real one is in the -dbg package, about
a gigabyte); but every kernel built with CONFIG_KALLSYMS carries its symbol table in its
image, the one ``/proc/kallsyms`` reads.  ``find`` locates it in guest-physical RAM by
its structure (scripts/kallsyms.c):

* ``kallsyms_token_table``: 256 NUL-terminated tokens, followed by
  ``kallsyms_token_index``, 256 u16 offsets of them.  Byte values a name uses as such
  are their own tokens, so ``"0\\0" "1\\0" ... "9\\0"`` sits at index 0x30 -- where the
  search starts, checked against the index;
* ``kallsyms_num_syms`` (u32), then ``kallsyms_names``: per symbol a length (one byte, or
  two with bit 7 set) and that many token numbers; the first character is the type;
* ``kallsyms_markers``: the offset in the names of every 256th symbol, right after the
  names; ``kallsyms_seqs_of_names`` may follow (newer kernels), then the token table;
* ``kallsyms_offsets`` (s32 per symbol) and ``kallsyms_relative_base`` (u64), before
  ``kallsyms_num_syms`` (before Linux 6.4) or after the token index (since): with
  CONFIG_KALLSYMS_ABSOLUTE_PERCPU a non-negative offset is an absolute value (per-CPU
  variables), a negative one an address below the relative base (``base - 1 - offset``).

Every table lies 8-byte aligned.  Decoding the names (some 150,000) takes a second in
Python, so the decoded names and offsets are cached on disk, keyed by a hash of the raw
tables (``$XDG_CACHE_HOME/pyflank/kallsyms``); the relative base is read each time (it
moves with KASLR).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

_DIGITS = b"".join(bytes([c, 0]) for c in b"0123456789")
_TOKENS = 256
_SEARCH = 16 << 20  # how far before the token table the other tables may start
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_MASK64 = (1 << 64) - 1


class PhysicalMemory(Protocol):
    size: int

    def find(self, pattern: bytes, start: int = 0, end: int | None = None) -> int: ...
    def read(self, gpa: int, length: int) -> bytes: ...


class KallsymsNotFound(LookupError):
    """No kallsyms tables where they were looked for."""


def _align(value: int) -> int:
    return (value + 7) & ~7


@dataclass(frozen=True)
class KallsymsLayout:
    """Where each table is (guest-physical)."""

    token_table: int
    token_index: int
    num_syms: int
    names: int
    markers: int
    offsets: int
    relative_base: int
    count: int


def find(memory: PhysicalMemory) -> KallsymsLayout:
    """The kallsyms tables of the kernel in ``memory`` (``KallsymsNotFound`` if none)."""
    at = memory.find(_DIGITS)
    while at >= 0:
        layout = _layout_around(memory, at)
        if layout is not None:
            return layout
        at = memory.find(_DIGITS, at + 1)
    raise KallsymsNotFound("no kallsyms token table in guest memory (CONFIG_KALLSYMS off?)")


def _token_table_at(memory: PhysicalMemory, digits: int) -> tuple[int, int] | None:
    """(token table, token index) if the digit tokens at ``digits`` are index 0x30 of one."""
    window = memory.read(max(0, digits - 0x1000), min(0x1000, digits))
    start = len(window)
    for _ in range(0x30):  # tokens before '0' are NUL-terminated strings too
        end = window.rfind(b"\0", 0, start - 1)
        if end < 0:
            return None
        start = end + 1
    table = digits - (len(window) - start)
    tokens = memory.read(table, 0x1000)
    offset = 0
    for _ in range(_TOKENS):
        offset = tokens.find(b"\0", offset) + 1
        if offset == 0:
            return None
    index = _align(table + offset)
    offsets = struct.unpack("<256H", memory.read(index, 512))
    if offsets[0] != 0 or offsets[0x30] != digits - table or offsets[0x39] != digits - table + 18:
        return None
    return table, index


def _layout_around(memory: PhysicalMemory, digits: int) -> KallsymsLayout | None:
    found = _token_table_at(memory, digits)
    if found is None:
        return None
    table, index = found
    low = max(0, table - _SEARCH)
    below = memory.read(low, table - low)
    top = len(below)
    # kallsyms_num_syms: an aligned word whose count of names, walked from the next aligned
    # word, ends where the markers begin -- which end at the token table, or where the
    # name sequences (3 bytes a symbol) that end there begin.
    for position in range(top - 8, 0, -8):
        count = _U32.unpack_from(below, position)[0]
        if not 1000 <= count <= 1 << 22 or top - position < 2 * count:
            continue
        marker_count = (count + 255) // 256
        for after in (top, (top - 3 * count) & ~7):
            markers = (after - 4 * marker_count) & ~7
            if markers <= position or not _markers_plausible(below, markers, marker_count):
                continue
            names = position + 8
            end = _walk_names(below, names, count)
            if end is None or _align(end) != markers:
                continue
            offsets, base = _offsets(memory, low + position, index, count)
            return KallsymsLayout(
                table, index, low + position, low + names, low + markers, offsets, base, count
            )
    return None


def _markers_plausible(data: bytes, at: int, count: int) -> bool:
    """Offsets of every 256th name: 0 first, then growing by at least 256 bytes each."""
    values = struct.unpack_from(f"<{min(count, 8)}I", data, at)
    return values[0] == 0 and all(b - a >= 256 for a, b in itertools.pairwise(values))


def _walk_names(data: bytes, start: int, count: int) -> int | None:
    """Where ``count`` compressed names starting at ``start`` end, None if they do not fit."""
    at = start
    limit = len(data)
    for _ in range(count):
        if at >= limit:
            return None
        length = data[at]
        if length & 0x80:
            length = (length & 0x7F) | data[at + 1] << 7
            at += 2
        else:
            at += 1
        if length == 0:
            return None
        at += length
    return at if at <= limit else None


def _offsets(memory: PhysicalMemory, num_syms: int, index: int, count: int) -> tuple[int, int]:
    """(kallsyms_offsets, kallsyms_relative_base): before num_syms (older kernels) when the
    word before it is a kernel address, else after the token index."""
    base_at = num_syms - 8
    if _U64.unpack(memory.read(base_at, 8))[0] >> 47 == 0x1_FFFF:
        return (base_at - 4 * count) & ~7, base_at
    offsets = _align(index + 512)
    return offsets, _align(offsets + 4 * count)


# -- the symbols ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Symbol:
    name: str
    address: int
    type: str  # nm's letter: T text, D data, B bss, R read-only, ...


class KernelSymbols:
    """A kernel's symbols: by name (``address``), by address (``at``), iterated in order."""

    def __init__(self, names: list[str], types: str, addresses: list[int]) -> None:
        self.names = names
        self.types = types
        self.addresses = addresses
        self._by_name = {name: i for i, name in reversed(list(enumerate(names)))}
        order = sorted(range(len(addresses)), key=addresses.__getitem__)
        self._sorted = order
        self._sorted_addresses = [addresses[i] for i in order]

    @classmethod
    def from_system_map(cls, text: str, *, slide: int = 0) -> KernelSymbols:
        """The symbols of a ``System.map`` (or ``/proc/kallsyms``, ``nm`` output): lines of
        address, type letter and name; ``slide`` is added to each address (KASLR's)."""
        names: list[str] = []
        types: list[str] = []
        addresses: list[int] = []
        for number, line in enumerate(text.splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            try:
                address, kind, name = int(fields[0], 16), fields[1], fields[2]
            except (ValueError, IndexError):
                raise ValueError(
                    f"System.map line {number}: not 'address type name': {line!r}"
                ) from None
            names.append(name)
            types.append(kind[:1])
            addresses.append((address + slide) & _MASK64)
        return cls(names, "".join(types), addresses)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def address(self, name: str) -> int:
        """The address of the (first) symbol ``name``; ``KeyError`` if there is none."""
        return self.addresses[self._by_name[name]]

    def get(self, name: str) -> int | None:
        index = self._by_name.get(name)
        return None if index is None else self.addresses[index]

    def at(self, address: int) -> Symbol | None:
        """The symbol ``address`` is in (the last one at or below it), as ``/proc/kallsyms``
        would name it."""
        position = bisect.bisect_right(self._sorted_addresses, address) - 1
        if position < 0:
            return None
        index = self._sorted[position]
        return Symbol(self.names[index], self.addresses[index], self.types[index])

    def __iter__(self) -> Iterator[Symbol]:
        for index in self._sorted:
            yield Symbol(self.names[index], self.addresses[index], self.types[index])


def read_symbols(memory: PhysicalMemory, layout: KallsymsLayout | None = None) -> KernelSymbols:
    """The symbols of the kernel in ``memory`` (its tables found unless ``layout`` is given)."""
    layout = layout or find(memory)
    names_end = layout.markers
    raw_names = memory.read(layout.names, names_end - layout.names)
    raw_offsets = memory.read(layout.offsets, 4 * layout.count)
    tokens = memory.read(layout.token_table, layout.token_index - layout.token_table)
    key = hashlib.sha256(raw_names + raw_offsets + tokens).hexdigest()[:32]
    decoded = _cached(key)
    if decoded is None:
        decoded = _decode(raw_names, layout.count, tokens, layout.token_index, memory)
        _store(key, decoded)
    names, types = decoded
    base = _U64.unpack(memory.read(layout.relative_base, 8))[0]
    addresses = [
        offset if offset >= 0 else base - 1 - offset
        for offset in struct.unpack(f"<{layout.count}i", raw_offsets)
    ]
    return KernelSymbols(names, types, addresses)


def _decode(
    raw: bytes, count: int, tokens: bytes, index_at: int, memory: PhysicalMemory
) -> tuple[list[str], str]:
    index = struct.unpack("<256H", memory.read(index_at, 512))
    table = [tokens[offset : tokens.index(b"\0", offset)].decode("latin-1") for offset in index]
    names: list[str] = []
    types: list[str] = []
    at = 0
    for _ in range(count):
        length = raw[at]
        if length & 0x80:
            length = (length & 0x7F) | raw[at + 1] << 7
            at += 2
        else:
            at += 1
        text = "".join([table[b] for b in raw[at : at + length]])
        at += length
        types.append(text[0])
        names.append(text[1:])
    return names, "".join(types)


def _cache_file(key: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pyflank" / "kallsyms" / f"{key}.json"


def _cached(key: str) -> tuple[list[str], str] | None:
    try:
        data = json.loads(_cache_file(key).read_text())
        names, types = data["names"], data["types"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(names, list) or not isinstance(types, str) or len(names) != len(types):
        return None
    return names, types


def _store(key: str, decoded: tuple[list[str], str]) -> None:
    path = _cache_file(key)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps({"names": decoded[0], "types": decoded[1]}))
        partial.replace(path)
    except OSError:
        pass  # no cache: decoded again next time
