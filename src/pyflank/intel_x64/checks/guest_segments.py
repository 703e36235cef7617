"""SDM 26.3.1.2: checks on guest selectors, bases, limits and virtual-8086 state.

The access-rights rules for CS, SS, DS, ES, FS and GS are in
``guest_access_rights``; TR and LDTR in ``guest_system_segments``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule
from pyflank.intel_x64.checks.segments import (
    CS,
    LDTR,
    SEGMENTS,
    SS,
    TR,
    USER_SEGMENTS,
    usable,
)

_rule = partial(rule, group=CheckGroup.GUEST_SEGMENT_REGISTERS, section="26.3.1.2")
_V8086_ACCESS_RIGHTS = 0xF3  # present, DPL 3, read/write accessed data segment


@_rule("guest.tr.selector_ti")
def tr_selector_ti(ctx: EntryContext) -> Iterator[Problem]:
    """The TI flag (bit 2) of the TR selector must be 0: the TSS is in the GDT."""
    if ctx[TR.selector] & 0x4:
        yield "the TR selector points into the LDT", ctx.named(TR.selector)


@_rule("guest.ldtr.selector_ti")
def ldtr_selector_ti(ctx: EntryContext) -> Iterator[Problem]:
    """If LDTR is usable, the TI flag (bit 2) of its selector must be 0."""
    if usable(ctx, LDTR) and ctx[LDTR.selector] & 0x4:
        yield "the LDTR selector points into the LDT", ctx.named(LDTR.selector)


@_rule("guest.ss.selector_rpl")
def ss_selector_rpl(ctx: EntryContext) -> Iterator[Problem]:
    """Outside virtual-8086 mode and without "unrestricted guest", the SS selector's
    RPL must equal the CS selector's RPL."""
    if not ctx.v8086 and not ctx.unrestricted and ctx[SS.selector] & 0x3 != ctx[CS.selector] & 0x3:
        yield "SS.RPL differs from CS.RPL", ctx.named(SS.selector, CS.selector)


@_rule("guest.v8086.base")
def v8086_bases(ctx: EntryContext) -> Iterator[Problem]:
    """In virtual-8086 mode, the bases of CS, SS, DS, ES, FS and GS must be their
    selectors times 16."""
    if ctx.v8086:
        for segment in USER_SEGMENTS:
            if ctx[segment.base] != ctx[segment.selector] << 4:
                fields = ctx.named(segment.selector, segment.base)
                yield f"virtual-8086 {segment.name} base is not selector * 16", fields


@_rule("guest.base.canonical")
def bases_canonical(ctx: EntryContext) -> Iterator[Problem]:
    """The TR, FS and GS base addresses must be canonical."""
    for segment in (TR, SEGMENTS["fs"], SEGMENTS["gs"]):
        if not ctx.is_canonical(ctx[segment.base]):
            yield f"the {segment.name} base is not canonical", ctx.named(segment.base)


@_rule("guest.ldtr.base_canonical")
def ldtr_base_canonical(ctx: EntryContext) -> Iterator[Problem]:
    """If LDTR is usable, its base address must be canonical."""
    if usable(ctx, LDTR) and not ctx.is_canonical(ctx[LDTR.base]):
        yield "the LDTR base is not canonical", ctx.named(LDTR.base)


@_rule("guest.cs.base_upper")
def cs_base_upper(ctx: EntryContext) -> Iterator[Problem]:
    """Bits 63:32 of the CS base address must be 0."""
    if ctx[CS.base] >> 32:
        yield "CS base bits 63:32 are set", ctx.named(CS.base)


@_rule("guest.base.upper")
def ss_ds_es_base_upper(ctx: EntryContext) -> Iterator[Problem]:
    """For SS, DS and ES, when usable, bits 63:32 of the base must be 0."""
    for segment in (SS, SEGMENTS["ds"], SEGMENTS["es"]):
        if usable(ctx, segment) and ctx[segment.base] >> 32:
            yield f"{segment.name} base bits 63:32 are set", ctx.named(segment.base)


@_rule("guest.v8086.limit")
def v8086_limits(ctx: EntryContext) -> Iterator[Problem]:
    """In virtual-8086 mode, the limits of CS, SS, DS, ES, FS and GS must be FFFFH."""
    if ctx.v8086:
        for segment in USER_SEGMENTS:
            if ctx[segment.limit] != 0xFFFF:
                yield f"virtual-8086 {segment.name} limit is not FFFFH", ctx.named(segment.limit)


@_rule("guest.v8086.access_rights")
def v8086_access_rights(ctx: EntryContext) -> Iterator[Problem]:
    """In virtual-8086 mode, the access rights of CS, SS, DS, ES, FS and GS must be
    000000F3H (present DPL-3 read/write accessed data, nothing else)."""
    if ctx.v8086:
        for segment in USER_SEGMENTS:
            if ctx[segment.access_rights] != _V8086_ACCESS_RIGHTS:
                fields = ctx.named(segment.access_rights)
                yield f"virtual-8086 {segment.name} access rights are not F3H", fields
