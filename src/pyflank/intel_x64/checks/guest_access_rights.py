"""SDM 26.3.1.2: access-rights checks on CS, SS, DS, ES, FS and GS outside
virtual-8086 mode (in virtual-8086 mode the rights must simply be F3H)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule
from pyflank.intel_x64.checks.segments import (
    CS,
    DATA_SEGMENTS,
    SS,
    USER_SEGMENTS,
    checked,
    dpl,
    granularity_high_bad,
    granularity_low_bad,
    usable,
)

_rule = partial(rule, group=CheckGroup.GUEST_SEGMENT_REGISTERS, section="26.3.1.2")

_CODE_TYPES = frozenset({9, 11, 13, 15})  # accessed code segments
_DATA_TYPE_RW_ACCESSED = 3


def _cs_type(ctx: EntryContext) -> int:
    return ctx[CS.access_rights] & b.AR_TYPE


@_rule("guest.cs.type")
def cs_type(ctx: EntryContext) -> Iterator[Problem]:
    """The CS type must be 9, 11, 13 or 15 (accessed code); with "unrestricted
    guest" 1 it may also be 3 (read/write accessed data, for real mode)."""
    if ctx.v8086:
        return
    kind = _cs_type(ctx)
    if kind not in _CODE_TYPES and not (ctx.unrestricted and kind == _DATA_TYPE_RW_ACCESSED):
        yield f"CS type {kind} is not an accessed code segment", ctx.named(CS.access_rights)


@_rule("guest.ss.type")
def ss_type(ctx: EntryContext) -> Iterator[Problem]:
    """If SS is usable, its type must be 3 or 7 (read/write accessed data)."""
    if not ctx.v8086 and usable(ctx, SS) and ctx[SS.access_rights] & b.AR_TYPE not in (3, 7):
        yield "SS is not a read/write accessed data segment", ctx.named(SS.access_rights)


@_rule("guest.data.accessed")
def data_accessed(ctx: EntryContext) -> Iterator[Problem]:
    """For usable DS, ES, FS and GS, bit 0 of the type (accessed) must be 1."""
    for segment in checked(ctx, DATA_SEGMENTS):
        if not ctx[segment.access_rights] & 0x1:
            yield f"{segment.name} is not marked accessed", ctx.named(segment.access_rights)


@_rule("guest.data.readable")
def data_readable(ctx: EntryContext) -> Iterator[Problem]:
    """For usable DS, ES, FS and GS holding a code segment (type bit 3), the type
    must be readable (bit 1)."""
    for segment in checked(ctx, DATA_SEGMENTS):
        kind = ctx[segment.access_rights] & b.AR_TYPE
        if kind & 0x8 and not kind & 0x2:
            yield f"{segment.name} holds an execute-only segment", ctx.named(segment.access_rights)


@_rule("guest.segment.s")
def descriptor_type(ctx: EntryContext) -> Iterator[Problem]:
    """For CS and each usable SS, DS, ES, FS and GS, S (bit 4) must be 1: code or data,
    not a system descriptor."""
    for segment in checked(ctx, USER_SEGMENTS):
        if not ctx[segment.access_rights] & b.AR_S:
            yield f"{segment.name} holds a system descriptor", ctx.named(segment.access_rights)


@_rule("guest.cs.dpl_data")
def cs_dpl_data(ctx: EntryContext) -> Iterator[Problem]:
    """If the CS type is 3 (data, unrestricted guest only), its DPL must be 0."""
    if not ctx.v8086 and _cs_type(ctx) == 3 and dpl(ctx[CS.access_rights]):
        yield "a data-type CS must have DPL 0", ctx.named(CS.access_rights)


@_rule("guest.cs.dpl_nonconforming")
def cs_dpl_nonconforming(ctx: EntryContext) -> Iterator[Problem]:
    """If the CS type is 9 or 11 (non-conforming code), its DPL must equal SS.DPL."""
    if (
        not ctx.v8086
        and _cs_type(ctx) in (9, 11)
        and dpl(ctx[CS.access_rights]) != dpl(ctx[SS.access_rights])
    ):
        yield (
            "non-conforming CS.DPL differs from SS.DPL",
            ctx.named(CS.access_rights, SS.access_rights),
        )


@_rule("guest.cs.dpl_conforming")
def cs_dpl_conforming(ctx: EntryContext) -> Iterator[Problem]:
    """If the CS type is 13 or 15 (conforming code), its DPL cannot exceed SS.DPL."""
    if (
        not ctx.v8086
        and _cs_type(ctx) in (13, 15)
        and dpl(ctx[CS.access_rights]) > dpl(ctx[SS.access_rights])
    ):
        yield "conforming CS.DPL exceeds SS.DPL", ctx.named(CS.access_rights, SS.access_rights)


