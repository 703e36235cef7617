"""VMX control bits (Intel SDM Vol. 3, "VM-Execution/VM-Exit/VM-Entry Control Fields").

Member names follow the SDM's control names.  The ``*_DEFAULT1`` constants
are the "default1" bits of SDM Appendix A: reserved bits that must be 1 in the
control when the capability MSRs without ``TRUE`` in their name are used.
Processors that report the TRUE MSRs (IA32_VMX_BASIC bit 55) may allow some
of them to be 0.

Also here: the guest activity states and interruptibility-state bits, which a
VM entry checks together with the controls.
"""

from __future__ import annotations

from enum import IntEnum, IntFlag
from typing import Final


class PinBasedControls(IntFlag):
    EXTERNAL_INTERRUPT_EXITING = 1 << 0
    NMI_EXITING = 1 << 3
    VIRTUAL_NMIS = 1 << 5
    ACTIVATE_VMX_PREEMPTION_TIMER = 1 << 6
    PROCESS_POSTED_INTERRUPTS = 1 << 7


class PrimaryProcessorBasedControls(IntFlag):
    INTERRUPT_WINDOW_EXITING = 1 << 2
    USE_TSC_OFFSETTING = 1 << 3
    HLT_EXITING = 1 << 7
    INVLPG_EXITING = 1 << 9
    MWAIT_EXITING = 1 << 10
    RDPMC_EXITING = 1 << 11
    RDTSC_EXITING = 1 << 12
    CR3_LOAD_EXITING = 1 << 15
    CR3_STORE_EXITING = 1 << 16
    ACTIVATE_TERTIARY_CONTROLS = 1 << 17
    CR8_LOAD_EXITING = 1 << 19
    CR8_STORE_EXITING = 1 << 20
    USE_TPR_SHADOW = 1 << 21
    NMI_WINDOW_EXITING = 1 << 22
    MOV_DR_EXITING = 1 << 23
    UNCONDITIONAL_IO_EXITING = 1 << 24
    USE_IO_BITMAPS = 1 << 25
    MONITOR_TRAP_FLAG = 1 << 27
    USE_MSR_BITMAPS = 1 << 28
    MONITOR_EXITING = 1 << 29
    PAUSE_EXITING = 1 << 30
    ACTIVATE_SECONDARY_CONTROLS = 1 << 31


class SecondaryProcessorBasedControls(IntFlag):
    VIRTUALIZE_APIC_ACCESSES = 1 << 0
    ENABLE_EPT = 1 << 1
    DESCRIPTOR_TABLE_EXITING = 1 << 2
    ENABLE_RDTSCP = 1 << 3
    VIRTUALIZE_X2APIC_MODE = 1 << 4
    ENABLE_VPID = 1 << 5
    WBINVD_EXITING = 1 << 6
    UNRESTRICTED_GUEST = 1 << 7
    APIC_REGISTER_VIRTUALIZATION = 1 << 8
    VIRTUAL_INTERRUPT_DELIVERY = 1 << 9
    PAUSE_LOOP_EXITING = 1 << 10
    RDRAND_EXITING = 1 << 11
    ENABLE_INVPCID = 1 << 12
    ENABLE_VM_FUNCTIONS = 1 << 13
    VMCS_SHADOWING = 1 << 14
    ENABLE_ENCLS_EXITING = 1 << 15
    RDSEED_EXITING = 1 << 16
    ENABLE_PML = 1 << 17
    EPT_VIOLATION_VE = 1 << 18
    CONCEAL_VMX_FROM_PT = 1 << 19
    ENABLE_XSAVES_XRSTORS = 1 << 20
    PASID_TRANSLATION = 1 << 21
    MODE_BASED_EXECUTE_CONTROL_FOR_EPT = 1 << 22
    SUB_PAGE_WRITE_PERMISSIONS_FOR_EPT = 1 << 23
    INTEL_PT_USES_GUEST_PHYSICAL_ADDRESSES = 1 << 24
    USE_TSC_SCALING = 1 << 25
    ENABLE_USER_WAIT_AND_PAUSE = 1 << 26
    ENABLE_PCONFIG = 1 << 27
    ENABLE_ENCLV_EXITING = 1 << 28
    VMM_BUS_LOCK_DETECTION = 1 << 30
    INSTRUCTION_TIMEOUT = 1 << 31


class TertiaryProcessorBasedControls(IntFlag):
    """The 64-bit tertiary controls; used only with ACTIVATE_TERTIARY_CONTROLS."""

    LOADIWKEY_EXITING = 1 << 0
    ENABLE_HLAT = 1 << 1
    EPT_PAGING_WRITE_CONTROL = 1 << 2
    GUEST_PAGING_VERIFICATION = 1 << 3
    IPI_VIRTUALIZATION = 1 << 4
    ENABLE_MSR_LIST_INSTRUCTIONS = 1 << 6
    VIRTUALIZE_IA32_SPEC_CTRL = 1 << 7


