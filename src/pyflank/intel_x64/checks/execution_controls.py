"""SDM 26.2.1.1: checks on the VM-execution control fields."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext, reserved_controls
from pyflank.intel_x64.checks.context import physical_address as _address
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule

_rule = partial(rule, group=CheckGroup.CONTROLS, section="26.2.1.1")
_later = partial(rule, group=CheckGroup.CONTROLS, section="27.2.1.1")


@_rule("controls.pin_based.reserved")
def pin_based_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """Reserved bits in the pin-based VM-execution controls must be set properly."""
    yield from reserved_controls(
        ctx,
        f.PIN_BASED_VM_EXECUTION_CONTROLS,
        msrs.IA32_VMX_PINBASED_CTLS,
        msrs.IA32_VMX_TRUE_PINBASED_CTLS,
    )


@_rule("controls.primary.reserved")
def primary_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """Reserved bits in the primary processor-based controls must be set properly."""
    yield from reserved_controls(
        ctx,
        f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
        msrs.IA32_VMX_PROCBASED_CTLS,
        msrs.IA32_VMX_TRUE_PROCBASED_CTLS,
    )


@_rule("controls.secondary.reserved")
def secondary_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "activate secondary controls" 1, reserved secondary controls must be 0."""
    if ctx.proc & b.PROC_SECONDARY:
        plain = msrs.IA32_VMX_PROCBASED_CTLS2
        encoding = f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        yield from reserved_controls(ctx, encoding, plain, plain)


@_later("controls.tertiary.reserved")
def tertiary_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "activate tertiary controls" 1, tertiary controls IA32_VMX_PROCBASED_CTLS3
    does not allow must be 0 (that MSR has only allowed-1 bits, all 64 of them)."""
    if ctx.proc & b.PROC_TERTIARY:
        encoding = f.TERTIARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        capability = ctx.msr(msrs.IA32_VMX_PROCBASED_CTLS3)
        bad = ctx[encoding] & ~capability
        if bad:
            fields = ctx.named(encoding) | {"IA32_VMX_PROCBASED_CTLS3": capability}
            yield f"tertiary control bits {bad:#x} are not supported", fields


@_rule("controls.cr3_target_count")
def cr3_target_count(ctx: EntryContext) -> Iterator[Problem]:
    """The CR3-target count must not be greater than 4."""
    if ctx[f.CR3_TARGET_COUNT] > 4:
        yield "the CR3-target count exceeds 4", ctx.named(f.CR3_TARGET_COUNT)


@_rule("controls.io_bitmaps.address")
def io_bitmap_addresses(ctx: EntryContext) -> Iterator[Problem]:
    """With "use I/O bitmaps" 1, bits 11:0 of each I/O-bitmap address must be 0 and
    neither may set bits beyond the physical-address width."""
    if ctx.proc & b.PROC_IO_BITMAPS:
        yield from _address(ctx, f.ADDRESS_OF_IO_BITMAP_A, "I/O bitmap A")
        yield from _address(ctx, f.ADDRESS_OF_IO_BITMAP_B, "I/O bitmap B")


@_rule("controls.msr_bitmaps.address")
def msr_bitmap_address(ctx: EntryContext) -> Iterator[Problem]:
    """With "use MSR bitmaps" 1, the MSR-bitmap address must be page aligned and
    within the physical-address width."""
    if ctx.proc & b.PROC_MSR_BITMAPS:
        yield from _address(ctx, f.ADDRESS_OF_MSR_BITMAPS, "the MSR-bitmap address")


@_rule("controls.tpr_shadow.virtual_apic_address")
def virtual_apic_address(ctx: EntryContext) -> Iterator[Problem]:
    """With "use TPR shadow" 1, the virtual-APIC address must be page aligned and
    within the physical-address width."""
    if ctx.proc & b.PROC_TPR_SHADOW:
        yield from _address(ctx, f.VIRTUAL_APIC_ADDRESS, "the virtual-APIC address")


@_rule("controls.tpr_shadow.threshold")
def tpr_threshold(ctx: EntryContext) -> Iterator[Problem]:
    """With "use TPR shadow" 1 and "virtual-interrupt delivery" 0, bits 31:4 of the
    TPR threshold must be 0."""
    if ctx.proc & b.PROC_TPR_SHADOW and not ctx.proc2 & b.PROC2_VID and ctx[f.TPR_THRESHOLD] >> 4:
        yield "TPR threshold bits 31:4 must be 0", ctx.named(f.TPR_THRESHOLD)


_NEEDS_TPR_SHADOW = b.PROC2_X2APIC | b.PROC2_APIC_REGISTER | b.PROC2_VID


@_rule("controls.tpr_shadow.required")
def tpr_shadow_required(ctx: EntryContext) -> Iterator[Problem]:
    """With "use TPR shadow" 0, "virtualize x2APIC mode", "APIC-register
    virtualization" and "virtual-interrupt delivery" must all be 0."""
    if not ctx.proc & b.PROC_TPR_SHADOW and ctx.proc2 & _NEEDS_TPR_SHADOW:
        fields = ctx.named(
            f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
            f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
        )
        yield 'APIC virtualization controls need "use TPR shadow"', fields


