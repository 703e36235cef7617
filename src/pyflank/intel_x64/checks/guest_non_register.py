"""SDM 26.3.1.5: checks on guest non-register state (activity, interruptibility,
pending debug exceptions, VMCS link pointer)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.registry import CheckGroup, Problem, rule
from pyflank.intel_x64.checks.segments import SS, dpl
from pyflank.intel_x64.controls import ActivityState

_rule = partial(rule, group=CheckGroup.GUEST_NON_REGISTER_STATE, section="26.3.1.5")
_later = partial(rule, group=CheckGroup.GUEST_NON_REGISTER_STATE, section="27.3.1.5")

_ACTIVE, _HLT, _SHUTDOWN, _WAIT_FOR_SIPI = (int(s) for s in ActivityState)
_ACTIVITY = f.GUEST_ACTIVITY_STATE
_INTERRUPTIBILITY = f.GUEST_INTERRUPTIBILITY_STATE
_EVENT = f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD
_INTERRUPTIBILITY_RESERVED = ~0x1F & b.MASK32  # bits 31:5
_PENDING_RESERVED = (0xFF0 | 1 << 13 | 1 << 15 | ~((1 << 17) - 1)) & b.MASK64
_PENDING_BS = 1 << 14
_LINK_POINTER_UNUSED = b.MASK64


def _event_allowed(activity: int, kind: int, vector: int) -> bool:
    """Whether an injected event can be delivered in this activity state."""
    if activity == _HLT:
        return (
            kind in (b.TYPE_EXTERNAL_INTERRUPT, b.TYPE_NMI)
            or (kind == b.TYPE_HARDWARE_EXCEPTION and vector in (1, 18))
            or (kind == b.TYPE_OTHER_EVENT and vector == 0)
        )
    if activity == _SHUTDOWN:
        return kind == b.TYPE_NMI or (kind == b.TYPE_HARDWARE_EXCEPTION and vector == 18)
    return activity != _WAIT_FOR_SIPI


@_rule("guest.activity.valid")
def activity_valid(ctx: EntryContext) -> Iterator[Problem]:
    """The activity state must be 0-3 (active, HLT, shutdown, wait-for-SIPI) and one
    IA32_VMX_MISC bits 8:6 report as supported (active always is)."""
    state = ctx[_ACTIVITY]
    misc = ctx.msr(msrs.IA32_VMX_MISC)
    if state > _WAIT_FOR_SIPI or (
        state != _ACTIVE and not misc >> (b.MISC_ACTIVITY_SHIFT + state - 1) & 1
    ):
        yield (
            f"activity state {state} is not supported",
            ctx.named(_ACTIVITY) | {"IA32_VMX_MISC": misc},
        )


@_rule("guest.activity.hlt_cpl")
def activity_hlt_cpl(ctx: EntryContext) -> Iterator[Problem]:
    """The activity state must not be HLT unless SS.DPL (the CPL) is 0."""
    if ctx[_ACTIVITY] == _HLT and dpl(ctx[SS.access_rights]):
        yield "HLT state at CPL > 0", ctx.named(_ACTIVITY, SS.access_rights)


@_rule("guest.activity.blocking")
def activity_blocking(ctx: EntryContext) -> Iterator[Problem]:
    """With blocking by STI or by MOV SS, the activity state must be active."""
    blocking = ctx[_INTERRUPTIBILITY] & (b.BLOCKING_BY_STI | b.BLOCKING_BY_MOV_SS)
    if blocking and ctx[_ACTIVITY] != _ACTIVE:
        yield (
            "STI/MOV-SS blocking outside the active state",
            ctx.named(_ACTIVITY, _INTERRUPTIBILITY),
        )


@_rule("guest.activity.event")
def activity_event(ctx: EntryContext) -> Iterator[Problem]:
    """An injected event must be one the activity state lets through: HLT takes
    external interrupts, NMIs, #DB, #MC and pending MTF; shutdown takes NMIs and
    #MC; wait-for-SIPI takes none."""
    if ctx.event_valid and not _event_allowed(ctx[_ACTIVITY], ctx.event_type, ctx.event_vector):
        yield "the injected event is blocked in this activity state", ctx.named(_ACTIVITY, _EVENT)


