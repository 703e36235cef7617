"""SDM 26.3.1.1: checks on guest control registers, debug registers and MSRs."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.host_state import fixed_bits
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule
from pyflank.intel_x64.msrs import pat_bad_entries

_rule = partial(rule, group=CheckGroup.GUEST_CONTROL_REGISTERS, section="26.3.1.1")
_later = partial(rule, group=CheckGroup.GUEST_CONTROL_REGISTERS, section="27.3.1.1")

_BNDCFGS_RESERVED = 0xFFC  # bits 11:2


@_rule("guest.cr0.fixed_bits")
def cr0_fixed(ctx: EntryContext) -> Iterator[Problem]:
    """Guest CR0 must not set any bit to a value VMX operation does not support,
    except that PE and PG go unchecked under "unrestricted guest" and NW and CD
    are never checked (VM entry does not change them)."""
    unchecked = b.CR0_NW | b.CR0_CD
    if ctx.unrestricted:
        unchecked |= b.CR0_PE | b.CR0_PG
    fixed0, fixed1 = ctx.msr(msrs.IA32_VMX_CR0_FIXED0), ctx.msr(msrs.IA32_VMX_CR0_FIXED1)
    bad = fixed_bits(ctx.cr0, fixed0, fixed1, unchecked)
    if bad:
        fields = ctx.named(f.GUEST_CR0)
        fields |= {"IA32_VMX_CR0_FIXED0": fixed0, "IA32_VMX_CR0_FIXED1": fixed1}
        yield f"guest CR0 bits {bad:#x} break the VMX fixed bits", fields


@_rule("guest.cr0.pg_requires_pe")
def cr0_pg_requires_pe(ctx: EntryContext) -> Iterator[Problem]:
    """If guest CR0.PG (bit 31) is 1, CR0.PE (bit 0) must be 1: paging needs
    protected mode (reachable only with "unrestricted guest", where the fixed
    bits do not force PE)."""
    if ctx.cr0 & b.CR0_PG and not ctx.cr0 & b.CR0_PE:
        yield "CR0.PG is set without CR0.PE", ctx.named(f.GUEST_CR0)


@_rule("guest.cr4.fixed_bits")
def cr4_fixed(ctx: EntryContext) -> Iterator[Problem]:
    """Guest CR4 must not set any bit to a value VMX operation does not support."""
    fixed0, fixed1 = ctx.msr(msrs.IA32_VMX_CR4_FIXED0), ctx.msr(msrs.IA32_VMX_CR4_FIXED1)
    bad = fixed_bits(ctx.cr4, fixed0, fixed1)
    if bad:
        fields = ctx.named(f.GUEST_CR4)
        fields |= {"IA32_VMX_CR4_FIXED0": fixed0, "IA32_VMX_CR4_FIXED1": fixed1}
        yield f"guest CR4 bits {bad:#x} break the VMX fixed bits", fields


@_rule("guest.debugctl.reserved")
def debugctl_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "load debug controls" 1, reserved IA32_DEBUGCTL bits must be 0."""
    if ctx.entry & b.ENTRY_LOAD_DEBUG and ctx[f.GUEST_IA32_DEBUGCTL] & ~msrs.DEBUGCTL_DEFINED:
        yield "reserved IA32_DEBUGCTL bits are set", ctx.named(f.GUEST_IA32_DEBUGCTL)


@_rule("guest.ia32e.paging")
def ia32e_needs_paging(ctx: EntryContext) -> Iterator[Problem]:
    """With "IA-32e mode guest" 1, guest CR0.PG and CR4.PAE must both be 1."""
    if ctx.ia32e_guest and not (ctx.cr0 & b.CR0_PG and ctx.cr4 & b.CR4_PAE):
        fields = ctx.named(f.GUEST_CR0, f.GUEST_CR4, f.VM_ENTRY_CONTROLS)
        yield "an IA-32e mode guest needs CR0.PG and CR4.PAE", fields


def _cr4_bit_outside_ia32e(ctx: EntryContext, bit: int, message: str) -> Iterator[Problem]:
    if not ctx.ia32e_guest and ctx.cr4 & bit:
        yield message, ctx.named(f.GUEST_CR4, f.VM_ENTRY_CONTROLS)