class VmExitControls(IntFlag):
    """The primary VM-exit controls (field 0x400C)."""

    SAVE_DEBUG_CONTROLS = 1 << 2
    HOST_ADDRESS_SPACE_SIZE = 1 << 9
    LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 12
    ACKNOWLEDGE_INTERRUPT_ON_EXIT = 1 << 15
    SAVE_IA32_PAT = 1 << 18
    LOAD_IA32_PAT = 1 << 19
    SAVE_IA32_EFER = 1 << 20
    LOAD_IA32_EFER = 1 << 21
    SAVE_VMX_PREEMPTION_TIMER_VALUE = 1 << 22
    CLEAR_IA32_BNDCFGS = 1 << 23
    CONCEAL_VMX_FROM_PT = 1 << 24
    CLEAR_IA32_RTIT_CTL = 1 << 25
    CLEAR_IA32_LBR_CTL = 1 << 26
    CLEAR_UINV = 1 << 27
    LOAD_CET_STATE = 1 << 28
    LOAD_PKRS = 1 << 29
    SAVE_IA32_PERF_GLOBAL_CTRL = 1 << 30
    ACTIVATE_SECONDARY_CONTROLS = 1 << 31


class SecondaryVmExitControls(IntFlag):
    """The 64-bit secondary VM-exit controls; used only with ACTIVATE_SECONDARY_CONTROLS."""

    SAVE_IA32_FRED = 1 << 0
    LOAD_IA32_FRED = 1 << 1
    PREMATURELY_BUSY_SHADOW_STACK = 1 << 3


class VmEntryControls(IntFlag):
    LOAD_DEBUG_CONTROLS = 1 << 2
    IA_32E_MODE_GUEST = 1 << 9
    ENTRY_TO_SMM = 1 << 10
    DEACTIVATE_DUAL_MONITOR_TREATMENT = 1 << 11
    LOAD_IA32_PERF_GLOBAL_CTRL = 1 << 13
    LOAD_IA32_PAT = 1 << 14
    LOAD_IA32_EFER = 1 << 15
    LOAD_IA32_BNDCFGS = 1 << 16
    CONCEAL_VMX_FROM_PT = 1 << 17
    LOAD_IA32_RTIT_CTL = 1 << 18
    LOAD_UINV = 1 << 19
    LOAD_CET_STATE = 1 << 20
    LOAD_GUEST_IA32_LBR_CTL = 1 << 21
    LOAD_PKRS = 1 << 22
    LOAD_IA32_FRED = 1 << 23


def _bits(*positions: int | range) -> int:
    value = 0
    for position in positions:
        for bit in position if isinstance(position, range) else (position,):
            value |= 1 << bit
    return value


PIN_BASED_CONTROLS_DEFAULT1: Final[int] = _bits(1, 2, 4)
PRIMARY_PROCESSOR_BASED_CONTROLS_DEFAULT1: Final[int] = _bits(1, range(4, 7), 8, range(13, 17), 26)
VM_EXIT_CONTROLS_DEFAULT1: Final[int] = _bits(range(9), 10, 11, 13, 14, 16, 17)
VM_ENTRY_CONTROLS_DEFAULT1: Final[int] = _bits(range(9), 12)


def allowed_settings(capability: int) -> tuple[int, int]:
    """Split a VMX capability MSR into (bits that must be 1, bits that may be 1).

    SDM Appendix A: bits 31:0 are the allowed 0-settings (a 1 there forces the
    control to 1) and bits 63:32 the allowed 1-settings.
    """
    return capability & 0xFFFF_FFFF, capability >> 32


def adjust_controls(desired: int, capability: int) -> int:
    """The control value closest to ``desired`` that the capability MSR allows."""
    must_be_one, may_be_one = allowed_settings(capability)
    return (desired | must_be_one) & may_be_one


class ActivityState(IntEnum):
    """Guest activity state (field 0x4826)."""

    ACTIVE = 0
    HLT = 1
    SHUTDOWN = 2
    WAIT_FOR_SIPI = 3


class InterruptibilityState(IntFlag):
    """Guest interruptibility state (field 0x4824)."""

    BLOCKING_BY_STI = 1 << 0
    BLOCKING_BY_MOV_SS = 1 << 1
    BLOCKING_BY_SMI = 1 << 2
    BLOCKING_BY_NMI = 1 << 3
    ENCLAVE_INTERRUPTION = 1 << 4
