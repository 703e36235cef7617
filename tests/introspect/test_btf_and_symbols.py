"""The introspection readers on small inputs built here: a BTF blob (structures, anonymous
members, bitfield offsets) and a System.map.  On Debian's kernel they are driven by
tests/linux/test_linux_hooks.py."""

from __future__ import annotations

import struct

import pytest

from pyflank.introspect import Btf, BtfError, KernelSymbols

INT, STRUCT, UNION, TYPEDEF = 1, 4, 5, 8


def btf_blob(types: list[bytes], strings: bytes, magic: int = 0xEB9F) -> bytes:
    body = b"".join(types)
    header = struct.pack("<HBBIIIII", magic, 1, 0, 24, 0, len(body), len(body), len(strings))
    return header + body + strings


def btf_type(name: int, kind: int, count: int, size: int, *, kind_flag: bool = False) -> bytes:
    return struct.pack("<III", name, kind << 24 | count | int(kind_flag) << 31, size)


def member(name: int, type_id: int, offset: int) -> bytes:
    return struct.pack("<III", name, type_id, offset)


STRINGS = b"\0int\0task_struct\0pid\0tgid\0comm\0flags\0inner_t\0"
NAME = {s.decode(): STRINGS.index(b"\0" + s + b"\0") + 1 for s in STRINGS.strip(b"\0").split(b"\0")}


def test_btf_members_have_byte_offsets_through_anonymous_members() -> None:
    types = [
        btf_type(NAME["int"], INT, 0, 4) + struct.pack("<I", 32),  # 1: int
        # 2: an anonymous union holding tgid (bitfield encoding: bit offset in 23:0)
        btf_type(0, UNION, 1, 4, kind_flag=True) + member(NAME["tgid"], 1, 3 << 24 | 0),
        btf_type(NAME["inner_t"], TYPEDEF, 0, 2),  # 3: typedef of the union
        btf_type(NAME["task_struct"], STRUCT, 4, 64)  # 4: task_struct
        + member(NAME["flags"], 1, 0)
        + member(NAME["pid"], 1, 8 * 8)
        + member(0, 3, 16 * 8)  # the union, through its typedef
        + member(NAME["comm"], 1, 40 * 8),
    ]
    members = Btf(btf_blob(types, STRINGS)).members("task_struct")
    assert {name: m.offset for name, m in members.items()} == {
        "flags": 0, "pid": 8, "tgid": 16, "comm": 40,
    }  # fmt: skip
    with pytest.raises(KeyError):
        Btf(btf_blob(types, STRINGS)).members("mm_struct")


@pytest.mark.parametrize(
    ("blob", "why"),
    [
        (b"\x9f\xeb", "too short"),
        (btf_blob([], STRINGS, magic=0x1234), "bad BTF magic"),
        (btf_blob([btf_type(0, 31, 0, 0)], STRINGS), "unknown BTF kind 31"),
    ],
)
def test_what_is_not_btf_is_refused_saying_why(blob: bytes, why: str) -> None:
    with pytest.raises(BtfError, match=why):
        Btf(blob)


SYSTEM_MAP = """\
ffffffff81000000 T _text
ffffffff81000000 T startup_64
ffffffff81c00080 T entry_SYSCALL_64
ffffffff82200300 D sys_call_table

0000000000021440 A current_task
"""


def test_a_system_map_gives_names_addresses_and_the_symbol_an_address_is_in() -> None:
    symbols = KernelSymbols.from_system_map(SYSTEM_MAP, slide=0x1000000)
    assert len(symbols) == 5 and "startup_64" in symbols
    assert symbols.address("entry_SYSCALL_64") == 0xFFFFFFFF82C00080
    assert symbols.address("_text") == 0xFFFFFFFF82000000
    inside = symbols.at(0xFFFFFFFF82C00090)
    assert inside is not None and (inside.name, inside.type) == ("entry_SYSCALL_64", "T")
    assert symbols.get("init_task") is None
    with pytest.raises(ValueError, match=r"System\.map line 2: not 'address type name'"):
        KernelSymbols.from_system_map("ffffffff81000000 T _text\nnonsense\n")
