"""Control-flow enforcement (CET) state: the rules later SDM editions add to 27.2.2,
27.2.4, 27.3.1.1 and 27.3.1.4 for the host and guest IA32_S_CET, SSP and
IA32_INTERRUPT_SSP_TABLE_ADDR fields ("load CET state" on VM exit and VM entry).

Host and guest share most rules; they differ in canonicality.  VM exit loads the
host values into a running 64-bit (or 32-bit) host, so host IA32_S_CET and SSP
must be canonical (or have bits 63:32 clear).  For the guest only the SSP's bits
63:N must be identical (N the linear-address width), and IA32_S_CET is not
checked for canonicality at all.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from functools import partial
from typing import NamedTuple

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext, upper_bits_identical
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, applied, rule

_host = partial(rule, group=CheckGroup.HOST_STATE, section="27.2.2")
_host_size = partial(rule, group=CheckGroup.HOST_STATE, section="27.2.4")
_guest = partial(rule, group=CheckGroup.GUEST_CONTROL_REGISTERS, section="27.3.1.1")
_guest_ssp = partial(rule, group=CheckGroup.GUEST_RIP_RFLAGS, section="27.3.1.4")

S_CET_RESERVED = 0x3C0  # bits 9:6
S_CET_SUPPRESS, S_CET_TRACKER = 1 << 10, 1 << 11
SSP_ALIGNMENT = 0x3  # bits 1:0: a shadow-stack pointer is 4-byte aligned


class _CetState(NamedTuple):
    """One side's CET fields and whether VM entry (or exit) loads them."""

    name: str
    control: str
    loaded: Callable[[EntryContext], bool]
    s_cet: int
    ssp: int
    ssp_table: int


GUEST = _CetState(
    "guest",
    "VM-entry",
    lambda ctx: bool(ctx.entry & b.ENTRY_LOAD_CET),
    f.GUEST_IA32_S_CET,
    f.GUEST_SSP,
    f.GUEST_IA32_INTERRUPT_SSP_TABLE_ADDR,
)
HOST = _CetState(
    "host",
    "VM-exit",
    lambda ctx: bool(ctx.exit & b.EXIT_LOAD_CET),
    f.HOST_IA32_S_CET,
    f.HOST_SSP,
    f.HOST_IA32_INTERRUPT_SSP_TABLE_ADDR,
)


def _s_cet_reserved(ctx: EntryContext, side: _CetState) -> Iterator[Problem]:
    if side.loaded(ctx) and ctx[side.s_cet] & S_CET_RESERVED:
        yield f"reserved {side.name} IA32_S_CET bits 9:6 are set", ctx.named(side.s_cet)


def _suppress_and_tracker(ctx: EntryContext, side: _CetState) -> Iterator[Problem]:
    both = S_CET_SUPPRESS | S_CET_TRACKER
    if side.loaded(ctx) and ctx[side.s_cet] & both == both:
        yield f"{side.name} IA32_S_CET sets both SUPPRESS and TRACKER", ctx.named(side.s_cet)


def _ssp_alignment(ctx: EntryContext, side: _CetState) -> Iterator[Problem]:
    if side.loaded(ctx) and ctx[side.ssp] & SSP_ALIGNMENT:
        yield f"the {side.name} SSP is not 4-byte aligned", ctx.named(side.ssp)


def _ssp_table_canonical(ctx: EntryContext, side: _CetState) -> Iterator[Problem]:
    if side.loaded(ctx) and not ctx.is_canonical(ctx[side.ssp_table]):
        message = f"the {side.name} interrupt SSP table address is not canonical"
        yield message, ctx.named(side.ssp_table)


# -- CR4.CET needs CR0.WP -------------------------------------------------------------
@_host("host.cr4.cet_needs_wp")
def host_cet_needs_wp(ctx: EntryContext) -> Iterator[Problem]:
    """If host CR4.CET (bit 23) is 1, host CR0.WP (bit 16) must be 1."""
    if ctx[f.HOST_CR4] & b.CR4_CET and not ctx[f.HOST_CR0] & b.CR0_WP:
        yield "host CR4.CET needs CR0.WP", ctx.named(f.HOST_CR0, f.HOST_CR4)


@_guest("guest.cr4.cet_needs_wp")
def guest_cet_needs_wp(ctx: EntryContext) -> Iterator[Problem]:
    """If guest CR4.CET (bit 23) is 1, guest CR0.WP (bit 16) must be 1."""
    if ctx.cr4 & b.CR4_CET and not ctx.cr0 & b.CR0_WP:
        yield "CR4.CET needs CR0.WP", ctx.named(f.GUEST_CR0, f.GUEST_CR4)


# -- the rules host and guest share ("load CET state" on VM exit / VM entry) -----------
_SHARED = (
    ("s_cet_reserved", _s_cet_reserved, "reserved bits 9:6 of the {side} IA32_S_CET must be 0."),
    (
        "s_cet_suppress_tracker",
        _suppress_and_tracker,
        "bits 10 (SUPPRESS) and 11 (TRACKER) of the {side} IA32_S_CET cannot both be 1.",
    ),
    ("ssp_alignment", _ssp_alignment, "bits 1:0 of the {side} SSP must be 0."),
    (
        "canonical",
        _ssp_table_canonical,
        "the {side} IA32_INTERRUPT_SSP_TABLE_ADDR must be canonical.",
    ),
)
for _side, _register in ((HOST, _host), (GUEST, _guest)):
    for _name, _helper, _text in _SHARED:
        _doc = f'With "load CET state" ({_side.control}) 1, ' + _text.format(side=_side.name)
        _register(f"{_side.name}.cet.{_name}")(applied(_helper, _side, _doc))


# -- host only ---------------------------------------------------------------------------
@_host_size("host.address_space.cet_64bit")
def host_cet_canonical_64bit(ctx: EntryContext) -> Iterator[Problem]:
    """With "load CET state" and "host address-space size" (VM-exit) 1, the host
    IA32_S_CET and SSP must be canonical."""
    if HOST.loaded(ctx) and ctx.exit & b.EXIT_HOST_64:
        for encoding in (HOST.s_cet, HOST.ssp):
            if not ctx.is_canonical(ctx[encoding]):
                yield "a 64-bit host's CET value is not canonical", ctx.named(encoding)


@_host_size("host.address_space.cet_32bit")
def host_cet_upper_32bit(ctx: EntryContext) -> Iterator[Problem]:
    """With "load CET state" 1 and "host address-space size" 0, bits 63:32 of the
    host IA32_S_CET and SSP must be 0."""
    if HOST.loaded(ctx) and not ctx.exit & b.EXIT_HOST_64:
        for encoding in (HOST.s_cet, HOST.ssp):
            if ctx[encoding] >> 32:
                fields = ctx.named(encoding, f.VM_EXIT_CONTROLS)
                yield "a 32-bit host's CET value sets bits 63:32", fields


# -- guest only --------------------------------------------------------------------------
@_guest_ssp("guest.ssp.upper_bits")
def guest_ssp_upper_bits(ctx: EntryContext) -> Iterator[Problem]:
    """With "load CET state" (VM-entry) 1 and N < 64 linear-address bits, bits 63:N
    of the guest SSP must be identical (as for RIP, not full canonicality)."""
    if GUEST.loaded(ctx) and not upper_bits_identical(ctx[GUEST.ssp], ctx.linear_width):
        yield f"SSP bits 63:{ctx.linear_width} are not identical", ctx.named(GUEST.ssp)
