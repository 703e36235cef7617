"""The guest segment registers as the segment checks see them (SDM 26.3.1.2 terms)."""

from __future__ import annotations

from typing import Final, NamedTuple

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext


class Segment(NamedTuple):
    """The four guest-state fields of one segment register."""

    name: str
    selector: int
    base: int
    limit: int
    access_rights: int


SEGMENTS: Final[dict[str, Segment]] = {
    name: Segment(
        name,
        getattr(f, f"GUEST_{name.upper()}_SELECTOR"),
        getattr(f, f"GUEST_{name.upper()}_BASE"),
        getattr(f, f"GUEST_{name.upper()}_LIMIT"),
        getattr(f, f"GUEST_{name.upper()}_ACCESS_RIGHTS"),
    )
    for name in ("es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr")
}
CS, SS, TR, LDTR = SEGMENTS["cs"], SEGMENTS["ss"], SEGMENTS["tr"], SEGMENTS["ldtr"]
USER_SEGMENTS: Final = tuple(SEGMENTS[n] for n in ("cs", "ss", "ds", "es", "fs", "gs"))
DATA_SEGMENTS: Final = tuple(SEGMENTS[n] for n in ("ds", "es", "fs", "gs"))


def dpl(access_rights: int) -> int:
    return (access_rights >> b.AR_DPL_SHIFT) & 0x3


def usable(ctx: EntryContext, segment: Segment) -> bool:
    """The SDM's "usable": bit 16 (unusable) of the access rights is 0."""
    return not ctx[segment.access_rights] & b.AR_UNUSABLE


def checked(ctx: EntryContext, segments: tuple[Segment, ...]) -> list[Segment]:
    """Of CS..GS, those an access-rights sub-field check applies to: CS always,
    the others when usable (outside virtual-8086 mode)."""
    if ctx.v8086:
        return []
    return [s for s in segments if s is CS or usable(ctx, s)]


def granularity_low_bad(limit: int, access_rights: int) -> bool:
    """G is 1 though some limit bit in 11:0 is 0 (a page-granular limit ends in FFFH)."""
    return bool(access_rights & b.AR_G) and limit & 0xFFF != 0xFFF


def granularity_high_bad(limit: int, access_rights: int) -> bool:
    """G is 0 though some limit bit in 31:20 is 1 (a byte-granular limit is 20 bits)."""
    return not access_rights & b.AR_G and limit >> 20 != 0
