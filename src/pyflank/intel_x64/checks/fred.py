"""Flexible return and event delivery (FRED) state: the rules the newest SDM editions
add for the IA32_FRED_* fields ("load FRED" on VM exit and VM entry), for CR4.FRED,
and for a guest that will use FRED transitions (IA-32e mode with CR4.FRED 1).

The FRED MSR rules apply where the side runs 64-bit code: a 64-bit host
("host address-space size" 1) or an IA-32e mode guest.  CR4.FRED outside 64-bit
code is with its PCIDE sibling in ``address_space`` (host) and ``guest_registers``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import NamedTuple

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, applied, rule
from pyflank.intel_x64.checks.segments import CS, SS, dpl

_host = partial(rule, group=CheckGroup.HOST_STATE, section="27.2.2")
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
    control: str  # the control that loads the fields, and where the rules apply
    loaded: Callable[[EntryContext], bool]
    config: int
    rsps: tuple[int, int, int]
    ssps: tuple[int, int, int]


GUEST = _FredState(
    "guest",
    '"load FRED" (VM-entry) 1 and an IA-32e mode guest',
    lambda ctx: ctx.ia32e_guest and bool(ctx.entry & b.ENTRY_LOAD_FRED),
    f.GUEST_IA32_FRED_CONFIG,
    (f.GUEST_IA32_FRED_RSP1, f.GUEST_IA32_FRED_RSP2, f.GUEST_IA32_FRED_RSP3),
    (f.GUEST_IA32_FRED_SSP1, f.GUEST_IA32_FRED_SSP2, f.GUEST_IA32_FRED_SSP3),
)
HOST = _FredState(
    "host",
    '"load FRED" (secondary VM-exit) 1 and a 64-bit host',
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


def _rsp_alignment(ctx: EntryContext, side: _FredState) -> Iterator[Problem]:
    yield from _misaligned(ctx, side, side.rsps, RSP_ALIGNMENT, "FRED stack pointer")


def _ssp_alignment(ctx: EntryContext, side: _FredState) -> Iterator[Problem]:
    yield from _misaligned(ctx, side, side.ssps, SSP_ALIGNMENT, "FRED shadow-stack pointer")


def _noncanonical(ctx: EntryContext, side: _FredState) -> Iterator[Problem]:
    if side.loaded(ctx):
        values = {side.config: ctx[side.config] & CONFIG_BASE}
        values |= {encoding: ctx[encoding] for encoding in (*side.rsps, *side.ssps)}
        for encoding, value in values.items():
            if not ctx.is_canonical(value):
                yield f"a {side.name} FRED address is not canonical", ctx.named(encoding)


# -- the rules host and guest share ("load FRED" on VM exit / VM entry) ----------------
_SHARED = (
    ("config_reserved", _config_reserved, "bits 11, 5:4 and 2 of the {side} IA32_FRED_CONFIG"
     " must be 0."),
    ("rsp_alignment", _rsp_alignment, "bits 5:0 of the {side} IA32_FRED_RSP1-3 must be 0."),
    ("ssp_alignment", _ssp_alignment, "bits 2:0 of the {side} IA32_FRED_SSP1-3 must be 0."),
    ("canonical", _noncanonical, "bits 63:12 of the {side} IA32_FRED_CONFIG and its"
     " IA32_FRED_RSP1-3 and SSP1-3 must be canonical."),
)  # fmt: skip
for _side, _register in ((HOST, _host), (GUEST, _guest)):
    for _name, _helper, _text in _SHARED:
        _doc = f"With {_side.control}, " + _text.format(side=_side.name)
        _register(f"{_side.name}.fred.{_name}")(applied(_helper, _side, _doc))


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