@_rule("guest.cr4.pcide")
def pcide_needs_ia32e(ctx: EntryContext) -> Iterator[Problem]:
    """With "IA-32e mode guest" 0, guest CR4.PCIDE (bit 17) must be 0."""
    yield from _cr4_bit_outside_ia32e(ctx, b.CR4_PCIDE, "CR4.PCIDE outside IA-32e mode")


@_later("guest.cr4.fred_needs_ia32e")
def fred_needs_ia32e(ctx: EntryContext) -> Iterator[Problem]:
    """With "IA-32e mode guest" 0, guest CR4.FRED (bit 32) must be 0."""
    yield from _cr4_bit_outside_ia32e(ctx, b.CR4_FRED, "CR4.FRED outside IA-32e mode")


@_rule("guest.cr3.width")
def cr3_width(ctx: EntryContext) -> Iterator[Problem]:
    """Guest CR3 bits 63:52, and bits 51:32 beyond the physical-address width, must
    be 0."""
    if ctx[f.GUEST_CR3] >> ctx.physical_width:
        yield "guest CR3 sets bits beyond the physical-address width", ctx.named(f.GUEST_CR3)


@_rule("guest.dr7.upper_bits")
def dr7_upper(ctx: EntryContext) -> Iterator[Problem]:
    """With "load debug controls" 1, bits 63:32 of the DR7 field must be 0."""
    if ctx.entry & b.ENTRY_LOAD_DEBUG and ctx[f.GUEST_DR7] >> 32:
        yield "DR7 bits 63:32 are set", ctx.named(f.GUEST_DR7)


@_rule("guest.sysenter.canonical")
def sysenter_canonical(ctx: EntryContext) -> Iterator[Problem]:
    """The guest IA32_SYSENTER_ESP and IA32_SYSENTER_EIP fields must be canonical."""
    for encoding in (f.GUEST_IA32_SYSENTER_ESP, f.GUEST_IA32_SYSENTER_EIP):
        if not ctx.is_canonical(ctx[encoding]):
            yield "the guest SYSENTER address is not canonical", ctx.named(encoding)


@_rule("guest.perf_global_ctrl.reserved")
def perf_global_ctrl(ctx: EntryContext) -> Iterator[Problem]:
    """With "load IA32_PERF_GLOBAL_CTRL" (VM-entry) 1, reserved bits of that MSR must
    be 0 in the guest field."""
    if (
        ctx.entry & b.ENTRY_LOAD_PERF_GLOBAL
        and ctx[f.GUEST_IA32_PERF_GLOBAL_CTRL] & ~ctx.perf_global_ctrl_defined
    ):
        yield (
            "reserved IA32_PERF_GLOBAL_CTRL bits are set",
            ctx.named(f.GUEST_IA32_PERF_GLOBAL_CTRL),
        )


@_rule("guest.pat.memory_types")
def pat_memory_types(ctx: EntryContext) -> Iterator[Problem]:
    """With "load IA32_PAT" (VM-entry) 1, each byte of the guest IA32_PAT field must
    be 0 (UC), 1 (WC), 4 (WT), 5 (WP), 6 (WB) or 7 (UC-)."""
    if ctx.entry & b.ENTRY_LOAD_PAT:
        bad = pat_bad_entries(ctx[f.GUEST_IA32_PAT])
        if bad:
            yield f"guest PAT entries {bad} hold no memory type", ctx.named(f.GUEST_IA32_PAT)


@_rule("guest.efer.reserved")
def efer_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "load IA32_EFER" (VM-entry) 1, reserved IA32_EFER bits must be 0."""
    if ctx.entry & b.ENTRY_LOAD_EFER and ctx[f.GUEST_IA32_EFER] & ~msrs.EFER_DEFINED:
        yield "reserved guest IA32_EFER bits are set", ctx.named(f.GUEST_IA32_EFER)


@_rule("guest.efer.lma")
def efer_lma(ctx: EntryContext) -> Iterator[Problem]:
    """With "load IA32_EFER" (VM-entry) 1, EFER.LMA (bit 10) must equal "IA-32e mode
    guest"."""
    if (
        ctx.entry & b.ENTRY_LOAD_EFER
        and bool(ctx[f.GUEST_IA32_EFER] & b.EFER_LMA) != ctx.ia32e_guest
    ):
        fields = ctx.named(f.GUEST_IA32_EFER, f.VM_ENTRY_CONTROLS)
        yield "EFER.LMA differs from the IA-32e mode guest control", fields


