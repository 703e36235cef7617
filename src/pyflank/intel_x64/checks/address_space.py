"""SDM 26.2.4: checks related to address-space size (controls against host state).

"In IA-32e mode" means the processor doing the VM entry, i.e. pyflank's VMM,
which is 64-bit code; ``EntryContext.host_in_ia32e_mode`` lets a caller model a
32-bit VMM.  The SDM states "IA-32e mode guest needs a 64-bit host" twice (once
for a processor outside IA-32e mode, once for host address-space size 0), so a
32-bit VMM entering a 64-bit guest breaks both rules at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule

_size = partial(rule, group=CheckGroup.HOST_STATE, section="26.2.4")
_size_later = partial(rule, group=CheckGroup.HOST_STATE, section="27.2.4")


def _mode(ctx: EntryContext) -> dict[str, int]:
    # Stands in the report for the processor's own IA32_EFER.LMA.
    return {"processor_ia32e_mode": int(ctx.host_in_ia32e_mode)}


@_size("host.address_space.legacy_processor_guest")
def legacy_processor_guest(ctx: EntryContext) -> Iterator[Problem]:
    """Outside IA-32e mode (IA32_EFER.LMA = 0), "IA-32e mode guest" must be 0."""
    if not ctx.host_in_ia32e_mode and ctx.ia32e_guest:
        yield (
            "a 32-bit VMM cannot enter an IA-32e mode guest",
            ctx.named(f.VM_ENTRY_CONTROLS) | _mode(ctx),
        )


@_size("host.address_space.legacy_processor_host")
def legacy_processor_host(ctx: EntryContext) -> Iterator[Problem]:
    """Outside IA-32e mode, "host address-space size" must be 0."""
    if not ctx.host_in_ia32e_mode and ctx.exit & b.EXIT_HOST_64:
        yield (
            "a 32-bit VMM cannot return to a 64-bit host",
            ctx.named(f.VM_EXIT_CONTROLS) | _mode(ctx),
        )


@_size("host.address_space.ia32e_processor_host")
def ia32e_processor_host(ctx: EntryContext) -> Iterator[Problem]:
    """In IA-32e mode (IA32_EFER.LMA = 1), "host address-space size" must be 1."""
    if ctx.host_in_ia32e_mode and not ctx.exit & b.EXIT_HOST_64:
        yield (
            "a 64-bit VMM must return to a 64-bit host",
            ctx.named(f.VM_EXIT_CONTROLS) | _mode(ctx),
        )


@_size("host.address_space.legacy_host_guest")
def legacy_host_guest(ctx: EntryContext) -> Iterator[Problem]:
    """With "host address-space size" 0, "IA-32e mode guest" must be 0."""
    if not ctx.exit & b.EXIT_HOST_64 and ctx.ia32e_guest:
        yield (
            "a 32-bit host cannot have an IA-32e mode guest",
            ctx.named(f.VM_EXIT_CONTROLS, f.VM_ENTRY_CONTROLS),
        )


def _cr4_bit_of_32bit_host(ctx: EntryContext, bit: int, message: str) -> Iterator[Problem]:
    if not ctx.exit & b.EXIT_HOST_64 and ctx[f.HOST_CR4] & bit:
        yield message, ctx.named(f.VM_EXIT_CONTROLS, f.HOST_CR4)


@_size("host.address_space.legacy_host_pcide")
def legacy_host_pcide(ctx: EntryContext) -> Iterator[Problem]:
    """With "host address-space size" 0, host CR4.PCIDE (bit 17) must be 0."""
    yield from _cr4_bit_of_32bit_host(ctx, b.CR4_PCIDE, "a 32-bit host cannot use PCIDs")


@_size_later("host.address_space.legacy_host_fred")
def legacy_host_fred(ctx: EntryContext) -> Iterator[Problem]:
    """With "host address-space size" 0, host CR4.FRED (bit 32) must be 0."""
    yield from _cr4_bit_of_32bit_host(ctx, b.CR4_FRED, "a 32-bit host cannot use FRED")


@_size("host.address_space.legacy_host_rip")
def legacy_host_rip(ctx: EntryContext) -> Iterator[Problem]:
    """With "host address-space size" 0, bits 63:32 of the host RIP field must be 0."""
    if not ctx.exit & b.EXIT_HOST_64 and ctx[f.HOST_RIP] >> 32:
        yield "a 32-bit host RIP sets bits 63:32", ctx.named(f.VM_EXIT_CONTROLS, f.HOST_RIP)


@_size("host.address_space.host_pae")
def host_pae(ctx: EntryContext) -> Iterator[Problem]:
    """With "host address-space size" 1, host CR4.PAE (bit 5) must be 1."""
    if ctx.exit & b.EXIT_HOST_64 and not ctx[f.HOST_CR4] & b.CR4_PAE:
        yield "a 64-bit host needs CR4.PAE", ctx.named(f.VM_EXIT_CONTROLS, f.HOST_CR4)


@_size("host.address_space.host_rip_canonical")
def host_rip_canonical(ctx: EntryContext) -> Iterator[Problem]:
    """With "host address-space size" 1, the host RIP field must be canonical."""
    if ctx.exit & b.EXIT_HOST_64 and not ctx.is_canonical(ctx[f.HOST_RIP]):
        yield "the 64-bit host RIP is not canonical", ctx.named(f.VM_EXIT_CONTROLS, f.HOST_RIP)
