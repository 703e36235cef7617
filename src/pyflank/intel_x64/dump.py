"""A readable dump of a VMCS: every field by SDM table, then the decoded state.

What a developer wants after an unexpected exit or a failed VM entry: the raw
fields to compare against the SDM, and the few values that explain the exit
spelled out (exit reason, qualification, event information, instruction error,
the guest's control registers and segments).
"""

from __future__ import annotations

from collections.abc import Callable

from pyflank.intel_x64 import exit_reasons, instruction_errors
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks.bits import (
    AR_DB,
    AR_G,
    AR_L,
    AR_P,
    AR_S,
    AR_UNUSABLE,
    NAMES_CR0,
    NAMES_CR4,
    NAMES_EFER,
    NAMES_RFLAGS,
    flag_names,
)
from pyflank.intel_x64.controls import ActivityState, InterruptibilityState
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.fields import FIELD_GROUPS
from pyflank.intel_x64.qualifications import (
    ControlRegisterAccess,
    EptViolation,
    InterruptionInformation,
    IoInstruction,
    MovDrAccess,
)
from pyflank.intel_x64.vmcs import Vmcs

_NAME_WIDTH = max(len(field.name) for group in FIELD_GROUPS.values() for field in group)
_SEGMENTS = ("es", "cs", "ss", "ds", "fs", "gs", "ldtr", "tr")
_SYSTEM_TYPES = {
    1: "16-bit available TSS", 2: "LDT", 3: "16-bit busy TSS", 9: "available TSS",
    11: "busy TSS", 12: "call gate", 14: "interrupt gate", 15: "trap gate",
}  # fmt: skip
_QUALIFICATIONS: dict[int, Callable[[int], str]] = {
    ExitReason.CONTROL_REGISTER_ACCESS: lambda q: ControlRegisterAccess.decode(q).describe(),
    ExitReason.MOV_DR: lambda q: MovDrAccess.decode(q).describe(),
    ExitReason.IO_INSTRUCTION: lambda q: IoInstruction.decode(q).describe(),
    ExitReason.EPT_VIOLATION: lambda q: EptViolation.decode(q).describe(),
}
_ENTRY_FAILURE_QUALIFICATIONS = {
    0: "no further information",
    2: "failure loading a PDPTE",
    3: "failure delivering an NMI injected with a pending MTF",
    4: "invalid VMCS link pointer",
}


def describe_access_rights(rights: int) -> str:
    """A segment's access-rights field in words: type, S, DPL, P, L, D/B, G."""
    if rights & AR_UNUSABLE:
        return "unusable"
    kind = rights & 0xF
    if not rights & AR_S:
        what = _SYSTEM_TYPES.get(kind, "reserved system type")
    elif kind & 0x8:
        what = "code " + ("execute/read" if kind & 0x2 else "execute-only")
        what += " conforming" if kind & 0x4 else ""
    else:
        what = "data " + ("read/write" if kind & 0x2 else "read-only")
        what += " expand-down" if kind & 0x4 else ""
    if rights & AR_S and kind & 0x1:
        what += " accessed"
    bits = " ".join(name for name, bit in (("p", AR_P), ("l", AR_L), ("db", AR_DB), ("g", AR_G))
                    if rights & bit)  # fmt: skip
    return f"type={kind} ({what}) dpl={(rights >> 5) & 3} {bits}".rstrip()


def _fields(vmcs: Vmcs) -> list[str]:
    lines: list[str] = []
    for title, group in FIELD_GROUPS.items():
        lines.append(f"== {title} ==")
        for field in group:
            if field.is_high:
                continue  # shown with its full-width field
            value = vmcs.read(field.encoding)
            lines.append(f"  {field.name:<{_NAME_WIDTH}} {value:#0{field.bits // 4 + 2}x}")
    return lines


def _exit_reason(vmcs: Vmcs) -> list[str]:
    value = vmcs.read(f.EXIT_REASON)
    basic = exit_reasons.basic_exit_reason(value)
    failed = bool(value & exit_reasons.VM_ENTRY_FAILURE)
    lines = [
        f"exit reason: {value:#010x}: basic reason {basic} ({exit_reasons.description(basic)}), "
        f"VM-entry failure: {'yes' if failed else 'no'}"
    ]
    qualification = vmcs.read(f.EXIT_QUALIFICATION)
    lines.append(f"exit qualification: {qualification:#x}: {_qualification(basic, qualification)}")
    if basic == ExitReason.EPT_VIOLATION:
        lines.append(f"  guest-physical address: {vmcs.read(f.GUEST_PHYSICAL_ADDRESS):#x}")
        lines.append(f"  guest linear address: {vmcs.read(f.GUEST_LINEAR_ADDRESS):#x}")
    return lines


