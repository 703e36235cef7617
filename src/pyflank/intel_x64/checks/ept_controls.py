"""SDM 26.2.1.1, continued: the EPT-related VM-execution controls and VM functions."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.context import physical_address as _address
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule

_rule = partial(rule, group=CheckGroup.CONTROLS, section="26.2.1.1")
_later = partial(rule, group=CheckGroup.CONTROLS, section="27.2.1.1")

_EPT_MEMORY_TYPES = {0: b.EPT_CAP_UC, 6: b.EPT_CAP_WB}
_EPTP_RESERVED_11_7 = 0xF80
_VMFUNC_EPTP_SWITCHING = 1 << 0


def _eptp(ctx: EntryContext) -> tuple[int, int] | None:
    """The EPTP and the EPT capability MSR, or None when EPT is off."""
    if not ctx.proc2 & b.PROC2_EPT:
        return None
    return ctx[f.EPT_POINTER], ctx.msr(msrs.IA32_VMX_EPT_VPID_CAP)


def _needs_ept(ctx: EntryContext, control: int, name: str) -> Iterator[Problem]:
    if ctx.proc2 & control and not ctx.proc2 & b.PROC2_EPT:
        fields = ctx.named(f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)
        yield f'"{name}" needs "enable EPT"', fields


@_rule("controls.ept.memory_type")
def ept_memory_type(ctx: EntryContext) -> Iterator[Problem]:
    """With "enable EPT" 1, the EPT memory type (EPTP bits 2:0) must be one that
    IA32_VMX_EPT_VPID_CAP reports as supported (UC or WB)."""
    eptp = _eptp(ctx)
    if eptp is not None:
        pointer, capability = eptp
        if not capability & _EPT_MEMORY_TYPES.get(pointer & 0x7, 0):
            fields = ctx.named(f.EPT_POINTER) | {"IA32_VMX_EPT_VPID_CAP": capability}
            yield f"EPT memory type {pointer & 0x7} is not supported", fields


@_rule("controls.ept.walk_length")
def ept_walk_length(ctx: EntryContext) -> Iterator[Problem]:
    """With "enable EPT" 1, EPTP bits 5:3 (walk length - 1) must be 3: a 4-level
    walk (or 4 on processors that report 5-level EPT)."""
    eptp = _eptp(ctx)
    if eptp is not None:
        pointer, capability = eptp
        levels = ((pointer >> 3) & 0x7) + 1
        supported = {4: b.EPT_CAP_WALK_4, 5: b.EPT_CAP_WALK_5}.get(levels, 0)
        # The 2016 text allows only 4 levels; 5-level EPT came later with its own bit.
        if levels != 4 and not capability & supported:
            fields = ctx.named(f.EPT_POINTER) | {"IA32_VMX_EPT_VPID_CAP": capability}
            yield f"an EPT page walk of {levels} levels is not supported", fields


@_rule("controls.ept.accessed_dirty")
def ept_accessed_dirty(ctx: EntryContext) -> Iterator[Problem]:
    """With "enable EPT" 1, EPTP bit 6 (accessed and dirty flags) must be 0 unless
    IA32_VMX_EPT_VPID_CAP bit 21 reports support for them."""
    eptp = _eptp(ctx)
    if eptp is not None:
        pointer, capability = eptp
        if pointer & (1 << 6) and not capability & b.EPT_CAP_ACCESSED_DIRTY:
            fields = ctx.named(f.EPT_POINTER) | {"IA32_VMX_EPT_VPID_CAP": capability}
            yield "EPT accessed/dirty flags are not supported", fields


@_rule("controls.ept.reserved")
def ept_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "enable EPT" 1, EPTP bits 11:7 and bits 63:N (N the physical-address
    width) are reserved and must be 0."""
    if _eptp(ctx) is not None:
        pointer = ctx[f.EPT_POINTER]
        if pointer & _EPTP_RESERVED_11_7 or pointer >> ctx.physical_width:
            yield "reserved EPTP bits are set", ctx.named(f.EPT_POINTER)


@_rule("controls.pml.ept")
def pml_needs_ept(ctx: EntryContext) -> Iterator[Problem]:
    """With "enable PML" 1, "enable EPT" must be 1."""
    yield from _needs_ept(ctx, b.PROC2_PML, "enable PML")


@_rule("controls.pml.address")
def pml_address(ctx: EntryContext) -> Iterator[Problem]:
    """With "enable PML" 1, the PML address must be page aligned and within the
    physical-address width."""
    if ctx.proc2 & b.PROC2_PML:
        yield from _address(ctx, f.PML_ADDRESS, "the PML address")


