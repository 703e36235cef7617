"""Guest state that changes without an exit, in VMCS fields as a VM exit saves it.

A guest can load a segment register, a control register, GDTR/IDTR or a base MSR
without exiting.  unicorn exposes selectors but not the hidden part of ES..GS, so that is
rebuilt from the descriptor the selector names, which is what the load put there.
TR and LDTR come with their hidden part -- but after LTR, QEMU keeps the type the
descriptor had *before* LTR marked it busy, so TR is reported busy, as the processor
holds it (SDM 26.3.1.2 requires it of an IA-32e guest's TR).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.registers import AR_UNUSABLE
from pyflank.memory import GuestLinear, GuestMemoryError, PageFault

UNUSABLE = AR_UNUSABLE
_AVAILABLE_TSS = frozenset({0x1, 0x9})  # 16-bit, 32/64-bit TSS types before LTR
_TSS_BUSY = 0x2  # the busy bit of a TSS type
_Q = struct.Struct("<Q")
SEGMENT_NAMES = ("ES", "CS", "SS", "DS", "FS", "GS")
SEGMENT_FIELDS = tuple(
    (
        getattr(f, f"GUEST_{n}_SELECTOR"),
        getattr(f, f"GUEST_{n}_BASE"),
        getattr(f, f"GUEST_{n}_LIMIT"),
        getattr(f, f"GUEST_{n}_ACCESS_RIGHTS"),
    )
    for n in SEGMENT_NAMES
)
SYSTEM_SEGMENT_FIELDS = {
    "LDTR": (
        f.GUEST_LDTR_SELECTOR,
        f.GUEST_LDTR_BASE,
        f.GUEST_LDTR_LIMIT,
        f.GUEST_LDTR_ACCESS_RIGHTS,
    ),
    "TR": (f.GUEST_TR_SELECTOR, f.GUEST_TR_BASE, f.GUEST_TR_LIMIT, f.GUEST_TR_ACCESS_RIGHTS),
}


def descriptor_fields(descriptor: int) -> tuple[int, int, int]:
    """(base, limit, VMX access rights) of a code/data segment descriptor."""
    base = ((descriptor >> 16) & 0xFF_FFFF) | ((descriptor >> 56) & 0xFF) << 24
    limit = (descriptor & 0xFFFF) | ((descriptor >> 48) & 0xF) << 16
    if descriptor >> 55 & 1:
        limit = limit << 12 | 0xFFF
    rights = (descriptor >> 40) & 0xFF | ((descriptor >> 52) & 0xF) << 12
    if not rights & 0x80:
        rights |= UNUSABLE
    return base, limit, rights


def qemu_flags_rights(flags: int, selector: int) -> int:
    """VMX access rights from QEMU's cached descriptor flags (descriptor bits 40..55)."""
    rights = (flags >> 8) & 0xFF | ((flags >> 20) & 0xF) << 12
    if selector & ~3 == 0 and not rights & 0x80:
        return UNUSABLE
    return rights


def read_descriptor(
    linear: GuestLinear, gdt_base: int, gdt_limit: int, selector: int
) -> int | None:
    """The GDT descriptor ``selector`` names, or None (null, LDT, outside the GDT)."""
    index = selector & ~7
    if index == 0 or selector & 4 or index + 7 > gdt_limit:
        return None
    try:
        (value,) = _Q.unpack(linear.read(gdt_base + index, 8))
    except (PageFault, GuestMemoryError, ValueError):
        return None
    return int(value)


FieldWrite = Callable[[int, int], None]  # (VMCS encoding, value)


def save_segments(
    write: FieldWrite,
    linear: GuestLinear,
    selectors: Sequence[int],
    previous: Sequence[int] | None,
    *,
    gdt_base: int,
    gdt_limit: int,
) -> None:
    """Write ES..GS (selectors in that order) whose selector changed since ``previous``."""
    for i, (selector, fields) in enumerate(zip(selectors, SEGMENT_FIELDS, strict=True)):
        if previous is not None and previous[i] == selector:
            continue
        sel_field, base_field, limit_field, rights_field = fields
        write(sel_field, selector)
        descriptor = read_descriptor(linear, gdt_base, gdt_limit, selector)
        if descriptor is None:
            if selector & ~3 == 0 and SEGMENT_NAMES[i] != "CS":
                write(rights_field, UNUSABLE)
            continue
        base, limit, rights = descriptor_fields(descriptor | 1 << 40)  # the load sets A
        if SEGMENT_NAMES[i] not in ("FS", "GS"):  # FS/GS bases come from their MSRs
            write(base_field, base)
        write(limit_field, limit)
        write(rights_field, rights)


def save_system_segment(write: FieldWrite, name: str, mmr: tuple[int, int, int, int]) -> None:
    selector, base, limit, flags = mmr
    sel_field, base_field, limit_field, rights_field = SYSTEM_SEGMENT_FIELDS[name]
    rights = qemu_flags_rights(flags, selector)
    if name == "TR" and rights & 0xF in _AVAILABLE_TSS and not rights & UNUSABLE:
        rights |= _TSS_BUSY
    write(sel_field, selector)
    write(base_field, base)
    write(limit_field, limit)
    write(rights_field, rights)
