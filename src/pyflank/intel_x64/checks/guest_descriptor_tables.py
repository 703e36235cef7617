"""SDM 26.3.1.3: checks on the guest GDTR and IDTR."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule

_rule = partial(rule, group=CheckGroup.GUEST_DESCRIPTOR_TABLES, section="26.3.1.3")


@_rule("guest.gdtr_idtr.canonical")
def table_bases_canonical(ctx: EntryContext) -> Iterator[Problem]:
    """The GDTR and IDTR base addresses must be canonical."""
    for encoding in (f.GUEST_GDTR_BASE, f.GUEST_IDTR_BASE):
        if not ctx.is_canonical(ctx[encoding]):
            yield "a descriptor-table base is not canonical", ctx.named(encoding)


@_rule("guest.gdtr_idtr.limit")
def table_limits(ctx: EntryContext) -> Iterator[Problem]:
    """Bits 31:16 of the GDTR and IDTR limits must be 0: the limits are 16-bit."""
    for encoding in (f.GUEST_GDTR_LIMIT, f.GUEST_IDTR_LIMIT):
        if ctx[encoding] > 0xFFFF:
            yield "a descriptor-table limit exceeds FFFFH", ctx.named(encoding)