@_rule("controls.unrestricted_guest.ept")
def unrestricted_guest_needs_ept(ctx: EntryContext) -> Iterator[Problem]:
    """With "unrestricted guest" 1, "enable EPT" must be 1."""
    yield from _needs_ept(ctx, b.PROC2_UNRESTRICTED, "unrestricted guest")


@_rule("controls.vmfunc.reserved")
def vm_function_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "enable VM functions" 1, VM-function controls that IA32_VMX_VMFUNC does
    not report as supported must be 0."""
    if ctx.proc2 & b.PROC2_VMFUNC:
        capability = ctx.msr(msrs.IA32_VMX_VMFUNC)
        bad = ctx[f.VM_FUNCTION_CONTROLS] & ~capability
        if bad:
            fields = ctx.named(f.VM_FUNCTION_CONTROLS) | {"IA32_VMX_VMFUNC": capability}
            yield f"VM functions {bad:#x} are not supported", fields


def _eptp_switching(ctx: EntryContext) -> bool:
    return bool(ctx.proc2 & b.PROC2_VMFUNC and ctx[f.VM_FUNCTION_CONTROLS] & _VMFUNC_EPTP_SWITCHING)


@_rule("controls.vmfunc.eptp_switching_ept")
def eptp_switching_needs_ept(ctx: EntryContext) -> Iterator[Problem]:
    """With VM functions enabled and EPTP switching (VM function 0) on, "enable
    EPT" must be 1."""
    if _eptp_switching(ctx) and not ctx.proc2 & b.PROC2_EPT:
        fields = ctx.named(
            f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, f.VM_FUNCTION_CONTROLS
        )
        yield 'EPTP switching needs "enable EPT"', fields


@_rule("controls.vmfunc.eptp_list")
def eptp_list_address(ctx: EntryContext) -> Iterator[Problem]:
    """With EPTP switching on, the EPTP-list address must be page aligned and within
    the physical-address width."""
    if _eptp_switching(ctx):
        yield from _address(ctx, f.EPTP_LIST_ADDRESS, "the EPTP-list address")


@_rule("controls.ept_violation_ve.address")
def virtualization_exception_address(ctx: EntryContext) -> Iterator[Problem]:
    """With "EPT-violation #VE" 1, the virtualization-exception information address
    must be page aligned and within the physical-address width."""
    if ctx.proc2 & b.PROC2_EPT_VE:
        encoding = f.VIRTUALIZATION_EXCEPTION_INFORMATION_ADDRESS
        yield from _address(ctx, encoding, "the #VE information address")


@_later("controls.mode_based_ept.ept")
def mode_based_execute_needs_ept(ctx: EntryContext) -> Iterator[Problem]:
    """With "mode-based execute control for EPT" 1, "enable EPT" must be 1."""
    yield from _needs_ept(ctx, b.PROC2_MODE_BASED_EPT, "mode-based execute control for EPT")


@_later("controls.sub_page_permissions.ept")
def sub_page_permissions_need_ept(ctx: EntryContext) -> Iterator[Problem]:
    """With "sub-page write permissions for EPT" 1, "enable EPT" must be 1."""
    yield from _needs_ept(ctx, b.PROC2_SUB_PAGE, "sub-page write permissions for EPT")


@_later("controls.sub_page_permissions.table_pointer")
def sub_page_permission_table_pointer(ctx: EntryContext) -> Iterator[Problem]:
    """With "sub-page write permissions for EPT" 1, the sub-page-permission-table
    pointer (SPPTP) must be page aligned and within the physical-address width."""
    if ctx.proc2 & b.PROC2_SUB_PAGE:
        encoding = f.SUB_PAGE_PERMISSION_TABLE_POINTER
        yield from _address(ctx, encoding, "the sub-page-permission-table pointer")


@_later("controls.pt_guest_physical.requirements")
def pt_guest_physical_requirements(ctx: EntryContext) -> Iterator[Problem]:
    """With "Intel PT uses guest physical addresses" 1, "enable EPT", the "load
    IA32_RTIT_CTL" VM-entry control and the "clear IA32_RTIT_CTL" VM-exit control
    must all be 1."""
    if ctx.proc2 & b.PROC2_PT_GUEST_PHYSICAL:
        needs = (
            ('"enable EPT"', ctx.proc2 & b.PROC2_EPT),
            ('"load IA32_RTIT_CTL" (VM-entry)', ctx.entry & b.ENTRY_LOAD_RTIT),
            ('"clear IA32_RTIT_CTL" (VM-exit)', ctx.exit & b.EXIT_CLEAR_RTIT),
        )
        missing = [name for name, present in needs if not present]
        if missing:
            fields = ctx.named(
                f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
                f.VM_ENTRY_CONTROLS,
                f.VM_EXIT_CONTROLS,
            )
            yield f"Intel PT with guest-physical addresses needs {', '.join(missing)}", fields
