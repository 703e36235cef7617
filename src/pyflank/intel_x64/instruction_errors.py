"""VM-instruction error numbers (Intel SDM Vol. 3, "VM Instruction Error Numbers").

When a VMX instruction fails with VMfailValid, the processor stores one of
these numbers in the VM-instruction error field (encoding 0x4400).  The
descriptions paraphrase the SDM's table; 14, 21 and 27 are not assigned.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class VmInstructionError(IntEnum):
    VMCALL_IN_VMX_ROOT_OPERATION = 1
    VMCLEAR_INVALID_ADDRESS = 2
    VMCLEAR_VMXON_POINTER = 3
    VMLAUNCH_NON_CLEAR_VMCS = 4
    VMRESUME_NON_LAUNCHED_VMCS = 5
    VMRESUME_AFTER_VMXOFF = 6
    VM_ENTRY_INVALID_CONTROL_FIELDS = 7
    VM_ENTRY_INVALID_HOST_STATE_FIELDS = 8
    VMPTRLD_INVALID_ADDRESS = 9
    VMPTRLD_VMXON_POINTER = 10
    VMPTRLD_INCORRECT_REVISION_ID = 11
    UNSUPPORTED_VMCS_COMPONENT = 12
    VMWRITE_READ_ONLY_COMPONENT = 13
    VMXON_IN_VMX_ROOT_OPERATION = 15
    VM_ENTRY_INVALID_EXECUTIVE_VMCS_POINTER = 16
    VM_ENTRY_NON_LAUNCHED_EXECUTIVE_VMCS = 17
    VM_ENTRY_EXECUTIVE_VMCS_POINTER_NOT_VMXON_POINTER = 18
    VMCALL_NON_CLEAR_VMCS = 19
    VMCALL_INVALID_VM_EXIT_CONTROL_FIELDS = 20
    VMCALL_INCORRECT_MSEG_REVISION_ID = 22
    VMXOFF_UNDER_DUAL_MONITOR_TREATMENT = 23
    VMCALL_INVALID_SMM_MONITOR_FEATURES = 24
    VM_ENTRY_INVALID_EXECUTIVE_VMCS_CONTROL_FIELDS = 25
    VM_ENTRY_EVENTS_BLOCKED_BY_MOV_SS = 26
    INVALID_OPERAND_TO_INVEPT_INVVPID = 28


DESCRIPTIONS: Final[dict[int, str]] = {
    VmInstructionError.VMCALL_IN_VMX_ROOT_OPERATION: "VMCALL executed while in VMX root operation",
    VmInstructionError.VMCLEAR_INVALID_ADDRESS: "VMCLEAR given an invalid physical address",
    VmInstructionError.VMCLEAR_VMXON_POINTER: "VMCLEAR given the VMXON pointer",
    VmInstructionError.VMLAUNCH_NON_CLEAR_VMCS: (
        "VMLAUNCH of a VMCS whose launch state is not clear"
    ),
    VmInstructionError.VMRESUME_NON_LAUNCHED_VMCS: "VMRESUME of a VMCS that was never launched",
    VmInstructionError.VMRESUME_AFTER_VMXOFF: (
        "VMRESUME after VMXOFF (VMXOFF and VMXON came between VMLAUNCH and VMRESUME)"
    ),
    VmInstructionError.VM_ENTRY_INVALID_CONTROL_FIELDS: (
        "VM entry failed: invalid VM-execution, VM-exit or VM-entry control field(s)"
    ),
    VmInstructionError.VM_ENTRY_INVALID_HOST_STATE_FIELDS: (
        "VM entry failed: invalid host-state field(s)"
    ),
    VmInstructionError.VMPTRLD_INVALID_ADDRESS: "VMPTRLD given an invalid physical address",
    VmInstructionError.VMPTRLD_VMXON_POINTER: "VMPTRLD given the VMXON pointer",
    VmInstructionError.VMPTRLD_INCORRECT_REVISION_ID: (
        "VMPTRLD of a VMCS with the wrong VMCS revision identifier"
    ),
    VmInstructionError.UNSUPPORTED_VMCS_COMPONENT: (
        "VMREAD or VMWRITE of a VMCS component that is not supported"
    ),
    VmInstructionError.VMWRITE_READ_ONLY_COMPONENT: "VMWRITE to a read-only VMCS component",
    VmInstructionError.VMXON_IN_VMX_ROOT_OPERATION: "VMXON executed while in VMX root operation",
    VmInstructionError.VM_ENTRY_INVALID_EXECUTIVE_VMCS_POINTER: (
        "VM entry with an invalid executive-VMCS pointer"
    ),
    VmInstructionError.VM_ENTRY_NON_LAUNCHED_EXECUTIVE_VMCS: (
        "VM entry with an executive VMCS that was never launched"
    ),
    VmInstructionError.VM_ENTRY_EXECUTIVE_VMCS_POINTER_NOT_VMXON_POINTER: (
        "VM entry whose executive-VMCS pointer is not the VMXON pointer "
        "(deactivating the dual-monitor treatment of SMIs and SMM)"
    ),
    VmInstructionError.VMCALL_NON_CLEAR_VMCS: (
        "VMCALL with a VMCS whose launch state is not clear "
        "(activating the dual-monitor treatment of SMIs and SMM)"
    ),
    VmInstructionError.VMCALL_INVALID_VM_EXIT_CONTROL_FIELDS: (
        "VMCALL with invalid VM-exit control fields"
    ),
    VmInstructionError.VMCALL_INCORRECT_MSEG_REVISION_ID: (
        "VMCALL with the wrong MSEG revision identifier"
    ),
    VmInstructionError.VMXOFF_UNDER_DUAL_MONITOR_TREATMENT: (
        "VMXOFF while the dual-monitor treatment of SMIs and SMM is active"
    ),
    VmInstructionError.VMCALL_INVALID_SMM_MONITOR_FEATURES: (
        "VMCALL with invalid SMM-monitor features"
    ),
    VmInstructionError.VM_ENTRY_INVALID_EXECUTIVE_VMCS_CONTROL_FIELDS: (
        "VM entry (returning from SMM) with invalid VM-execution control fields "
        "in the executive VMCS"
    ),
    VmInstructionError.VM_ENTRY_EVENTS_BLOCKED_BY_MOV_SS: (
        "VM entry while events are blocked by MOV SS"
    ),
    VmInstructionError.INVALID_OPERAND_TO_INVEPT_INVVPID: "invalid operand to INVEPT or INVVPID",
}

UNDEFINED: Final[str] = "undefined"


def description(error: int) -> str:
    """What a VM-instruction error number means, or ``"undefined"``."""
    return DESCRIPTIONS.get(error, UNDEFINED)
