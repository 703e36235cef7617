"""Architectural register bits the checks and the dump need, as plain ints.

The control IntFlags of ``controls`` are converted once here: the checks run
before every VM entry and IntFlag arithmetic costs a microsecond per operator.
"""

from __future__ import annotations

from typing import Final

from pyflank.intel_x64.controls import (
    InterruptibilityState,
    PinBasedControls,
    PrimaryProcessorBasedControls,
    SecondaryProcessorBasedControls,
    SecondaryVmExitControls,
    TertiaryProcessorBasedControls,
    VmEntryControls,
    VmExitControls,
)
from pyflank.intel_x64.registers import (  # re-exported: the checks' one namespace
    AR_DB as AR_DB,
)
from pyflank.intel_x64.registers import (
    AR_DPL_SHIFT as AR_DPL_SHIFT,
)
from pyflank.intel_x64.registers import (
    AR_G as AR_G,
)
from pyflank.intel_x64.registers import (
    AR_L as AR_L,
)
from pyflank.intel_x64.registers import (
    AR_P as AR_P,
)
from pyflank.intel_x64.registers import (
    AR_RESERVED_11_8 as AR_RESERVED_11_8,
)
from pyflank.intel_x64.registers import (
    AR_RESERVED_31_17 as AR_RESERVED_31_17,
)
from pyflank.intel_x64.registers import (
    AR_S as AR_S,
)
from pyflank.intel_x64.registers import (
    AR_TYPE as AR_TYPE,
)
from pyflank.intel_x64.registers import (
    AR_UNUSABLE as AR_UNUSABLE,
)
from pyflank.intel_x64.registers import (
    CR0_AM as CR0_AM,
)
from pyflank.intel_x64.registers import (
    CR0_CD as CR0_CD,
)
from pyflank.intel_x64.registers import (
    CR0_EM as CR0_EM,
)
from pyflank.intel_x64.registers import (
    CR0_ET as CR0_ET,
)
from pyflank.intel_x64.registers import (
    CR0_MP as CR0_MP,
)
from pyflank.intel_x64.registers import (
    CR0_NE as CR0_NE,
)
from pyflank.intel_x64.registers import (
    CR0_NW as CR0_NW,
)
from pyflank.intel_x64.registers import (
    CR0_PE as CR0_PE,
)
from pyflank.intel_x64.registers import (
    CR0_PG as CR0_PG,
)
from pyflank.intel_x64.registers import (
    CR0_TS as CR0_TS,
)
from pyflank.intel_x64.registers import (
    CR0_WP as CR0_WP,
)
from pyflank.intel_x64.registers import (
    CR4_CET as CR4_CET,
)
from pyflank.intel_x64.registers import (
    CR4_FRED as CR4_FRED,
)
from pyflank.intel_x64.registers import (
    CR4_OSFXSR as CR4_OSFXSR,
)
from pyflank.intel_x64.registers import (
    CR4_OSXMMEXCPT as CR4_OSXMMEXCPT,
)
from pyflank.intel_x64.registers import (
    CR4_PAE as CR4_PAE,
)
from pyflank.intel_x64.registers import (
    CR4_PCIDE as CR4_PCIDE,
)
from pyflank.intel_x64.registers import (
    CR4_VMXE as CR4_VMXE,
)
from pyflank.intel_x64.registers import (
    DEBUGCTL_BTF as DEBUGCTL_BTF,
)
from pyflank.intel_x64.registers import (
    EFER_LMA as EFER_LMA,
)
from pyflank.intel_x64.registers import (
    EFER_LME as EFER_LME,
)
from pyflank.intel_x64.registers import (
    EFER_NXE as EFER_NXE,
)
from pyflank.intel_x64.registers import (
    EFER_SCE as EFER_SCE,
)
from pyflank.intel_x64.registers import (
    NAMES_CR0 as NAMES_CR0,
)
from pyflank.intel_x64.registers import (
    NAMES_CR4 as NAMES_CR4,
)
from pyflank.intel_x64.registers import (
    NAMES_EFER as NAMES_EFER,
)
from pyflank.intel_x64.registers import (
    NAMES_RFLAGS as NAMES_RFLAGS,
)
from pyflank.intel_x64.registers import (
    RFLAGS_FIXED1 as RFLAGS_FIXED1,
)
from pyflank.intel_x64.registers import (
    RFLAGS_IF as RFLAGS_IF,
)
from pyflank.intel_x64.registers import (
    RFLAGS_IOPL as RFLAGS_IOPL,
)
from pyflank.intel_x64.registers import (
    RFLAGS_NT as RFLAGS_NT,
)
from pyflank.intel_x64.registers import (
    RFLAGS_RESERVED0 as RFLAGS_RESERVED0,
)
from pyflank.intel_x64.registers import (
    RFLAGS_RF as RFLAGS_RF,
)
from pyflank.intel_x64.registers import (
    RFLAGS_TF as RFLAGS_TF,
)
from pyflank.intel_x64.registers import (
    RFLAGS_VM as RFLAGS_VM,
)
from pyflank.intel_x64.registers import (
    flag_names as flag_names,
)

