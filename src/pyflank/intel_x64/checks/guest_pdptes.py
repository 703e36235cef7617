"""SDM 26.3.1.6: checks on the guest PDPTEs (PAE paging outside IA-32e mode)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule

_rule = partial(rule, group=CheckGroup.GUEST_PDPTES, section="26.3.1.6")

_PDPTES = (f.GUEST_PDPTE0, f.GUEST_PDPTE1, f.GUEST_PDPTE2, f.GUEST_PDPTE3)
_PRESENT = 1 << 0
_RESERVED_LOW = 0x1E6  # bits 2:1 and 8:5


@_rule("guest.pdpte.reserved")
def pdpte_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With PAE paging outside IA-32e mode (CR0.PG 1, CR4.PAE 1, "IA-32e mode guest"
    0) and "enable EPT" 1, each present PDPTE field must have bits 2:1, 8:5 and
    63:MAXPHYADDR clear.  (Without EPT the processor reads the PDPTEs from guest
    memory, which these checks do not see.)"""
    if ctx.ia32e_guest or not ctx.proc2 & b.PROC2_EPT:
        return
    if not (ctx.cr0 & b.CR0_PG and ctx.cr4 & b.CR4_PAE):
        return
    for encoding in _PDPTES:
        entry = ctx[encoding]
        if entry & _PRESENT and (entry & _RESERVED_LOW or entry >> ctx.physical_width):
            yield "a present PDPTE sets reserved bits", ctx.named(encoding)