@_later("controls.ipi_virtualization.tpr_shadow")
def ipi_virtualization_needs_tpr_shadow(ctx: EntryContext) -> Iterator[Problem]:
    """With "use TPR shadow" 0, the tertiary control "IPI virtualization" must be 0 too
    (the later editions add it to the controls the rule above lists)."""
    if not ctx.proc & b.PROC_TPR_SHADOW and ctx.proc3 & b.PROC3_IPI_VIRTUALIZATION:
        fields = ctx.named(
            f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
            f.TERTIARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS,
        )
        yield 'IPI virtualization needs "use TPR shadow"', fields


@_rule("controls.nmi.virtual_nmis")
def virtual_nmis_need_nmi_exiting(ctx: EntryContext) -> Iterator[Problem]:
    """With "NMI exiting" 0, "virtual NMIs" must be 0."""
    if ctx.pin & b.PIN_VIRTUAL_NMIS and not ctx.pin & b.PIN_NMI_EXITING:
        yield '"virtual NMIs" needs "NMI exiting"', ctx.named(f.PIN_BASED_VM_EXECUTION_CONTROLS)


@_rule("controls.nmi.nmi_window")
def nmi_window_needs_virtual_nmis(ctx: EntryContext) -> Iterator[Problem]:
    """With "virtual NMIs" 0, "NMI-window exiting" must be 0."""
    if ctx.proc & b.PROC_NMI_WINDOW and not ctx.pin & b.PIN_VIRTUAL_NMIS:
        fields = ctx.named(
            f.PIN_BASED_VM_EXECUTION_CONTROLS, f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        )
        yield '"NMI-window exiting" needs "virtual NMIs"', fields


@_rule("controls.apic_access.address")
def apic_access_address(ctx: EntryContext) -> Iterator[Problem]:
    """With "virtualize APIC accesses" 1, the APIC-access address must be page
    aligned and within the physical-address width."""
    if ctx.proc2 & b.PROC2_APIC_ACCESSES:
        yield from _address(ctx, f.APIC_ACCESS_ADDRESS, "the APIC-access address")


@_rule("controls.x2apic.apic_accesses")
def x2apic_excludes_apic_accesses(ctx: EntryContext) -> Iterator[Problem]:
    """With "virtualize x2APIC mode" 1, "virtualize APIC accesses" must be 0."""
    both = b.PROC2_X2APIC | b.PROC2_APIC_ACCESSES
    if ctx.proc2 & both == both:
        fields = ctx.named(f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)
        yield "x2APIC-mode and APIC-access virtualization exclude each other", fields