# -- VMX controls as ints ------------------------------------------------------
PIN_EXTERNAL_INTERRUPT_EXITING = int(PinBasedControls.EXTERNAL_INTERRUPT_EXITING)
PIN_NMI_EXITING = int(PinBasedControls.NMI_EXITING)
PIN_VIRTUAL_NMIS = int(PinBasedControls.VIRTUAL_NMIS)
PIN_PREEMPTION_TIMER = int(PinBasedControls.ACTIVATE_VMX_PREEMPTION_TIMER)
PIN_POSTED_INTERRUPTS = int(PinBasedControls.PROCESS_POSTED_INTERRUPTS)

_P1 = PrimaryProcessorBasedControls
PROC_TERTIARY = int(_P1.ACTIVATE_TERTIARY_CONTROLS)
PROC_TPR_SHADOW = int(_P1.USE_TPR_SHADOW)
PROC_NMI_WINDOW = int(_P1.NMI_WINDOW_EXITING)
PROC_IO_BITMAPS = int(_P1.USE_IO_BITMAPS)
PROC_MTF = int(_P1.MONITOR_TRAP_FLAG)
PROC_MSR_BITMAPS = int(_P1.USE_MSR_BITMAPS)
PROC_SECONDARY = int(_P1.ACTIVATE_SECONDARY_CONTROLS)

_P2 = SecondaryProcessorBasedControls
PROC2_APIC_ACCESSES = int(_P2.VIRTUALIZE_APIC_ACCESSES)
PROC2_EPT = int(_P2.ENABLE_EPT)
PROC2_X2APIC = int(_P2.VIRTUALIZE_X2APIC_MODE)
PROC2_VPID = int(_P2.ENABLE_VPID)
PROC2_UNRESTRICTED = int(_P2.UNRESTRICTED_GUEST)
PROC2_APIC_REGISTER = int(_P2.APIC_REGISTER_VIRTUALIZATION)
PROC2_VID = int(_P2.VIRTUAL_INTERRUPT_DELIVERY)
PROC2_VMFUNC = int(_P2.ENABLE_VM_FUNCTIONS)
PROC2_VMCS_SHADOWING = int(_P2.VMCS_SHADOWING)
PROC2_PML = int(_P2.ENABLE_PML)
PROC2_EPT_VE = int(_P2.EPT_VIOLATION_VE)
PROC2_MODE_BASED_EPT = int(_P2.MODE_BASED_EXECUTE_CONTROL_FOR_EPT)
PROC2_SUB_PAGE = int(_P2.SUB_PAGE_WRITE_PERMISSIONS_FOR_EPT)
PROC2_PT_GUEST_PHYSICAL = int(_P2.INTEL_PT_USES_GUEST_PHYSICAL_ADDRESSES)

PROC3_IPI_VIRTUALIZATION = int(TertiaryProcessorBasedControls.IPI_VIRTUALIZATION)

EXIT_HOST_64 = int(VmExitControls.HOST_ADDRESS_SPACE_SIZE)
EXIT_LOAD_PERF_GLOBAL = int(VmExitControls.LOAD_IA32_PERF_GLOBAL_CTRL)
EXIT_ACK_INTERRUPT = int(VmExitControls.ACKNOWLEDGE_INTERRUPT_ON_EXIT)
EXIT_LOAD_PAT = int(VmExitControls.LOAD_IA32_PAT)
EXIT_LOAD_EFER = int(VmExitControls.LOAD_IA32_EFER)
EXIT_SAVE_PREEMPTION = int(VmExitControls.SAVE_VMX_PREEMPTION_TIMER_VALUE)
EXIT_LOAD_CET = int(VmExitControls.LOAD_CET_STATE)
EXIT_LOAD_PKRS = int(VmExitControls.LOAD_PKRS)
EXIT_SECONDARY = int(VmExitControls.ACTIVATE_SECONDARY_CONTROLS)
EXIT_CLEAR_RTIT = int(VmExitControls.CLEAR_IA32_RTIT_CTL)
EXIT2_LOAD_FRED = int(SecondaryVmExitControls.LOAD_IA32_FRED)