@_rule("guest.activity.smm_sipi")
def activity_smm_sipi(ctx: EntryContext) -> Iterator[Problem]:
    """With "entry to SMM" 1, the activity state must not be wait-for-SIPI."""
    if ctx.entry & b.ENTRY_SMM and ctx[_ACTIVITY] == _WAIT_FOR_SIPI:
        yield "entry to SMM into wait-for-SIPI", ctx.named(_ACTIVITY, f.VM_ENTRY_CONTROLS)


@_rule("guest.interruptibility.reserved")
def interruptibility_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """Interruptibility-state bits 31:5 are reserved and must be 0."""
    if ctx[_INTERRUPTIBILITY] & _INTERRUPTIBILITY_RESERVED:
        yield "reserved interruptibility-state bits are set", ctx.named(_INTERRUPTIBILITY)


@_rule("guest.interruptibility.sti_and_mov_ss")
def sti_and_mov_ss(ctx: EntryContext) -> Iterator[Problem]:
    """Blocking by STI (bit 0) and by MOV SS (bit 1) cannot both be 1."""
    both = b.BLOCKING_BY_STI | b.BLOCKING_BY_MOV_SS
    if ctx[_INTERRUPTIBILITY] & both == both:
        yield "blocking by both STI and MOV SS", ctx.named(_INTERRUPTIBILITY)


@_rule("guest.interruptibility.sti_needs_if")
def sti_needs_if(ctx: EntryContext) -> Iterator[Problem]:
    """Blocking by STI (bit 0) must be 0 if RFLAGS.IF is 0: STI blocks only after
    setting IF."""
    if ctx[_INTERRUPTIBILITY] & b.BLOCKING_BY_STI and not ctx.rflags & b.RFLAGS_IF:
        yield "blocking by STI with IF clear", ctx.named(_INTERRUPTIBILITY, f.GUEST_RFLAGS)


@_rule("guest.interruptibility.external_interrupt")
def blocking_vs_external_interrupt(ctx: EntryContext) -> Iterator[Problem]:
    """Blocking by STI and by MOV SS must both be 0 when an external interrupt is
    injected."""
    if (
        ctx.event_valid
        and ctx.event_type == b.TYPE_EXTERNAL_INTERRUPT
        and ctx[_INTERRUPTIBILITY] & (b.BLOCKING_BY_STI | b.BLOCKING_BY_MOV_SS)
    ):
        yield (
            "injecting an external interrupt while interrupts are blocked",
            ctx.named(_INTERRUPTIBILITY, _EVENT),
        )


@_rule("guest.interruptibility.nmi_mov_ss")
def blocking_vs_nmi(ctx: EntryContext) -> Iterator[Problem]:
    """Blocking by MOV SS must be 0 when an NMI is injected."""
    if (
        ctx.event_valid
        and ctx.event_type == b.TYPE_NMI
        and ctx[_INTERRUPTIBILITY] & b.BLOCKING_BY_MOV_SS
    ):
        yield "injecting an NMI under MOV-SS blocking", ctx.named(_INTERRUPTIBILITY, _EVENT)


@_rule("guest.interruptibility.smi_outside_smm")
def smi_blocking_outside_smm(ctx: EntryContext) -> Iterator[Problem]:
    """Blocking by SMI (bit 2) must be 0 when the processor is not in SMM (pyflank's
    VMM never is)."""
    if ctx[_INTERRUPTIBILITY] & b.BLOCKING_BY_SMI:
        yield "blocking by SMI outside SMM", ctx.named(_INTERRUPTIBILITY)


@_rule("guest.interruptibility.smi_for_smm_entry")
def smi_blocking_for_smm_entry(ctx: EntryContext) -> Iterator[Problem]:
    """Blocking by SMI (bit 2) must be 1 if "entry to SMM" is 1."""
    if ctx.entry & b.ENTRY_SMM and not ctx[_INTERRUPTIBILITY] & b.BLOCKING_BY_SMI:
        yield (
            "entry to SMM without blocking by SMI",
            ctx.named(_INTERRUPTIBILITY, f.VM_ENTRY_CONTROLS),
        )


@_rule("guest.interruptibility.virtual_nmi")
def nmi_blocking_vs_virtual_nmi(ctx: EntryContext) -> Iterator[Problem]:
    """With "virtual NMIs" 1 and an NMI injected, blocking by NMI (bit 3) must be 0."""
    if (
        ctx.pin & b.PIN_VIRTUAL_NMIS
        and ctx.event_valid
        and ctx.event_type == b.TYPE_NMI
        and ctx[_INTERRUPTIBILITY] & b.BLOCKING_BY_NMI
    ):
        yield (
            "injecting a virtual NMI while virtual NMIs are blocked",
            ctx.named(_INTERRUPTIBILITY, _EVENT, f.PIN_BASED_VM_EXECUTION_CONTROLS),
        )