@_rule("guest.efer.lme")
def efer_lme(ctx: EntryContext) -> Iterator[Problem]:
    """With "load IA32_EFER" (VM-entry) 1 and guest CR0.PG 1, EFER.LME (bit 8) must
    equal EFER.LMA."""
    if ctx.entry & b.ENTRY_LOAD_EFER and ctx.cr0 & b.CR0_PG:
        efer = ctx[f.GUEST_IA32_EFER]
        if bool(efer & b.EFER_LME) != bool(efer & b.EFER_LMA):
            yield (
                "EFER.LME differs from EFER.LMA with paging on",
                ctx.named(f.GUEST_IA32_EFER, f.GUEST_CR0),
            )


@_rule("guest.bndcfgs.reserved")
def bndcfgs_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "load IA32_BNDCFGS" 1, reserved bits 11:2 of that field must be 0."""
    if ctx.entry & b.ENTRY_LOAD_BNDCFGS and ctx[f.GUEST_IA32_BNDCFGS] & _BNDCFGS_RESERVED:
        yield "reserved IA32_BNDCFGS bits are set", ctx.named(f.GUEST_IA32_BNDCFGS)


@_rule("guest.bndcfgs.canonical")
def bndcfgs_canonical(ctx: EntryContext) -> Iterator[Problem]:
    """With "load IA32_BNDCFGS" 1, the base in bits 63:12 must be canonical."""
    if ctx.entry & b.ENTRY_LOAD_BNDCFGS and not ctx.is_canonical(
        ctx[f.GUEST_IA32_BNDCFGS] & ~0xFFF
    ):
        yield "the IA32_BNDCFGS base is not canonical", ctx.named(f.GUEST_IA32_BNDCFGS)


@_later("guest.pkrs.reserved")
def pkrs_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "load PKRS" (VM-entry) 1, bits 63:32 of the guest IA32_PKRS field must be 0."""
    if ctx.entry & b.ENTRY_LOAD_PKRS and ctx[f.GUEST_IA32_PKRS] >> 32:
        yield "reserved guest IA32_PKRS bits 63:32 are set", ctx.named(f.GUEST_IA32_PKRS)


# IA32_LBR_CTL: LBREn; OS and USR where CPUID.1CH:EBX[0] reports CPL filtering;
# CALL_STACK where EBX[2] reports call-stack mode; the branch-type bits 22:16 where
# EBX[1] reports branch filtering.  Everything else is reserved.
_LBR_CTL_ENABLE, _LBR_CTL_CPL, _LBR_CTL_CALL_STACK = 1 << 0, 0x6, 1 << 3
_LBR_CTL_BRANCH_TYPES = 0x7F << 16


def lbr_ctl_defined(ctx: EntryContext) -> int:
    """The IA32_LBR_CTL bits this processor's architectural LBRs define."""
    if ctx.cpu.cpuid(0, 0)[0] < 0x1C:
        return _LBR_CTL_ENABLE
    ebx = ctx.cpu.cpuid(0x1C, 0)[1]
    defined = _LBR_CTL_ENABLE
    defined |= _LBR_CTL_CPL if ebx & 1 << 0 else 0
    defined |= _LBR_CTL_BRANCH_TYPES if ebx & 1 << 1 else 0
    defined |= _LBR_CTL_CALL_STACK if ebx & 1 << 2 else 0
    return defined


@_later("guest.lbr_ctl.reserved")
def lbr_ctl_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "load guest IA32_LBR_CTL" 1, bits reserved in IA32_LBR_CTL (per the
    architectural-LBR capabilities of CPUID leaf 1CH) must be 0."""
    if ctx.entry & b.ENTRY_LOAD_LBR_CTL:
        value, defined = ctx[f.GUEST_IA32_LBR_CTL], lbr_ctl_defined(ctx)
        if value & ~defined:
            yield (
                f"reserved IA32_LBR_CTL bits {value & ~defined:#x} are set",
                ctx.named(f.GUEST_IA32_LBR_CTL),
            )
