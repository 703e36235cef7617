"""What gdb is told about the target: an x86-64 processor, its registers described in the
target description XML gdb reads with ``qXfer:features:read:target.xml``, in the order of
``intel_x64.register_set`` (which numbers them for ``g``, ``p`` and ``P``).

The features are gdb's own for amd64 -- ``org.gnu.gdb.i386.core`` (general registers,
RIP, EFLAGS, selectors, x87), ``.sse`` and ``.segments`` (the FS/GS bases) -- and
``org.pyflank.x86.system`` with the control registers and EFER, which gdb shows as
further registers (``info registers system``, ``p $cr3``).
"""

from __future__ import annotations

from typing import Final

from pyflank.intel_x64.register_set import REGISTERS, ArchRegister

_EFLAGS_BITS = (
    ("CF", 0), ("", 1), ("PF", 2), ("AF", 4), ("ZF", 6), ("SF", 7), ("TF", 8), ("IF", 9),
    ("DF", 10), ("OF", 11), ("NT", 14), ("RF", 16), ("VM", 17), ("AC", 18), ("VIF", 19),
    ("VIP", 20), ("ID", 21),
)  # fmt: skip
_MXCSR_BITS = (
    ("IE", 0), ("DE", 1), ("ZE", 2), ("OE", 3), ("UE", 4), ("PE", 5), ("DAZ", 6), ("IM", 7),
    ("DM", 8), ("ZM", 9), ("OM", 10), ("UM", 11), ("PM", 12), ("FZ", 15),
)  # fmt: skip
_VECTORS = (
    ("v8bf16", "bfloat16", 8), ("v8h", "ieee_half", 8), ("v4f", "ieee_single", 4),
    ("v2d", "ieee_double", 2), ("v16i8", "int8", 16), ("v8i16", "int16", 8),
    ("v4i32", "int32", 4), ("v2i64", "int64", 2),
)  # fmt: skip
_FEATURES = {
    "general": "org.gnu.gdb.i386.core",
    "x87": "org.gnu.gdb.i386.core",
    "sse": "org.gnu.gdb.i386.sse",
    "segment base": "org.gnu.gdb.i386.segments",
    "system": "org.pyflank.x86.system",
}
_POINTERS = {"rip": "code_ptr", "rsp": "data_ptr", "rbp": "data_ptr"}


def _type(register: ArchRegister) -> tuple[str, str | None]:
    """gdb's type and group of ``register``."""
    name = register.name
    if name in _POINTERS:
        return _POINTERS[name], None
    if name == "eflags":
        return "i386_eflags", None
    if name == "mxcsr":
        return "i386_mxcsr", "vector"
    if register.group == "x87":
        return ("i387_ext", None) if register.bits == 80 else ("int", "float")
    if register.group == "sse":
        return "vec128", None
    if register.group == "system":
        return "int", "system"
    return ("int32", None) if register.bits == 32 else ("int64", None)


def _flags(name: str, bits: tuple[tuple[str, int], ...]) -> list[str]:
    fields = [f'    <field name="{n}" start="{b}" end="{b}"/>' for n, b in bits]
    return [f'  <flags id="{name}" size="4">', *fields, "  </flags>"]


def _types(feature: str) -> list[str]:
    if feature == "org.gnu.gdb.i386.core":
        return _flags("i386_eflags", _EFLAGS_BITS)
    if feature != "org.gnu.gdb.i386.sse":
        return []
    lines = [f'  <vector id="{i}" type="{t}" count="{n}"/>' for i, t, n in _VECTORS]
    lines.append('  <union id="vec128">')
    lines += [f'    <field name="{i}" type="{i}"/>' for i, _, _ in _VECTORS]
    lines += ['    <field name="uint128" type="uint128"/>', "  </union>"]
    return lines + _flags("i386_mxcsr", _MXCSR_BITS)


def target_xml() -> str:
    """The target description: one feature after the other, registers numbered in order."""
    lines = [
        '<?xml version="1.0"?>',
        '<!DOCTYPE target SYSTEM "gdb-target.dtd">',
        '<target version="1.0">',
        "<architecture>i386:x86-64</architecture>",
    ]
    current = None
    for number, register in enumerate(REGISTERS):
        feature = _FEATURES[register.group]
        if feature != current:
            if current is not None:
                lines.append("</feature>")
            lines.append(f'<feature name="{feature}">')
            lines += _types(feature)
            current = feature
        kind, group = _type(register)
        extra = f' group="{group}"' if group else ""
        lines.append(
            f'  <reg name="{register.name}" bitsize="{register.bits}" type="{kind}" '
            f'regnum="{number}"{extra}/>'
        )
    lines += ["</feature>", "</target>"]
    return "\n".join(lines) + "\n"


TARGET_XML: Final = target_xml().encode()


def encode(register: ArchRegister, value: int | None) -> str:
    """A register's value as ``g`` and ``p`` send it: little-endian hex, ``xx`` bytes where
    the value cannot be had."""
    size = register.bits // 8
    if value is None:
        return "xx" * size
    return (value & ((1 << register.bits) - 1)).to_bytes(size, "little").hex()


def decode(register: ArchRegister, text: str) -> int:
    """A register's value from its hex, as ``G`` and ``P`` send it."""
    data = bytes.fromhex(text)
    if len(data) != register.bits // 8:
        raise ValueError(f"{register.name}: {len(data)} bytes, expected {register.bits // 8}")
    return int.from_bytes(data, "little")