@_rule("guest.interruptibility.enclave")
def enclave_interruption(ctx: EntryContext) -> Iterator[Problem]:
    """If bit 4 (enclave interruption) is 1, bit 1 (blocking by MOV SS) must be 0 and
    the processor must support SGX (CPUID.(EAX=07H,ECX=0):EBX[2])."""
    state = ctx[_INTERRUPTIBILITY]
    if not state & b.ENCLAVE_INTERRUPTION:
        return
    if state & b.BLOCKING_BY_MOV_SS:
        yield "an enclave interruption under MOV-SS blocking", ctx.named(_INTERRUPTIBILITY)
    elif not ctx.sgx:
        yield "an enclave interruption on a processor without SGX", ctx.named(_INTERRUPTIBILITY)


@_later("guest.uinv.vector")
def uinv_vector(ctx: EntryContext) -> Iterator[Problem]:
    """With "load UINV" (VM-entry) 1, bits 15:8 of the guest UINV field must be 0:
    the user-interrupt notification vector is 0-255."""
    if ctx.entry & b.ENTRY_LOAD_UINV and ctx[f.GUEST_UINV] >> 8:
        yield "the user-interrupt notification vector exceeds 255", ctx.named(f.GUEST_UINV)


@_rule("guest.pending_debug.reserved")
def pending_debug_reserved(ctx: EntryContext) -> Iterator[Problem]:
    """Pending-debug-exception bits 11:4, 13, 15 and 63:17 must be 0."""
    if ctx[f.GUEST_PENDING_DEBUG_EXCEPTIONS] & _PENDING_RESERVED:
        yield (
            "reserved pending-debug-exception bits are set",
            ctx.named(f.GUEST_PENDING_DEBUG_EXCEPTIONS),
        )


def _single_step_state(ctx: EntryContext) -> tuple[bool, bool] | None:
    """(BS set, single step pending) where the BS rules apply: blocking by STI or
    MOV SS, or the HLT state; None elsewhere."""
    blocked = ctx[_INTERRUPTIBILITY] & (b.BLOCKING_BY_STI | b.BLOCKING_BY_MOV_SS)
    if not blocked and ctx[_ACTIVITY] != _HLT:
        return None
    stepping = bool(ctx.rflags & b.RFLAGS_TF) and not ctx[f.GUEST_IA32_DEBUGCTL] & b.DEBUGCTL_BTF
    return bool(ctx[f.GUEST_PENDING_DEBUG_EXCEPTIONS] & _PENDING_BS), stepping


_BS_FIELDS = (f.GUEST_PENDING_DEBUG_EXCEPTIONS, f.GUEST_RFLAGS, f.GUEST_IA32_DEBUGCTL)


@_rule("guest.pending_debug.bs_set")
def pending_bs_set(ctx: EntryContext) -> Iterator[Problem]:
    """Under STI/MOV-SS blocking or in HLT, BS (bit 14) must be 1 if RFLAGS.TF is 1
    and IA32_DEBUGCTL.BTF is 0: the single-step trap is still owed."""
    state = _single_step_state(ctx)
    if state is not None and state[1] and not state[0]:
        yield "a pending single step is not recorded in BS", ctx.named(*_BS_FIELDS)


@_rule("guest.pending_debug.bs_clear")
def pending_bs_clear(ctx: EntryContext) -> Iterator[Problem]:
    """Under STI/MOV-SS blocking or in HLT, BS (bit 14) must be 0 if RFLAGS.TF is 0
    or IA32_DEBUGCTL.BTF is 1."""
    state = _single_step_state(ctx)
    if state is not None and state[0] and not state[1]:
        yield "BS is set though no single step is pending", ctx.named(*_BS_FIELDS)


@_rule("guest.link_pointer.address")
def link_pointer(ctx: EntryContext) -> Iterator[Problem]:
    """A VMCS link pointer other than FFFFFFFF_FFFFFFFFH must be page aligned and
    within the physical-address width."""
    pointer = ctx[f.VMCS_LINK_POINTER]
    if pointer != _LINK_POINTER_UNUSED and ctx.misaligned_or_wide(pointer):
        yield (
            "the VMCS link pointer is neither unused (all ones) nor a valid address",
            (ctx.named(f.VMCS_LINK_POINTER)),
        )