@_rule("guest.ss.dpl_rpl")
def ss_dpl_rpl(ctx: EntryContext) -> Iterator[Problem]:
    """Without "unrestricted guest", SS.DPL must equal the RPL of the SS selector."""
    if (
        not ctx.v8086
        and not ctx.unrestricted
        and dpl(ctx[SS.access_rights]) != ctx[SS.selector] & 0x3
    ):
        yield "SS.DPL differs from the SS selector's RPL", ctx.named(SS.access_rights, SS.selector)


@_rule("guest.ss.dpl_real_mode")
def ss_dpl_real_mode(ctx: EntryContext) -> Iterator[Problem]:
    """If the CS type is 3 or CR0.PE is 0 (real mode under unrestricted guest),
    SS.DPL must be 0."""
    if ctx.v8086:
        return
    if (_cs_type(ctx) == 3 or not ctx.cr0 & b.CR0_PE) and dpl(ctx[SS.access_rights]):
        yield "real-mode SS must have DPL 0", ctx.named(SS.access_rights, f.GUEST_CR0)


@_rule("guest.data.dpl")
def data_dpl(ctx: EntryContext) -> Iterator[Problem]:
    """Without "unrestricted guest", a usable DS, ES, FS or GS of type 0-11 (data or
    non-conforming code) must have DPL >= the RPL of its selector."""
    if ctx.unrestricted:
        return
    for segment in checked(ctx, DATA_SEGMENTS):
        rights = ctx[segment.access_rights]
        if rights & b.AR_TYPE <= 11 and dpl(rights) < ctx[segment.selector] & 0x3:
            yield (
                f"{segment.name}.DPL is below its RPL",
                ctx.named(segment.access_rights, segment.selector),
            )


@_rule("guest.segment.present")
def present(ctx: EntryContext) -> Iterator[Problem]:
    """For CS and each usable SS, DS, ES, FS and GS, P (bit 7) must be 1."""
    for segment in checked(ctx, USER_SEGMENTS):
        if not ctx[segment.access_rights] & b.AR_P:
            yield f"{segment.name} is not present", ctx.named(segment.access_rights)


@_rule("guest.segment.reserved_11_8")
def reserved_11_8(ctx: EntryContext) -> Iterator[Problem]:
    """For CS and each usable SS, DS, ES, FS and GS, access-rights bits 11:8 are
    reserved and must be 0."""
    for segment in checked(ctx, USER_SEGMENTS):
        if ctx[segment.access_rights] & b.AR_RESERVED_11_8:
            yield f"{segment.name} sets access-rights bits 11:8", ctx.named(segment.access_rights)


@_rule("guest.cs.l_and_d")
def cs_long_and_default(ctx: EntryContext) -> Iterator[Problem]:
    """For an IA-32e mode guest whose CS has L (bit 13) set, D/B (bit 14) must be 0."""
    rights = ctx[CS.access_rights]
    if not ctx.v8086 and ctx.ia32e_guest and rights & b.AR_L and rights & b.AR_DB:
        yield "CS sets both L and D/B", ctx.named(CS.access_rights)


@_rule("guest.segment.granularity_low")
def granularity_low(ctx: EntryContext) -> Iterator[Problem]:
    """For CS and each usable SS, DS, ES, FS and GS: if any limit bit in 11:0 is 0,
    G must be 0."""
    for segment in checked(ctx, USER_SEGMENTS):
        if granularity_low_bad(ctx[segment.limit], ctx[segment.access_rights]):
            fields = ctx.named(segment.limit, segment.access_rights)
            yield f"{segment.name} is page-granular with a limit not ending in FFFH", fields


@_rule("guest.segment.granularity_high")
def granularity_high(ctx: EntryContext) -> Iterator[Problem]:
    """For CS and each usable SS, DS, ES, FS and GS: if any limit bit in 31:20 is 1,
    G must be 1."""
    for segment in checked(ctx, USER_SEGMENTS):
        if granularity_high_bad(ctx[segment.limit], ctx[segment.access_rights]):
            fields = ctx.named(segment.limit, segment.access_rights)
            yield f"{segment.name} is byte-granular with a limit above FFFFFH", fields


@_rule("guest.segment.reserved_31_17")
def reserved_31_17(ctx: EntryContext) -> Iterator[Problem]:
    """For CS and each usable SS, DS, ES, FS and GS, access-rights bits 31:17 are
    reserved and must be 0."""
    for segment in checked(ctx, USER_SEGMENTS):
        if ctx[segment.access_rights] & b.AR_RESERVED_31_17:
            yield f"{segment.name} sets access-rights bits 31:17", ctx.named(segment.access_rights)
