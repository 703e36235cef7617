"""SDM 26.3.1.4: checks on guest RIP and RFLAGS."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext, upper_bits_identical
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule

_rule = partial(rule, group=CheckGroup.GUEST_RIP_RFLAGS, section="26.3.1.4")


def _64bit_code(ctx: EntryContext) -> bool:
    """The guest will run 64-bit code: IA-32e mode with CS.L set."""
    return ctx.ia32e_guest and bool(ctx[f.GUEST_CS_ACCESS_RIGHTS] & b.AR_L)


@_rule("guest.rip.upper_bits")
def rip_upper_bits(ctx: EntryContext) -> Iterator[Problem]:
    """Unless the guest enters 64-bit mode ("IA-32e mode guest" 1 and CS.L 1), RIP
    bits 63:32 must be 0."""
    if not _64bit_code(ctx) and ctx[f.GUEST_RIP] >> 32:
        yield (
            "RIP bits 63:32 are set outside 64-bit mode",
            ctx.named(f.GUEST_RIP, f.GUEST_CS_ACCESS_RIGHTS),
        )


@_rule("guest.rip.canonical")
def rip_canonical(ctx: EntryContext) -> Iterator[Problem]:
    """Entering 64-bit mode with N < 64 linear-address bits, RIP bits 63:N must be
    identical (the SDM asks this, not full canonicality)."""
    if _64bit_code(ctx) and not upper_bits_identical(ctx[f.GUEST_RIP], ctx.linear_width):
        yield f"RIP bits 63:{ctx.linear_width} are not identical", ctx.named(f.GUEST_RIP)


@_rule("guest.rflags.reserved")
def rflags_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """RFLAGS bits 63:22, 15, 5 and 3 must be 0 and bit 1 must be 1."""
    if ctx.rflags & b.RFLAGS_RESERVED0 or not ctx.rflags & b.RFLAGS_FIXED1:
        yield "reserved RFLAGS bits are wrong", ctx.named(f.GUEST_RFLAGS)


@_rule("guest.rflags.vm")
def rflags_vm(ctx: EntryContext) -> Iterator[Problem]:
    """RFLAGS.VM (bit 17) must be 0 for an IA-32e mode guest or when CR0.PE is 0."""
    if ctx.v8086 and (ctx.ia32e_guest or not ctx.cr0 & b.CR0_PE):
        yield (
            "virtual-8086 mode needs protected mode outside IA-32e mode",
            ctx.named(f.GUEST_RFLAGS, f.GUEST_CR0, f.VM_ENTRY_CONTROLS),
        )


@_rule("guest.rflags.if_for_interrupt")
def rflags_if_for_interrupt(ctx: EntryContext) -> Iterator[Problem]:
    """RFLAGS.IF (bit 9) must be 1 when an external interrupt is being injected."""
    if (
        ctx.event_valid
        and ctx.event_type == b.TYPE_EXTERNAL_INTERRUPT
        and not ctx.rflags & b.RFLAGS_IF
    ):
        yield (
            "injecting an external interrupt with IF clear",
            ctx.named(f.GUEST_RFLAGS, f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD),
        )
