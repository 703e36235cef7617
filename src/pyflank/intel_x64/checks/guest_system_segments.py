"""SDM 26.3.1.2: access-rights checks on TR (always) and LDTR (when usable)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule
from pyflank.intel_x64.checks.segments import (
    LDTR,
    TR,
    Segment,
    granularity_high_bad,
    granularity_low_bad,
    usable,
)

_rule = partial(rule, group=CheckGroup.GUEST_SEGMENT_REGISTERS, section="26.3.1.2")

_TSS16_BUSY, _TSS32_BUSY, _LDT = 3, 11, 2


def _rights(ctx: EntryContext, segment: Segment) -> int:
    return ctx[segment.access_rights]


def _ldtr(ctx: EntryContext) -> int | None:
    """LDTR's access rights when LDTR is usable (its checks apply only then)."""
    return ctx[LDTR.access_rights] if usable(ctx, LDTR) else None


@_rule("guest.tr.type")
def tr_type(ctx: EntryContext) -> Iterator[Problem]:
    """Outside IA-32e mode, the TR type must be 3 (16-bit busy TSS) or 11 (32-bit
    busy TSS)."""
    if not ctx.ia32e_guest and _rights(ctx, TR) & b.AR_TYPE not in (_TSS16_BUSY, _TSS32_BUSY):
        yield "TR does not hold a busy TSS", ctx.named(TR.access_rights)


@_rule("guest.tr.type_ia32e")
def tr_type_ia32e(ctx: EntryContext) -> Iterator[Problem]:
    """For an IA-32e mode guest, the TR type must be 11 (64-bit busy TSS)."""
    if ctx.ia32e_guest and _rights(ctx, TR) & b.AR_TYPE != _TSS32_BUSY:
        fields = ctx.named(TR.access_rights, f.VM_ENTRY_CONTROLS)
        yield "an IA-32e mode guest's TR must hold a 64-bit busy TSS", fields


@_rule("guest.tr.s")
def tr_s(ctx: EntryContext) -> Iterator[Problem]:
    """TR's S bit (4) must be 0: a TSS is a system descriptor."""
    if _rights(ctx, TR) & b.AR_S:
        yield "TR holds a code/data descriptor", ctx.named(TR.access_rights)


@_rule("guest.tr.present")
def tr_present(ctx: EntryContext) -> Iterator[Problem]:
    """TR's P bit (7) must be 1."""
    if not _rights(ctx, TR) & b.AR_P:
        yield "TR is not present", ctx.named(TR.access_rights)


@_rule("guest.tr.reserved_11_8")
def tr_reserved_11_8(ctx: EntryContext) -> Iterator[Problem]:
    """TR access-rights bits 11:8 are reserved and must be 0."""
    if _rights(ctx, TR) & b.AR_RESERVED_11_8:
        yield "TR sets access-rights bits 11:8", ctx.named(TR.access_rights)


@_rule("guest.tr.granularity_low")
def tr_granularity_low(ctx: EntryContext) -> Iterator[Problem]:
    """If any TR limit bit in 11:0 is 0, TR's G must be 0."""
    if granularity_low_bad(ctx[TR.limit], _rights(ctx, TR)):
        yield (
            "TR is page-granular with a limit not ending in FFFH",
            ctx.named(TR.limit, TR.access_rights),
        )


@_rule("guest.tr.granularity_high")
def tr_granularity_high(ctx: EntryContext) -> Iterator[Problem]:
    """If any TR limit bit in 31:20 is 1, TR's G must be 1."""
    if granularity_high_bad(ctx[TR.limit], _rights(ctx, TR)):
        yield "TR is byte-granular with a limit above FFFFFH", ctx.named(TR.limit, TR.access_rights)


@_rule("guest.tr.usable")
def tr_usable(ctx: EntryContext) -> Iterator[Problem]:
    """TR's unusable bit (16) must be 0: every guest has a task register."""
    if not usable(ctx, TR):
        yield "TR is marked unusable", ctx.named(TR.access_rights)


@_rule("guest.tr.reserved_31_17")
def tr_reserved_31_17(ctx: EntryContext) -> Iterator[Problem]:
    """TR access-rights bits 31:17 are reserved and must be 0."""
    if _rights(ctx, TR) & b.AR_RESERVED_31_17:
        yield "TR sets access-rights bits 31:17", ctx.named(TR.access_rights)


@_rule("guest.ldtr.type")
def ldtr_type(ctx: EntryContext) -> Iterator[Problem]:
    """If LDTR is usable, its type must be 2 (LDT)."""
    rights = _ldtr(ctx)
    if rights is not None and rights & b.AR_TYPE != _LDT:
        yield "LDTR does not hold an LDT", ctx.named(LDTR.access_rights)


@_rule("guest.ldtr.s")
def ldtr_s(ctx: EntryContext) -> Iterator[Problem]:
    """If LDTR is usable, its S bit (4) must be 0."""
    rights = _ldtr(ctx)
    if rights is not None and rights & b.AR_S:
        yield "LDTR holds a code/data descriptor", ctx.named(LDTR.access_rights)


@_rule("guest.ldtr.present")
def ldtr_present(ctx: EntryContext) -> Iterator[Problem]:
    """If LDTR is usable, its P bit (7) must be 1."""
    rights = _ldtr(ctx)
    if rights is not None and not rights & b.AR_P:
        yield "LDTR is not present", ctx.named(LDTR.access_rights)


@_rule("guest.ldtr.reserved_11_8")
def ldtr_reserved_11_8(ctx: EntryContext) -> Iterator[Problem]:
    """If LDTR is usable, its access-rights bits 11:8 must be 0."""
    rights = _ldtr(ctx)
    if rights is not None and rights & b.AR_RESERVED_11_8:
        yield "LDTR sets access-rights bits 11:8", ctx.named(LDTR.access_rights)


@_rule("guest.ldtr.granularity_low")
def ldtr_granularity_low(ctx: EntryContext) -> Iterator[Problem]:
    """If LDTR is usable and any limit bit in 11:0 is 0, its G must be 0."""
    rights = _ldtr(ctx)
    if rights is not None and granularity_low_bad(ctx[LDTR.limit], rights):
        yield (
            "LDTR is page-granular with a limit not ending in FFFH",
            ctx.named(LDTR.limit, LDTR.access_rights),
        )


@_rule("guest.ldtr.granularity_high")
def ldtr_granularity_high(ctx: EntryContext) -> Iterator[Problem]:
    """If LDTR is usable and any limit bit in 31:20 is 1, its G must be 1."""
    rights = _ldtr(ctx)
    if rights is not None and granularity_high_bad(ctx[LDTR.limit], rights):
        yield (
            "LDTR is byte-granular with a limit above FFFFFH",
            ctx.named(LDTR.limit, LDTR.access_rights),
        )


@_rule("guest.ldtr.reserved_31_17")
def ldtr_reserved_31_17(ctx: EntryContext) -> Iterator[Problem]:
    """If LDTR is usable, its access-rights bits 31:17 must be 0."""
    rights = _ldtr(ctx)
    if rights is not None and rights & b.AR_RESERVED_31_17:
        yield "LDTR sets access-rights bits 31:17", ctx.named(LDTR.access_rights)
