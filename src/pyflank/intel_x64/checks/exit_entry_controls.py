"""SDM 26.2.1.2 and 26.2.1.3: checks on the VM-exit and VM-entry control fields."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext, reserved_controls
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule

_exit = partial(rule, group=CheckGroup.CONTROLS, section="26.2.1.2")
_exit_later = partial(rule, group=CheckGroup.CONTROLS, section="27.2.1.2")
_entry = partial(rule, group=CheckGroup.CONTROLS, section="26.2.1.3")
_entry_later = partial(rule, group=CheckGroup.CONTROLS, section="27.2.1.3")


def _msr_area(ctx: EntryContext, count: int, address: int, what: str) -> Iterator[Problem]:
    """An MSR-load/store area: 16-byte aligned, first and last byte within the width."""
    entries = ctx[count]
    if entries == 0:
        return
    start = ctx[address]
    last = start + entries * 16 - 1
    if start & 0xF or ctx.beyond_width(start) or ctx.beyond_width(last):
        yield (
            f"the {what} area must be 16-byte aligned and lie within the "
            f"{ctx.address_width}-bit physical-address width",
            ctx.named(address, count),
        )


@_exit("controls.exit.reserved")
def exit_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """Reserved bits in the VM-exit controls must be set properly."""
    yield from reserved_controls(
        ctx, f.VM_EXIT_CONTROLS, msrs.IA32_VMX_EXIT_CTLS, msrs.IA32_VMX_TRUE_EXIT_CTLS
    )


@_exit("controls.exit.save_preemption_timer")
def save_preemption_timer(ctx: EntryContext) -> Iterator[Problem]:
    """With "activate VMX-preemption timer" 0, "save VMX-preemption timer value"
    must be 0."""
    if ctx.exit & b.EXIT_SAVE_PREEMPTION and not ctx.pin & b.PIN_PREEMPTION_TIMER:
        fields = ctx.named(f.PIN_BASED_VM_EXECUTION_CONTROLS, f.VM_EXIT_CONTROLS)
        yield "saving the preemption timer needs the timer activated", fields


@_exit("controls.exit.msr_store_area")
def exit_msr_store_area(ctx: EntryContext) -> Iterator[Problem]:
    """With a non-zero VM-exit MSR-store count, the area's address must have bits
    3:0 clear and neither its first nor its last byte beyond the physical width."""
    yield from _msr_area(
        ctx, f.VM_EXIT_MSR_STORE_COUNT, f.VM_EXIT_MSR_STORE_ADDRESS, "VM-exit MSR-store"
    )


@_exit("controls.exit.msr_load_area")
def exit_msr_load_area(ctx: EntryContext) -> Iterator[Problem]:
    """With a non-zero VM-exit MSR-load count, the area's address must have bits
    3:0 clear and neither its first nor its last byte beyond the physical width."""
    yield from _msr_area(
        ctx, f.VM_EXIT_MSR_LOAD_COUNT, f.VM_EXIT_MSR_LOAD_ADDRESS, "VM-exit MSR-load"
    )


@_exit_later("controls.exit.secondary_reserved")
def secondary_exit_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """With "activate secondary controls" (VM-exit) 1, secondary VM-exit controls
    that IA32_VMX_EXIT_CTLS2 does not allow must be 0."""
    if ctx.exit & b.EXIT_SECONDARY:
        capability = ctx.msr(msrs.IA32_VMX_EXIT_CTLS2)
        bad = ctx[f.SECONDARY_VM_EXIT_CONTROLS] & ~capability
        if bad:
            fields = ctx.named(f.SECONDARY_VM_EXIT_CONTROLS) | {"IA32_VMX_EXIT_CTLS2": capability}
            yield f"secondary VM-exit controls {bad:#x} are not supported", fields


@_entry("controls.entry.reserved")
def entry_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """Reserved bits in the VM-entry controls must be set properly."""
    yield from reserved_controls(
        ctx, f.VM_ENTRY_CONTROLS, msrs.IA32_VMX_ENTRY_CTLS, msrs.IA32_VMX_TRUE_ENTRY_CTLS
    )


_EVENT = f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD


@_entry("controls.entry.event_type")
def event_type(ctx: EntryContext) -> Iterator[Problem]:
    """An injected event's type must not be reserved: 1 never, 7 (other event) only
    where the "monitor trap flag" control can be 1."""
    if not ctx.event_valid:
        return
    if ctx.event_type == b.TYPE_OTHER_EVENT:
        _, capability = ctx.control_capability(
            msrs.IA32_VMX_PROCBASED_CTLS, msrs.IA32_VMX_TRUE_PROCBASED_CTLS
        )
        if capability >> 32 & b.PROC_MTF:
            return
    elif ctx.event_type != b.TYPE_RESERVED:
        return
    yield f"interruption type {ctx.event_type} is reserved", ctx.named(_EVENT)


# Other event (type 7): vector 0 is a pending MTF VM exit; a guest using FRED may also
# be injected vector 1 (SYSCALL) or 2 (SYSENTER).
_FRED_OTHER_EVENT_VECTORS = frozenset({0, 1, 2})


@_entry("controls.entry.event_vector")
def event_vector(ctx: EntryContext) -> Iterator[Problem]:
    """An injected event's vector must fit its type: NMI is vector 2, a hardware
    exception at most 31, other event vector 0 (pending MTF VM exit; 0-2 for a
    guest that will use FRED, a later-edition addition)."""
    if not ctx.event_valid:
        return
    kind, vector = ctx.event_type, ctx.event_vector
    other_ok = vector in _FRED_OTHER_EVENT_VECTORS if ctx.fred_guest else vector == 0
    if (
        (kind == b.TYPE_NMI and vector != 2)
        or (kind == b.TYPE_HARDWARE_EXCEPTION and vector > 31)
        or (kind == b.TYPE_OTHER_EVENT and not other_ok)
    ):
        yield f"vector {vector} does not fit interruption type {kind}", ctx.named(_EVENT)


@_entry("controls.entry.event_error_code_bit")
def event_deliver_error_code(ctx: EntryContext) -> Iterator[Problem]:
    """The deliver-error-code bit must be 1 exactly when (unrestricted guest is 0
    or CR0.PE is 1) and a hardware exception that pushes an error code (8, 10-14,
    17) is injected.  Where IA32_VMX_BASIC bit 56 is 1, a hardware exception into
    protected mode may be injected with or without an error code."""
    if not ctx.event_valid:
        return
    protected = not ctx.unrestricted or bool(ctx.cr0 & b.CR0_PE)
    hardware = ctx.event_type == b.TYPE_HARDWARE_EXCEPTION
    if protected and hardware and ctx.msr(msrs.IA32_VMX_BASIC) & msrs.VMX_BASIC_NO_ERROR_CODE_CHECK:
        return
    expected = protected and hardware and ctx.event_vector in b.ERROR_CODE_VECTORS
    if expected != bool(ctx.event & b.EVENT_DELIVER_ERROR_CODE):
        word = "must" if expected else "must not"
        fields = ctx.named(_EVENT, f.GUEST_CR0)
        yield f"this event {word} deliver an error code", fields | _basic(ctx)


def _basic(ctx: EntryContext) -> dict[str, int]:
    return {"IA32_VMX_BASIC": ctx.msr(msrs.IA32_VMX_BASIC)}


def _nested_exception_supported(ctx: EntryContext) -> bool:
    return bool(ctx.msr(msrs.IA32_VMX_BASIC) & msrs.VMX_BASIC_NESTED_EXCEPTION)


@_entry("controls.entry.event_reserved")
def event_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """Bits 30:12 of the VM-entry interruption-information field are reserved
    (bit 13, nested exception, is not where IA32_VMX_BASIC bit 58 reports FRED's
    nested-exception support)."""
    if not ctx.event_valid:
        return
    reserved = b.EVENT_RESERVED_30_12
    if _nested_exception_supported(ctx):
        reserved &= ~b.EVENT_NESTED_EXCEPTION
    if ctx.event & reserved:
        yield "reserved interruption-information bits 30:12 are set", ctx.named(_EVENT)


@_entry_later("controls.entry.event_nested_exception")
def event_nested_exception(ctx: EntryContext) -> Iterator[Problem]:
    """Where IA32_VMX_BASIC bit 58 allows it, bit 13 (nested exception) of the
    interruption information may be 1 only for a hardware exception."""
    if (
        ctx.event_valid
        and ctx.event & b.EVENT_NESTED_EXCEPTION
        and ctx.event_type != b.TYPE_HARDWARE_EXCEPTION
        and _nested_exception_supported(ctx)
    ):
        yield "only a hardware exception can be marked nested", ctx.named(_EVENT) | _basic(ctx)


@_entry("controls.entry.event_error_code")
def event_error_code(ctx: EntryContext) -> Iterator[Problem]:
    """With deliver-error-code 1, bits 31:16 of the VM-entry exception error code
    must be 0.  (The 2016 text says 31:15; later editions free bit 15, the SGX bit
    of a page-fault error code, and current processors follow them.)"""
    if (
        ctx.event_valid
        and ctx.event & b.EVENT_DELIVER_ERROR_CODE
        and ctx[f.VM_ENTRY_EXCEPTION_ERROR_CODE] >> 16
    ):
        yield "error code bits 31:16 must be 0", ctx.named(f.VM_ENTRY_EXCEPTION_ERROR_CODE)


@_entry("controls.entry.event_instruction_length")
def event_instruction_length(ctx: EntryContext) -> Iterator[Problem]:
    """For an injected software interrupt or software/privileged software exception
    the VM-entry instruction length must be 1-15 (0 too where IA32_VMX_MISC bit 30
    allows injecting with zero length)."""
    if not ctx.event_valid or ctx.event_type not in b.SOFTWARE_EVENT_TYPES:
        return
    length = ctx[f.VM_ENTRY_INSTRUCTION_LENGTH]
    zero_ok = bool(ctx.msr(msrs.IA32_VMX_MISC) & b.MISC_ZERO_LENGTH_INJECTION)
    if length > 15 or (length == 0 and not zero_ok):
        yield (
            f"instruction length {length} is out of range",
            ctx.named(f.VM_ENTRY_INSTRUCTION_LENGTH),
        )


@_entry_later("controls.entry.fred_event_length")
def fred_event_instruction_length(ctx: EntryContext) -> Iterator[Problem]:
    """Injecting a FRED SYSCALL or SYSENTER event (other event, vector 1 or 2, into a
    guest that will use FRED), the VM-entry instruction length must be at most 15."""
    if (
        ctx.event_valid
        and ctx.fred_guest
        and ctx.event_type == b.TYPE_OTHER_EVENT
        and ctx.event_vector in (1, 2)
        and ctx[f.VM_ENTRY_INSTRUCTION_LENGTH] > 15
    ):
        yield (
            "a FRED SYSCALL/SYSENTER injection longer than 15 bytes",
            ctx.named(_EVENT, f.VM_ENTRY_INSTRUCTION_LENGTH),
        )


@_entry("controls.entry.msr_load_area")
def entry_msr_load_area(ctx: EntryContext) -> Iterator[Problem]:
    """With a non-zero VM-entry MSR-load count, the area's address must have bits
    3:0 clear and neither its first nor its last byte beyond the physical width."""
    yield from _msr_area(
        ctx, f.VM_ENTRY_MSR_LOAD_COUNT, f.VM_ENTRY_MSR_LOAD_ADDRESS, "VM-entry MSR-load"
    )


@_entry("controls.entry.smm")
def entry_smm_controls(ctx: EntryContext) -> Iterator[Problem]:
    """Outside SMM, "entry to SMM" and "deactivate dual-monitor treatment" must be 0.
    (pyflank never runs the VMM in SMM, which also covers the rule that the two
    cannot both be 1.)"""
    if ctx.entry & (b.ENTRY_SMM | b.ENTRY_DUAL_MONITOR):
        yield "SMM entry controls are set outside SMM", ctx.named(f.VM_ENTRY_CONTROLS)
