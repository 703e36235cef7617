"""SDM 26.2.2 and 26.2.3: checks on the host-state area."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule
from pyflank.intel_x64.msrs import pat_bad_entries

_registers = partial(rule, group=CheckGroup.HOST_STATE, section="26.2.2")
_registers_later = partial(rule, group=CheckGroup.HOST_STATE, section="27.2.2")
_segments = partial(rule, group=CheckGroup.HOST_STATE, section="26.2.3")

# VM exits leave CR0.NW and CR0.CD alone, so VM entry does not check them.
_CR0_UNCHECKED = b.CR0_NW | b.CR0_CD


def fixed_bits(value: int, fixed0: int, fixed1: int, unchecked: int = 0) -> int:
    """Bits of a CR0/CR4 value that break the IA32_VMX_CRn_FIXED0/1 pair (SDM A.7/A.8)."""
    return (fixed0 & ~value | value & ~fixed1) & ~unchecked & b.MASK64


@_registers("host.cr0.fixed_bits")
def host_cr0_fixed(ctx: EntryContext) -> Iterator[Problem]:
    """The host CR0 field must not set any bit to a value VMX operation does not
    support (IA32_VMX_CR0_FIXED0/1); NW and CD are not checked."""
    fixed0, fixed1 = ctx.msr(msrs.IA32_VMX_CR0_FIXED0), ctx.msr(msrs.IA32_VMX_CR0_FIXED1)
    bad = fixed_bits(ctx[f.HOST_CR0], fixed0, fixed1, _CR0_UNCHECKED)
    if bad:
        fields = ctx.named(f.HOST_CR0)
        fields |= {"IA32_VMX_CR0_FIXED0": fixed0, "IA32_VMX_CR0_FIXED1": fixed1}
        yield f"host CR0 bits {bad:#x} break the VMX fixed bits", fields


@_registers("host.cr4.fixed_bits")
def host_cr4_fixed(ctx: EntryContext) -> Iterator[Problem]:
    """The host CR4 field must not set any bit to a value VMX operation does not
    support (IA32_VMX_CR4_FIXED0/1)."""
    fixed0, fixed1 = ctx.msr(msrs.IA32_VMX_CR4_FIXED0), ctx.msr(msrs.IA32_VMX_CR4_FIXED1)
    bad = fixed_bits(ctx[f.HOST_CR4], fixed0, fixed1)
    if bad:
        fields = ctx.named(f.HOST_CR4)
        fields |= {"IA32_VMX_CR4_FIXED0": fixed0, "IA32_VMX_CR4_FIXED1": fixed1}
        yield f"host CR4 bits {bad:#x} break the VMX fixed bits", fields


@_registers("host.cr3.width")
def host_cr3_width(ctx: EntryContext) -> Iterator[Problem]:
    """Host CR3 bits 63:52, and bits 51:32 beyond the physical-address width, must
    be 0."""
    if ctx[f.HOST_CR3] >> ctx.physical_width:
        yield "host CR3 sets bits beyond the physical-address width", ctx.named(f.HOST_CR3)


@_registers("host.sysenter.canonical")
def host_sysenter_canonical(ctx: EntryContext) -> Iterator[Problem]:
    """The host IA32_SYSENTER_ESP and IA32_SYSENTER_EIP fields must be canonical."""
    for encoding in (f.HOST_IA32_SYSENTER_ESP, f.HOST_IA32_SYSENTER_EIP):
        if not ctx.is_canonical(ctx[encoding]):
            yield "the host SYSENTER address is not canonical", ctx.named(encoding)


@_registers("host.perf_global_ctrl.reserved")
def host_perf_global_ctrl(ctx: EntryContext) -> Iterator[Problem]:
    """With "load IA32_PERF_GLOBAL_CTRL" (VM-exit) 1, reserved bits of that MSR
    must be 0 in the host field."""
    if ctx.exit & b.EXIT_LOAD_PERF_GLOBAL:
        value = ctx[f.HOST_IA32_PERF_GLOBAL_CTRL]
        if value & ~ctx.perf_global_ctrl_defined:
            yield (
                "reserved IA32_PERF_GLOBAL_CTRL bits are set",
                ctx.named(f.HOST_IA32_PERF_GLOBAL_CTRL),
            )


@_registers("host.pat.memory_types")
def host_pat(ctx: EntryContext) -> Iterator[Problem]:
    """With "load IA32_PAT" (VM-exit) 1, each byte of the host IA32_PAT field must be
    0 (UC), 1 (WC), 4 (WT), 5 (WP), 6 (WB) or 7 (UC-)."""
    if ctx.exit & b.EXIT_LOAD_PAT:
        bad = pat_bad_entries(ctx[f.HOST_IA32_PAT])
        if bad:
            yield f"host PAT entries {bad} hold no memory type", ctx.named(f.HOST_IA32_PAT)


@_registers("host.efer.reserved")
def host_efer_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "load IA32_EFER" (VM-exit) 1, reserved IA32_EFER bits must be 0."""
    if ctx.exit & b.EXIT_LOAD_EFER and ctx[f.HOST_IA32_EFER] & ~msrs.EFER_DEFINED:
        yield "reserved host IA32_EFER bits are set", ctx.named(f.HOST_IA32_EFER)