@_rule("controls.vid.external_interrupt_exiting")
def vid_needs_external_interrupt_exiting(ctx: EntryContext) -> Iterator[Problem]:
    """With "virtual-interrupt delivery" 1, "external-interrupt exiting" must be 1."""
    if ctx.proc2 & b.PROC2_VID and not ctx.pin & b.PIN_EXTERNAL_INTERRUPT_EXITING:
        fields = ctx.named(
            f.PIN_BASED_VM_EXECUTION_CONTROLS, f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        )
        yield "virtual-interrupt delivery needs external-interrupt exiting", fields


@_rule("controls.posted_interrupts.vid")
def posted_interrupts_need_vid(ctx: EntryContext) -> Iterator[Problem]:
    """With "process posted interrupts" 1, "virtual-interrupt delivery" must be 1."""
    if ctx.pin & b.PIN_POSTED_INTERRUPTS and not ctx.proc2 & b.PROC2_VID:
        fields = ctx.named(
            f.PIN_BASED_VM_EXECUTION_CONTROLS, f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        )
        yield "posted interrupts need virtual-interrupt delivery", fields


@_rule("controls.posted_interrupts.acknowledge")
def posted_interrupts_need_acknowledge(ctx: EntryContext) -> Iterator[Problem]:
    """With "process posted interrupts" 1, "acknowledge interrupt on exit" must be 1."""
    if ctx.pin & b.PIN_POSTED_INTERRUPTS and not ctx.exit & b.EXIT_ACK_INTERRUPT:
        fields = ctx.named(f.PIN_BASED_VM_EXECUTION_CONTROLS, f.VM_EXIT_CONTROLS)
        yield 'posted interrupts need "acknowledge interrupt on exit"', fields


@_rule("controls.posted_interrupts.vector")
def posted_interrupt_vector(ctx: EntryContext) -> Iterator[Problem]:
    """With "process posted interrupts" 1, the notification vector must be in 0-255
    (bits 15:8 clear)."""
    if ctx.pin & b.PIN_POSTED_INTERRUPTS and ctx[f.POSTED_INTERRUPT_NOTIFICATION_VECTOR] >> 8:
        fields = ctx.named(f.POSTED_INTERRUPT_NOTIFICATION_VECTOR)
        yield "the posted-interrupt notification vector exceeds 255", fields


@_rule("controls.posted_interrupts.descriptor")
def posted_interrupt_descriptor(ctx: EntryContext) -> Iterator[Problem]:
    """With "process posted interrupts" 1, bits 5:0 of the posted-interrupt
    descriptor address must be 0 and it must fit the physical-address width."""
    if ctx.pin & b.PIN_POSTED_INTERRUPTS:
        encoding = f.POSTED_INTERRUPT_DESCRIPTOR_ADDRESS
        yield from _address(ctx, encoding, "the posted-interrupt descriptor", alignment=6)


@_rule("controls.vpid.nonzero")
def vpid_nonzero(ctx: EntryContext) -> Iterator[Problem]:
    """With "enable VPID" 1, the VPID must not be 0000H (that is the host's)."""
    if ctx.proc2 & b.PROC2_VPID and ctx[f.VIRTUAL_PROCESSOR_IDENTIFIER] == 0:
        yield "VPID 0 is reserved for VMX root operation", ctx.named(f.VIRTUAL_PROCESSOR_IDENTIFIER)


@_rule("controls.vmcs_shadowing.bitmaps")
def vmcs_shadowing_bitmaps(ctx: EntryContext) -> Iterator[Problem]:
    """With "VMCS shadowing" 1, the VMREAD- and VMWRITE-bitmap addresses must be
    page aligned and within the physical-address width."""
    if ctx.proc2 & b.PROC2_VMCS_SHADOWING:
        yield from _address(ctx, f.VMREAD_BITMAP_ADDRESS, "the VMREAD-bitmap address")
        yield from _address(ctx, f.VMWRITE_BITMAP_ADDRESS, "the VMWRITE-bitmap address")
