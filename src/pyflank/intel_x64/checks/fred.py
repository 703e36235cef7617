"""Flexible return and event delivery (FRED) state: the rules the newest SDM editions
add for the IA32_FRED_* fields ("load FRED" on VM exit and VM entry), for CR4.FRED,
and for a guest that will use FRED transitions (IA-32e mode with CR4.FRED 1).

The FRED MSR rules apply where the side runs 64-bit code: a 64-bit host
("host address-space size" 1) or an IA-32e mode guest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import NamedTuple

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule
from pyflank.intel_x64.checks.segments import CS, SS, dpl

_host = partial(rule, group=CheckGroup.HOST_STATE, section="27.2.2")
_host_size = partial(rule, group=CheckGroup.HOST_STATE, section="27.2.4")
_guest = partial(rule, group=CheckGroup.GUEST_CONTROL_REGISTERS, section="27.3.1.1")
_guest_segments = partial(rule, group=CheckGroup.GUEST_SEGMENT_REGISTERS, section="27.3.1.2")
_guest_rflags = partial(rule, group=CheckGroup.GUEST_RIP_RFLAGS, section="27.3.1.4")
_guest_non_register = partial(rule, group=CheckGroup.GUEST_NON_REGISTER_STATE, section="27.3.1.5")

CONFIG_RESERVED = 1 << 11 | 0x30 | 1 << 2  # bits 11, 5:4 and 2 of IA32_FRED_CONFIG
CONFIG_BASE = ~0xFFF  # bits 63:12: the linear address of the event-delivery entry point
RSP_ALIGNMENT = 0x3F  # bits 5:0: FRED stacks are 64-byte aligned
SSP_ALIGNMENT = 0x7  # bits 2:0: FRED shadow stacks are 8-byte aligned


class _FredState(NamedTuple):
    """One side's FRED fields and whether VM entry (or exit) checks them."""

    name: str
    loaded: Callable[[EntryContext], bool]
    config: int
    rsps: tuple[int, int, int]
    ssps: tuple[int, int, int]


GUEST = _FredState(
    "guest",
    lambda ctx: ctx.ia32e_guest and bool(ctx.entry & b.ENTRY_LOAD_FRED),
    f.GUEST_IA32_FRED_CONFIG,
    (f.GUEST_IA32_FRED_RSP1, f.GUEST_IA32_FRED_RSP2, f.GUEST_IA32_FRED_RSP3),
    (f.GUEST_IA32_FRED_SSP1, f.GUEST_IA32_FRED_SSP2, f.GUEST_IA32_FRED_SSP3),
)
HOST = _FredState(
    "host",
    lambda ctx: bool(ctx.exit & b.EXIT_HOST_64 and ctx.exit2 & b.EXIT2_LOAD_FRED),
    f.HOST_IA32_FRED_CONFIG,
    (f.HOST_IA32_FRED_RSP1, f.HOST_IA32_FRED_RSP2, f.HOST_IA32_FRED_RSP3),
    (f.HOST_IA32_FRED_SSP1, f.HOST_IA32_FRED_SSP2, f.HOST_IA32_FRED_SSP3),
)


def _config_reserved(ctx: EntryContext, side: _FredState) -> Iterator[Problem]:
    if side.loaded(ctx) and ctx[side.config] & CONFIG_RESERVED:
        yield f"reserved {side.name} IA32_FRED_CONFIG bits are set", ctx.named(side.config)


def _misaligned(
    ctx: EntryContext, side: _FredState, encodings: tuple[int, ...], mask: int, what: str
) -> Iterator[Problem]:
    if side.loaded(ctx):
        for encoding in encodings:
            if ctx[encoding] & mask:
                yield f"a {side.name} {what} is not {mask + 1}-byte aligned", ctx.named(encoding)


def _noncanonical(ctx: EntryContext, side: _FredState) -> Iterator[Problem]:
    if side.loaded(ctx):
        values = {side.config: ctx[side.config] & CONFIG_BASE}
        values |= {encoding: ctx[encoding] for encoding in (*side.rsps, *side.ssps)}
        for encoding, value in values.items():
            if not ctx.is_canonical(value):
                yield f"a {side.name} FRED address is not canonical", ctx.named(encoding)