ENTRY_LOAD_DEBUG = int(VmEntryControls.LOAD_DEBUG_CONTROLS)
ENTRY_IA32E = int(VmEntryControls.IA_32E_MODE_GUEST)
ENTRY_SMM = int(VmEntryControls.ENTRY_TO_SMM)
ENTRY_DUAL_MONITOR = int(VmEntryControls.DEACTIVATE_DUAL_MONITOR_TREATMENT)
ENTRY_LOAD_PERF_GLOBAL = int(VmEntryControls.LOAD_IA32_PERF_GLOBAL_CTRL)
ENTRY_LOAD_PAT = int(VmEntryControls.LOAD_IA32_PAT)
ENTRY_LOAD_EFER = int(VmEntryControls.LOAD_IA32_EFER)
ENTRY_LOAD_BNDCFGS = int(VmEntryControls.LOAD_IA32_BNDCFGS)
ENTRY_LOAD_CET = int(VmEntryControls.LOAD_CET_STATE)
ENTRY_LOAD_PKRS = int(VmEntryControls.LOAD_PKRS)
ENTRY_LOAD_RTIT = int(VmEntryControls.LOAD_IA32_RTIT_CTL)
ENTRY_LOAD_UINV = int(VmEntryControls.LOAD_UINV)
ENTRY_LOAD_LBR_CTL = int(VmEntryControls.LOAD_GUEST_IA32_LBR_CTL)
ENTRY_LOAD_FRED = int(VmEntryControls.LOAD_IA32_FRED)

BLOCKING_BY_STI = int(InterruptibilityState.BLOCKING_BY_STI)
BLOCKING_BY_MOV_SS = int(InterruptibilityState.BLOCKING_BY_MOV_SS)
BLOCKING_BY_SMI = int(InterruptibilityState.BLOCKING_BY_SMI)
BLOCKING_BY_NMI = int(InterruptibilityState.BLOCKING_BY_NMI)
ENCLAVE_INTERRUPTION = int(InterruptibilityState.ENCLAVE_INTERRUPTION)

# -- event injection (VM-entry interruption-information field) -----------------
EVENT_VALID = 1 << 31
EVENT_DELIVER_ERROR_CODE = 1 << 11
EVENT_NESTED_EXCEPTION = 1 << 13  # FRED: the injected exception is nested
EVENT_RESERVED_30_12: Final[int] = 0x7FFF_F000
TYPE_EXTERNAL_INTERRUPT, TYPE_RESERVED, TYPE_NMI, TYPE_HARDWARE_EXCEPTION = 0, 1, 2, 3
TYPE_SOFTWARE_INTERRUPT, TYPE_PRIVILEGED_SOFTWARE_EXCEPTION = 4, 5
TYPE_SOFTWARE_EXCEPTION, TYPE_OTHER_EVENT = 6, 7
SOFTWARE_EVENT_TYPES: Final[frozenset[int]] = frozenset(
    {TYPE_SOFTWARE_INTERRUPT, TYPE_PRIVILEGED_SOFTWARE_EXCEPTION, TYPE_SOFTWARE_EXCEPTION}
)
# #DF, #TS, #NP, #SS, #GP, #PF, #AC push an error code.
ERROR_CODE_VECTORS: Final[frozenset[int]] = frozenset({8, 10, 11, 12, 13, 14, 17})

# -- capability-MSR bits (SDM Vol. 3D, Appendix A) ------------------------------
BASIC_32BIT_ADDRESSES = 1 << 48
MISC_ACTIVITY_SHIFT = 6  # bits 8:6: HLT, shutdown, wait-for-SIPI supported
MISC_ZERO_LENGTH_INJECTION = 1 << 30
EPT_CAP_WALK_4 = 1 << 6
EPT_CAP_WALK_5 = 1 << 7
EPT_CAP_UC = 1 << 8
EPT_CAP_WB = 1 << 14
EPT_CAP_ACCESSED_DIRTY = 1 << 21

MASK64: Final[int] = (1 << 64) - 1
MASK32: Final[int] = (1 << 32) - 1