@_registers("host.efer.address_space_size")
def host_efer_mode(ctx: EntryContext) -> Iterator[Problem]:
    """With "load IA32_EFER" (VM-exit) 1, the LMA and LME bits of the host field must
    each equal the "host address-space size" VM-exit control."""
    if ctx.exit & b.EXIT_LOAD_EFER:
        efer = ctx[f.HOST_IA32_EFER]
        want = bool(ctx.exit & b.EXIT_HOST_64)
        if bool(efer & b.EFER_LMA) != want or bool(efer & b.EFER_LME) != want:
            fields = ctx.named(f.HOST_IA32_EFER, f.VM_EXIT_CONTROLS)
            yield "host EFER.LMA/LME disagree with the host address-space size", fields


@_registers_later("host.pkrs.reserved")
def host_pkrs_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "load PKRS" (VM-exit) 1, bits 63:32 of the host IA32_PKRS field must be 0."""
    if ctx.exit & b.EXIT_LOAD_PKRS and ctx[f.HOST_IA32_PKRS] >> 32:
        yield "reserved host IA32_PKRS bits 63:32 are set", ctx.named(f.HOST_IA32_PKRS)


_HOST_SELECTORS = (
    f.HOST_CS_SELECTOR,
    f.HOST_SS_SELECTOR,
    f.HOST_DS_SELECTOR,
    f.HOST_ES_SELECTOR,
    f.HOST_FS_SELECTOR,
    f.HOST_GS_SELECTOR,
    f.HOST_TR_SELECTOR,
)


@_segments("host.selector.rpl_ti")
def host_selector_rpl_ti(ctx: EntryContext) -> Iterator[Problem]:
    """In the host selector fields for CS, SS, DS, ES, FS, GS and TR, the RPL (bits
    1:0) and TI flag (bit 2) must be 0."""
    for encoding in _HOST_SELECTORS:
        if ctx[encoding] & 0x7:
            yield "a host selector has a non-zero RPL or TI", ctx.named(encoding)


@_segments("host.selector.cs_tr_null")
def host_selector_cs_tr(ctx: EntryContext) -> Iterator[Problem]:
    """The host selector fields for CS and TR cannot be 0000H."""
    for encoding in (f.HOST_CS_SELECTOR, f.HOST_TR_SELECTOR):
        if ctx[encoding] == 0:
            yield "a null host CS or TR selector", ctx.named(encoding)


@_segments("host.selector.ss_null")
def host_selector_ss(ctx: EntryContext) -> Iterator[Problem]:
    """The host SS selector cannot be 0000H if "host address-space size" is 0."""
    if not ctx.exit & b.EXIT_HOST_64 and ctx[f.HOST_SS_SELECTOR] == 0:
        yield "a null host SS for a 32-bit host", ctx.named(f.HOST_SS_SELECTOR, f.VM_EXIT_CONTROLS)


@_segments("host.base.canonical")
def host_bases_canonical(ctx: EntryContext) -> Iterator[Problem]:
    """The host base-address fields for FS, GS, GDTR, IDTR and TR must be canonical."""
    for encoding in (
        f.HOST_FS_BASE,
        f.HOST_GS_BASE,
        f.HOST_GDTR_BASE,
        f.HOST_IDTR_BASE,
        f.HOST_TR_BASE,
    ):
        if not ctx.is_canonical(ctx[encoding]):
            yield "a host base address is not canonical", ctx.named(encoding)