def _qualification(basic: int, qualification: int) -> str:
    if basic == ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE:
        return _ENTRY_FAILURE_QUALIFICATIONS.get(qualification, "reserved")
    if basic == ExitReason.VM_ENTRY_FAILURE_MSR_LOADING:
        return f"VM-entry MSR-load entry {qualification} failed"
    decode = _QUALIFICATIONS.get(basic)
    if decode is None:
        return "raw"
    try:
        return decode(qualification)
    except ValueError as error:
        return f"undecodable ({error})"


def _event(title: str, info: int, error_code: int) -> str:
    if not info >> 31:
        return f"{title}: {info:#010x}: none (valid bit clear)"
    decoded = InterruptionInformation.decode(info)
    text = f"{title}: {info:#010x}: {decoded.describe()}"
    return f"{text}, error code {error_code:#x}" if decoded.error_code_valid else text


def _events(vmcs: Vmcs) -> list[str]:
    error = vmcs.read(f.VM_INSTRUCTION_ERROR)
    described = instruction_errors.description(error) if error else "none"
    return [
        _event(
            "VM-exit interruption information",
            vmcs.read(f.VM_EXIT_INTERRUPTION_INFORMATION),
            vmcs.read(f.VM_EXIT_INTERRUPTION_ERROR_CODE),
        ),
        _event(
            "IDT-vectoring information",
            vmcs.read(f.IDT_VECTORING_INFORMATION_FIELD),
            vmcs.read(f.IDT_VECTORING_ERROR_CODE),
        ),
        f"VM-instruction error: {error} ({described})",
    ]


def _register(name: str, value: int, names: dict[int, str] | None = None) -> str:
    flags = f" [{flag_names(value, names)}]" if names is not None else ""
    return f"  {name:<6} {value:#018x}{flags}"


def _guest(vmcs: Vmcs) -> list[str]:
    read = vmcs.read
    lines = [
        "guest state:",
        _register("cr0", read(f.GUEST_CR0), NAMES_CR0),
        _register("cr3", read(f.GUEST_CR3)),
        _register("cr4", read(f.GUEST_CR4), NAMES_CR4),
        _register("efer", read(f.GUEST_IA32_EFER), NAMES_EFER),
        _register("rip", read(f.GUEST_RIP)),
        _register("rsp", read(f.GUEST_RSP)),
        _register("rflags", read(f.GUEST_RFLAGS), NAMES_RFLAGS),
    ]
    for name in _SEGMENTS:
        upper = name.upper()
        rights = read(getattr(f, f"GUEST_{upper}_ACCESS_RIGHTS"))
        lines.append(
            f"  {name:<6} selector={read(getattr(f, f'GUEST_{upper}_SELECTOR')):#06x} "
            f"base={read(getattr(f, f'GUEST_{upper}_BASE')):#x} "
            f"limit={read(getattr(f, f'GUEST_{upper}_LIMIT')):#x} "
            f"ar={rights:#x} ({describe_access_rights(rights)})"
        )
    for name in ("gdtr", "idtr"):
        upper = name.upper()
        base, limit = (
            read(getattr(f, f"GUEST_{upper}_BASE")),
            read(getattr(f, f"GUEST_{upper}_LIMIT")),
        )
        lines.append(f"  {name:<6} base={base:#x} limit={limit:#x}")
    activity = read(f.GUEST_ACTIVITY_STATE)
    state = ActivityState(activity).name.lower() if activity <= 3 else "reserved"
    blocking = InterruptibilityState(read(f.GUEST_INTERRUPTIBILITY_STATE) & 0x1F)
    lines.append(f"  activity state {activity} ({state}), interruptibility [{blocking.name or ''}]")
    return lines


def dump(vmcs: Vmcs) -> str:
    """Every field grouped by SDM table, then exit information and guest state decoded."""
    sections = [_fields(vmcs), ["== decoded =="], _exit_reason(vmcs), _events(vmcs), _guest(vmcs)]
    return "\n".join(line for section in sections for line in section) + "\n"