# -- host ("load FRED" secondary VM-exit control, 64-bit host) -------------------------
@_host("host.fred.config_reserved")
def host_config_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "load FRED" (secondary VM-exit) 1 and a 64-bit host, bits 11, 5:4 and 2
    of the host IA32_FRED_CONFIG must be 0."""
    yield from _config_reserved(ctx, HOST)


@_host("host.fred.rsp_alignment")
def host_rsp_alignment(ctx: EntryContext) -> Iterator[Problem]:
    """With "load FRED" (secondary VM-exit) 1 and a 64-bit host, bits 5:0 of the host
    IA32_FRED_RSP1-3 must be 0."""
    yield from _misaligned(ctx, HOST, HOST.rsps, RSP_ALIGNMENT, "FRED stack pointer")


@_host("host.fred.ssp_alignment")
def host_ssp_alignment(ctx: EntryContext) -> Iterator[Problem]:
    """With "load FRED" (secondary VM-exit) 1 and a 64-bit host, bits 2:0 of the host
    IA32_FRED_SSP1-3 must be 0."""
    yield from _misaligned(ctx, HOST, HOST.ssps, SSP_ALIGNMENT, "FRED shadow-stack pointer")


@_host("host.fred.canonical")
def host_canonical(ctx: EntryContext) -> Iterator[Problem]:
    """With "load FRED" (secondary VM-exit) 1 and a 64-bit host, the host
    IA32_FRED_CONFIG bits 63:12 and IA32_FRED_RSP1-3 and SSP1-3 must be canonical."""
    yield from _noncanonical(ctx, HOST)


@_host_size("host.address_space.legacy_host_fred")
def legacy_host_fred(ctx: EntryContext) -> Iterator[Problem]:
    """With "host address-space size" 0, host CR4.FRED (bit 32) must be 0."""
    if not ctx.exit & b.EXIT_HOST_64 and ctx[f.HOST_CR4] & b.CR4_FRED:
        yield "a 32-bit host cannot use FRED", ctx.named(f.VM_EXIT_CONTROLS, f.HOST_CR4)


# -- guest ("load FRED" VM-entry control, IA-32e mode guest) ---------------------------
@_guest("guest.cr4.fred_needs_ia32e")
def fred_needs_ia32e(ctx: EntryContext) -> Iterator[Problem]:
    """With "IA-32e mode guest" 0, guest CR4.FRED (bit 32) must be 0."""
    if not ctx.ia32e_guest and ctx.cr4 & b.CR4_FRED:
        yield "CR4.FRED outside IA-32e mode", ctx.named(f.GUEST_CR4, f.VM_ENTRY_CONTROLS)


@_guest("guest.fred.config_reserved")
def guest_config_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "load FRED" (VM-entry) 1 and an IA-32e mode guest, bits 11, 5:4 and 2 of
    the guest IA32_FRED_CONFIG must be 0."""
    yield from _config_reserved(ctx, GUEST)


@_guest("guest.fred.rsp_alignment")
def guest_rsp_alignment(ctx: EntryContext) -> Iterator[Problem]:
    """With "load FRED" (VM-entry) 1 and an IA-32e mode guest, bits 5:0 of the guest
    IA32_FRED_RSP1-3 must be 0."""
    yield from _misaligned(ctx, GUEST, GUEST.rsps, RSP_ALIGNMENT, "FRED stack pointer")


@_guest("guest.fred.ssp_alignment")
def guest_ssp_alignment(ctx: EntryContext) -> Iterator[Problem]:
    """With "load FRED" (VM-entry) 1 and an IA-32e mode guest, bits 2:0 of the guest
    IA32_FRED_SSP1-3 must be 0."""
    yield from _misaligned(ctx, GUEST, GUEST.ssps, SSP_ALIGNMENT, "FRED shadow-stack pointer")


@_guest("guest.fred.canonical")
def guest_canonical(ctx: EntryContext) -> Iterator[Problem]:
    """With "load FRED" (VM-entry) 1 and an IA-32e mode guest, the guest
    IA32_FRED_CONFIG bits 63:12 and IA32_FRED_RSP1-3 and SSP1-3 must be canonical."""
    yield from _noncanonical(ctx, GUEST)


# -- a guest that will use FRED transitions ---------------------------------------------
def _fred_cpl(ctx: EntryContext) -> int | None:
    """SS.DPL (the CPL) when the guest will use FRED transitions, else None."""
    return dpl(ctx[SS.access_rights]) if ctx.fred_guest else None


@_guest_segments("guest.fred.ss_dpl")
def fred_ss_dpl(ctx: EntryContext) -> Iterator[Problem]:
    """If the guest will use FRED transitions, SS.DPL must be 0 or 3 (FRED knows no
    rings 1 and 2)."""
    if _fred_cpl(ctx) in (1, 2):
        yield "a FRED guest at CPL 1 or 2", ctx.named(SS.access_rights, f.GUEST_CR4)


@_guest_segments("guest.fred.cs_l")
def fred_cs_long(ctx: EntryContext) -> Iterator[Problem]:
    """If the guest will use FRED transitions and SS.DPL is 0, CS.L (bit 13) must be 1:
    FRED runs ring 0 in 64-bit mode only."""
    if _fred_cpl(ctx) == 0 and not ctx[CS.access_rights] & b.AR_L:
        fields = ctx.named(SS.access_rights, CS.access_rights, f.GUEST_CR4)
        yield "a FRED guest at CPL 0 in compatibility mode", fields


@_guest_rflags("guest.fred.iopl")
def fred_iopl(ctx: EntryContext) -> Iterator[Problem]:
    """If the guest will use FRED transitions and SS.DPL is 3, RFLAGS.IOPL must be 0."""
    if _fred_cpl(ctx) == 3 and ctx.rflags & b.RFLAGS_IOPL:
        yield "a FRED guest at CPL 3 with IOPL > 0", ctx.named(f.GUEST_RFLAGS, SS.access_rights)


@_guest_non_register("guest.fred.sti_blocking")
def fred_sti_blocking(ctx: EntryContext) -> Iterator[Problem]:
    """If the guest will use FRED transitions and SS.DPL is 3, blocking by STI
    (interruptibility bit 0) must be 0."""
    if _fred_cpl(ctx) == 3 and ctx[f.GUEST_INTERRUPTIBILITY_STATE] & b.BLOCKING_BY_STI:
        fields = ctx.named(f.GUEST_INTERRUPTIBILITY_STATE, SS.access_rights)
        yield "a FRED guest at CPL 3 under STI blocking", fields
