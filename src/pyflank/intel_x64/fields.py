"""Every VMCS field of Intel SDM Vol. 3, Appendix B ("Field Encoding in VMCS").

A field's encoding is self-describing (SDM "VMREAD, VMWRITE, and Encodings of
VMCS Fields"): bit 0 is the access type (full or high half), bits 9:1 the
index, bits 11:10 the type and bits 14:13 the width.  ``VmcsField`` therefore
stores only the encoding and the SDM name; everything else is derived.

Each module constant is the encoding of the field whose ``name`` is the
constant in lower case, so ``FIELD_BY_NAME["guest_rip"].encoding == GUEST_RIP``.
64-bit fields also have a ``*_HIGH`` constant for the upper 32 bits.

The tables follow the SDM tables B-1 to B-15 in order.  Besides the fields of
the SDM, the 64-bit tables carry the FRED fields (guest/host IA32_FRED_*,
injected-event data, original-event data) whose encodings come from Intel's
FRED specification as implemented by Linux/KVM.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final


class FieldType(IntEnum):
    """Bits 11:10 of an encoding: which area of the VMCS the field is in."""

    CONTROL = 0
    READ_ONLY_DATA = 1
    GUEST_STATE = 2
    HOST_STATE = 3


class FieldWidth(IntEnum):
    """Bits 14:13 of an encoding (note the SDM's order: 64-bit before 32-bit)."""

    BITS16 = 0
    BITS64 = 1
    BITS32 = 2
    NATURAL = 3


_ACCESS_HIGH = 0x1
_INDEX_SHIFT, _INDEX_MASK = 1, 0x1FF
_TYPE_SHIFT, _TYPE_MASK = 10, 0x3
_WIDTH_SHIFT, _WIDTH_MASK = 13, 0x3
# Bit 12 must be 0 and bits 31:15 are reserved; VMREAD/VMWRITE fail on anything else.
_RESERVED_BITS = (1 << 12) | ~0x7FFF

_BITS_BY_WIDTH: Final[dict[FieldWidth, int]] = {
    FieldWidth.BITS16: 16,
    FieldWidth.BITS64: 64,
    FieldWidth.BITS32: 32,
    # pyflank models Intel 64 processors only, where natural width is 64 bits.
    FieldWidth.NATURAL: 64,
}

_WIDTH_TITLES: Final[dict[FieldWidth, str]] = {
    FieldWidth.BITS16: "16-Bit",
    FieldWidth.BITS64: "64-Bit",
    FieldWidth.BITS32: "32-Bit",
    FieldWidth.NATURAL: "Natural-Width",
}

_TYPE_TITLES: Final[dict[FieldType, str]] = {
    FieldType.CONTROL: "Control Fields",
    FieldType.READ_ONLY_DATA: "Read-Only Data Fields",
    FieldType.GUEST_STATE: "Guest-State Fields",
    FieldType.HOST_STATE: "Host-State Fields",
}


def _check_encoding(encoding: int) -> None:
    if encoding < 0 or encoding & _RESERVED_BITS:
        raise ValueError(f"not a VMCS field encoding: {encoding:#x}")


def field_type(encoding: int) -> FieldType:
    """The area of the VMCS an encoding belongs to (bits 11:10)."""
    _check_encoding(encoding)
    return FieldType((encoding >> _TYPE_SHIFT) & _TYPE_MASK)


def field_width(encoding: int) -> FieldWidth:
    """The width class of an encoding (bits 14:13)."""
    _check_encoding(encoding)
    return FieldWidth((encoding >> _WIDTH_SHIFT) & _WIDTH_MASK)


def field_index(encoding: int) -> int:
    """The index of an encoding within its width and type (bits 9:1)."""
    _check_encoding(encoding)
    return (encoding >> _INDEX_SHIFT) & _INDEX_MASK


def field_bits(encoding: int) -> int:
    """How many bits a VMREAD through this encoding yields on an Intel 64 processor.

    The HIGH access of a 64-bit field reads only the upper 32 bits.
    """
    if encoding & _ACCESS_HIGH:
        return 32
    return _BITS_BY_WIDTH[field_width(encoding)]


def group_title(width: FieldWidth, type_: FieldType) -> str:
    """The title of the SDM table that lists fields of this width and type."""
    return f"{_WIDTH_TITLES[width]} {_TYPE_TITLES[type_]}"


@dataclass(frozen=True, slots=True)
class VmcsField:
    """One VMCS field encoding and its SDM name; all else follows from the encoding."""

    encoding: int
    name: str

    def __post_init__(self) -> None:
        _check_encoding(self.encoding)
        # Only 64-bit fields have a high half; the other widths allow full access only.
        if self.encoding & _ACCESS_HIGH and field_width(self.encoding) is not FieldWidth.BITS64:
            raise ValueError(f"{self.name}: high access on a field that is not 64-bit")

    @property
    def type(self) -> FieldType:
        return field_type(self.encoding)

    @property
    def width(self) -> FieldWidth:
        return field_width(self.encoding)

    @property
    def index(self) -> int:
        return field_index(self.encoding)

    @property
    def is_high(self) -> bool:
        return bool(self.encoding & _ACCESS_HIGH)

    @property
    def bits(self) -> int:
        return field_bits(self.encoding)

    @property
    def mask(self) -> int:
        return (1 << self.bits) - 1

    @property
    def group(self) -> str:
        return group_title(self.width, self.type)


# 16-Bit Control Fields
VIRTUAL_PROCESSOR_IDENTIFIER: Final[int] = 0x0000
POSTED_INTERRUPT_NOTIFICATION_VECTOR: Final[int] = 0x0002
EPTP_INDEX: Final[int] = 0x0004
HLAT_PREFIX_SIZE: Final[int] = 0x0006
LAST_PID_POINTER_INDEX: Final[int] = 0x0008

# 16-Bit Guest-State Fields
GUEST_ES_SELECTOR: Final[int] = 0x0800
GUEST_CS_SELECTOR: Final[int] = 0x0802
GUEST_SS_SELECTOR: Final[int] = 0x0804
GUEST_DS_SELECTOR: Final[int] = 0x0806
GUEST_FS_SELECTOR: Final[int] = 0x0808
GUEST_GS_SELECTOR: Final[int] = 0x080A
GUEST_LDTR_SELECTOR: Final[int] = 0x080C
GUEST_TR_SELECTOR: Final[int] = 0x080E
GUEST_INTERRUPT_STATUS: Final[int] = 0x0810
PML_INDEX: Final[int] = 0x0812
GUEST_UINV: Final[int] = 0x0814

# 16-Bit Host-State Fields
HOST_ES_SELECTOR: Final[int] = 0x0C00
HOST_CS_SELECTOR: Final[int] = 0x0C02
HOST_SS_SELECTOR: Final[int] = 0x0C04
HOST_DS_SELECTOR: Final[int] = 0x0C06
HOST_FS_SELECTOR: Final[int] = 0x0C08
HOST_GS_SELECTOR: Final[int] = 0x0C0A
HOST_TR_SELECTOR: Final[int] = 0x0C0C

# 64-Bit Control Fields
ADDRESS_OF_IO_BITMAP_A: Final[int] = 0x2000
ADDRESS_OF_IO_BITMAP_A_HIGH: Final[int] = 0x2001
ADDRESS_OF_IO_BITMAP_B: Final[int] = 0x2002
ADDRESS_OF_IO_BITMAP_B_HIGH: Final[int] = 0x2003
ADDRESS_OF_MSR_BITMAPS: Final[int] = 0x2004
ADDRESS_OF_MSR_BITMAPS_HIGH: Final[int] = 0x2005
VM_EXIT_MSR_STORE_ADDRESS: Final[int] = 0x2006
VM_EXIT_MSR_STORE_ADDRESS_HIGH: Final[int] = 0x2007
VM_EXIT_MSR_LOAD_ADDRESS: Final[int] = 0x2008
VM_EXIT_MSR_LOAD_ADDRESS_HIGH: Final[int] = 0x2009
VM_ENTRY_MSR_LOAD_ADDRESS: Final[int] = 0x200A
VM_ENTRY_MSR_LOAD_ADDRESS_HIGH: Final[int] = 0x200B
EXECUTIVE_VMCS_POINTER: Final[int] = 0x200C
EXECUTIVE_VMCS_POINTER_HIGH: Final[int] = 0x200D
PML_ADDRESS: Final[int] = 0x200E
PML_ADDRESS_HIGH: Final[int] = 0x200F
TSC_OFFSET: Final[int] = 0x2010
TSC_OFFSET_HIGH: Final[int] = 0x2011
VIRTUAL_APIC_ADDRESS: Final[int] = 0x2012
VIRTUAL_APIC_ADDRESS_HIGH: Final[int] = 0x2013
APIC_ACCESS_ADDRESS: Final[int] = 0x2014
APIC_ACCESS_ADDRESS_HIGH: Final[int] = 0x2015
POSTED_INTERRUPT_DESCRIPTOR_ADDRESS: Final[int] = 0x2016
POSTED_INTERRUPT_DESCRIPTOR_ADDRESS_HIGH: Final[int] = 0x2017
VM_FUNCTION_CONTROLS: Final[int] = 0x2018
VM_FUNCTION_CONTROLS_HIGH: Final[int] = 0x2019
EPT_POINTER: Final[int] = 0x201A
EPT_POINTER_HIGH: Final[int] = 0x201B
EOI_EXIT_BITMAP_0: Final[int] = 0x201C
EOI_EXIT_BITMAP_0_HIGH: Final[int] = 0x201D
EOI_EXIT_BITMAP_1: Final[int] = 0x201E
EOI_EXIT_BITMAP_1_HIGH: Final[int] = 0x201F
EOI_EXIT_BITMAP_2: Final[int] = 0x2020
EOI_EXIT_BITMAP_2_HIGH: Final[int] = 0x2021
EOI_EXIT_BITMAP_3: Final[int] = 0x2022
EOI_EXIT_BITMAP_3_HIGH: Final[int] = 0x2023
EPTP_LIST_ADDRESS: Final[int] = 0x2024
EPTP_LIST_ADDRESS_HIGH: Final[int] = 0x2025
VMREAD_BITMAP_ADDRESS: Final[int] = 0x2026
VMREAD_BITMAP_ADDRESS_HIGH: Final[int] = 0x2027
VMWRITE_BITMAP_ADDRESS: Final[int] = 0x2028
VMWRITE_BITMAP_ADDRESS_HIGH: Final[int] = 0x2029
VIRTUALIZATION_EXCEPTION_INFORMATION_ADDRESS: Final[int] = 0x202A
VIRTUALIZATION_EXCEPTION_INFORMATION_ADDRESS_HIGH: Final[int] = 0x202B
XSS_EXITING_BITMAP: Final[int] = 0x202C
XSS_EXITING_BITMAP_HIGH: Final[int] = 0x202D
ENCLS_EXITING_BITMAP: Final[int] = 0x202E
ENCLS_EXITING_BITMAP_HIGH: Final[int] = 0x202F
SUB_PAGE_PERMISSION_TABLE_POINTER: Final[int] = 0x2030
SUB_PAGE_PERMISSION_TABLE_POINTER_HIGH: Final[int] = 0x2031
TSC_MULTIPLIER: Final[int] = 0x2032
TSC_MULTIPLIER_HIGH: Final[int] = 0x2033
TERTIARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: Final[int] = 0x2034
TERTIARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS_HIGH: Final[int] = 0x2035
ENCLV_EXITING_BITMAP: Final[int] = 0x2036
ENCLV_EXITING_BITMAP_HIGH: Final[int] = 0x2037
LOW_PASID_DIRECTORY_ADDRESS: Final[int] = 0x2038
LOW_PASID_DIRECTORY_ADDRESS_HIGH: Final[int] = 0x2039
HIGH_PASID_DIRECTORY_ADDRESS: Final[int] = 0x203A
HIGH_PASID_DIRECTORY_ADDRESS_HIGH: Final[int] = 0x203B
SHARED_EPT_POINTER: Final[int] = 0x203C
SHARED_EPT_POINTER_HIGH: Final[int] = 0x203D
PCONFIG_EXITING_BITMAP: Final[int] = 0x203E
PCONFIG_EXITING_BITMAP_HIGH: Final[int] = 0x203F
HLAT_POINTER: Final[int] = 0x2040
HLAT_POINTER_HIGH: Final[int] = 0x2041
PID_POINTER_TABLE_ADDRESS: Final[int] = 0x2042
PID_POINTER_TABLE_ADDRESS_HIGH: Final[int] = 0x2043
SECONDARY_VM_EXIT_CONTROLS: Final[int] = 0x2044
SECONDARY_VM_EXIT_CONTROLS_HIGH: Final[int] = 0x2045
IA32_SPEC_CTRL_MASK: Final[int] = 0x204A
IA32_SPEC_CTRL_MASK_HIGH: Final[int] = 0x204B
IA32_SPEC_CTRL_SHADOW: Final[int] = 0x204C
IA32_SPEC_CTRL_SHADOW_HIGH: Final[int] = 0x204D
INJECTED_EVENT_DATA: Final[int] = 0x2052
INJECTED_EVENT_DATA_HIGH: Final[int] = 0x2053

# 64-Bit Read-Only Data Fields
GUEST_PHYSICAL_ADDRESS: Final[int] = 0x2400
GUEST_PHYSICAL_ADDRESS_HIGH: Final[int] = 0x2401
ORIGINAL_EVENT_DATA: Final[int] = 0x2404
ORIGINAL_EVENT_DATA_HIGH: Final[int] = 0x2405

# 64-Bit Guest-State Fields
VMCS_LINK_POINTER: Final[int] = 0x2800
VMCS_LINK_POINTER_HIGH: Final[int] = 0x2801
GUEST_IA32_DEBUGCTL: Final[int] = 0x2802
GUEST_IA32_DEBUGCTL_HIGH: Final[int] = 0x2803
GUEST_IA32_PAT: Final[int] = 0x2804
GUEST_IA32_PAT_HIGH: Final[int] = 0x2805
GUEST_IA32_EFER: Final[int] = 0x2806
GUEST_IA32_EFER_HIGH: Final[int] = 0x2807
GUEST_IA32_PERF_GLOBAL_CTRL: Final[int] = 0x2808
GUEST_IA32_PERF_GLOBAL_CTRL_HIGH: Final[int] = 0x2809
GUEST_PDPTE0: Final[int] = 0x280A
GUEST_PDPTE0_HIGH: Final[int] = 0x280B
GUEST_PDPTE1: Final[int] = 0x280C
GUEST_PDPTE1_HIGH: Final[int] = 0x280D
GUEST_PDPTE2: Final[int] = 0x280E
GUEST_PDPTE2_HIGH: Final[int] = 0x280F
GUEST_PDPTE3: Final[int] = 0x2810
GUEST_PDPTE3_HIGH: Final[int] = 0x2811
GUEST_IA32_BNDCFGS: Final[int] = 0x2812
GUEST_IA32_BNDCFGS_HIGH: Final[int] = 0x2813
GUEST_IA32_RTIT_CTL: Final[int] = 0x2814
GUEST_IA32_RTIT_CTL_HIGH: Final[int] = 0x2815
GUEST_IA32_LBR_CTL: Final[int] = 0x2816
GUEST_IA32_LBR_CTL_HIGH: Final[int] = 0x2817
GUEST_IA32_PKRS: Final[int] = 0x2818
GUEST_IA32_PKRS_HIGH: Final[int] = 0x2819
GUEST_IA32_FRED_CONFIG: Final[int] = 0x281A
GUEST_IA32_FRED_CONFIG_HIGH: Final[int] = 0x281B
GUEST_IA32_FRED_RSP1: Final[int] = 0x281C
GUEST_IA32_FRED_RSP1_HIGH: Final[int] = 0x281D
GUEST_IA32_FRED_RSP2: Final[int] = 0x281E
GUEST_IA32_FRED_RSP2_HIGH: Final[int] = 0x281F
GUEST_IA32_FRED_RSP3: Final[int] = 0x2820
GUEST_IA32_FRED_RSP3_HIGH: Final[int] = 0x2821
GUEST_IA32_FRED_STKLVLS: Final[int] = 0x2822
GUEST_IA32_FRED_STKLVLS_HIGH: Final[int] = 0x2823
GUEST_IA32_FRED_SSP1: Final[int] = 0x2824
GUEST_IA32_FRED_SSP1_HIGH: Final[int] = 0x2825
GUEST_IA32_FRED_SSP2: Final[int] = 0x2826
GUEST_IA32_FRED_SSP2_HIGH: Final[int] = 0x2827
GUEST_IA32_FRED_SSP3: Final[int] = 0x2828
GUEST_IA32_FRED_SSP3_HIGH: Final[int] = 0x2829

# 64-Bit Host-State Fields
HOST_IA32_PAT: Final[int] = 0x2C00
HOST_IA32_PAT_HIGH: Final[int] = 0x2C01
HOST_IA32_EFER: Final[int] = 0x2C02
HOST_IA32_EFER_HIGH: Final[int] = 0x2C03
HOST_IA32_PERF_GLOBAL_CTRL: Final[int] = 0x2C04
HOST_IA32_PERF_GLOBAL_CTRL_HIGH: Final[int] = 0x2C05
HOST_IA32_PKRS: Final[int] = 0x2C06
HOST_IA32_PKRS_HIGH: Final[int] = 0x2C07
HOST_IA32_FRED_CONFIG: Final[int] = 0x2C08
HOST_IA32_FRED_CONFIG_HIGH: Final[int] = 0x2C09
HOST_IA32_FRED_RSP1: Final[int] = 0x2C0A
HOST_IA32_FRED_RSP1_HIGH: Final[int] = 0x2C0B
HOST_IA32_FRED_RSP2: Final[int] = 0x2C0C
HOST_IA32_FRED_RSP2_HIGH: Final[int] = 0x2C0D
HOST_IA32_FRED_RSP3: Final[int] = 0x2C0E
HOST_IA32_FRED_RSP3_HIGH: Final[int] = 0x2C0F
HOST_IA32_FRED_STKLVLS: Final[int] = 0x2C10
HOST_IA32_FRED_STKLVLS_HIGH: Final[int] = 0x2C11
HOST_IA32_FRED_SSP1: Final[int] = 0x2C12
HOST_IA32_FRED_SSP1_HIGH: Final[int] = 0x2C13
HOST_IA32_FRED_SSP2: Final[int] = 0x2C14
HOST_IA32_FRED_SSP2_HIGH: Final[int] = 0x2C15
HOST_IA32_FRED_SSP3: Final[int] = 0x2C16
HOST_IA32_FRED_SSP3_HIGH: Final[int] = 0x2C17

# 32-Bit Control Fields
PIN_BASED_VM_EXECUTION_CONTROLS: Final[int] = 0x4000
PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: Final[int] = 0x4002
EXCEPTION_BITMAP: Final[int] = 0x4004
PAGE_FAULT_ERROR_CODE_MASK: Final[int] = 0x4006
PAGE_FAULT_ERROR_CODE_MATCH: Final[int] = 0x4008
CR3_TARGET_COUNT: Final[int] = 0x400A
VM_EXIT_CONTROLS: Final[int] = 0x400C
VM_EXIT_MSR_STORE_COUNT: Final[int] = 0x400E
VM_EXIT_MSR_LOAD_COUNT: Final[int] = 0x4010
VM_ENTRY_CONTROLS: Final[int] = 0x4012
VM_ENTRY_MSR_LOAD_COUNT: Final[int] = 0x4014
VM_ENTRY_INTERRUPTION_INFORMATION_FIELD: Final[int] = 0x4016
VM_ENTRY_EXCEPTION_ERROR_CODE: Final[int] = 0x4018
VM_ENTRY_INSTRUCTION_LENGTH: Final[int] = 0x401A
TPR_THRESHOLD: Final[int] = 0x401C
SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: Final[int] = 0x401E
PLE_GAP: Final[int] = 0x4020
PLE_WINDOW: Final[int] = 0x4022
INSTRUCTION_TIMEOUT_CONTROL: Final[int] = 0x4024

# 32-Bit Read-Only Data Fields
VM_INSTRUCTION_ERROR: Final[int] = 0x4400
EXIT_REASON: Final[int] = 0x4402
VM_EXIT_INTERRUPTION_INFORMATION: Final[int] = 0x4404
VM_EXIT_INTERRUPTION_ERROR_CODE: Final[int] = 0x4406
IDT_VECTORING_INFORMATION_FIELD: Final[int] = 0x4408
IDT_VECTORING_ERROR_CODE: Final[int] = 0x440A
VM_EXIT_INSTRUCTION_LENGTH: Final[int] = 0x440C
VM_EXIT_INSTRUCTION_INFORMATION: Final[int] = 0x440E

# 32-Bit Guest-State Fields
GUEST_ES_LIMIT: Final[int] = 0x4800
GUEST_CS_LIMIT: Final[int] = 0x4802
GUEST_SS_LIMIT: Final[int] = 0x4804
GUEST_DS_LIMIT: Final[int] = 0x4806
GUEST_FS_LIMIT: Final[int] = 0x4808
GUEST_GS_LIMIT: Final[int] = 0x480A
GUEST_LDTR_LIMIT: Final[int] = 0x480C
GUEST_TR_LIMIT: Final[int] = 0x480E
GUEST_GDTR_LIMIT: Final[int] = 0x4810
GUEST_IDTR_LIMIT: Final[int] = 0x4812
GUEST_ES_ACCESS_RIGHTS: Final[int] = 0x4814
GUEST_CS_ACCESS_RIGHTS: Final[int] = 0x4816
GUEST_SS_ACCESS_RIGHTS: Final[int] = 0x4818
GUEST_DS_ACCESS_RIGHTS: Final[int] = 0x481A
GUEST_FS_ACCESS_RIGHTS: Final[int] = 0x481C
GUEST_GS_ACCESS_RIGHTS: Final[int] = 0x481E
GUEST_LDTR_ACCESS_RIGHTS: Final[int] = 0x4820
GUEST_TR_ACCESS_RIGHTS: Final[int] = 0x4822
GUEST_INTERRUPTIBILITY_STATE: Final[int] = 0x4824
GUEST_ACTIVITY_STATE: Final[int] = 0x4826
GUEST_SMBASE: Final[int] = 0x4828
GUEST_IA32_SYSENTER_CS: Final[int] = 0x482A
VMX_PREEMPTION_TIMER_VALUE: Final[int] = 0x482E

# 32-Bit Host-State Fields
HOST_IA32_SYSENTER_CS: Final[int] = 0x4C00

# Natural-Width Control Fields
CR0_GUEST_HOST_MASK: Final[int] = 0x6000
CR4_GUEST_HOST_MASK: Final[int] = 0x6002
CR0_READ_SHADOW: Final[int] = 0x6004
CR4_READ_SHADOW: Final[int] = 0x6006
CR3_TARGET_VALUE_0: Final[int] = 0x6008
CR3_TARGET_VALUE_1: Final[int] = 0x600A
CR3_TARGET_VALUE_2: Final[int] = 0x600C
CR3_TARGET_VALUE_3: Final[int] = 0x600E

# Natural-Width Read-Only Data Fields
EXIT_QUALIFICATION: Final[int] = 0x6400
IO_RCX: Final[int] = 0x6402
IO_RSI: Final[int] = 0x6404
IO_RDI: Final[int] = 0x6406
IO_RIP: Final[int] = 0x6408
GUEST_LINEAR_ADDRESS: Final[int] = 0x640A

# Natural-Width Guest-State Fields
GUEST_CR0: Final[int] = 0x6800
GUEST_CR3: Final[int] = 0x6802
GUEST_CR4: Final[int] = 0x6804
GUEST_ES_BASE: Final[int] = 0x6806
GUEST_CS_BASE: Final[int] = 0x6808
GUEST_SS_BASE: Final[int] = 0x680A
GUEST_DS_BASE: Final[int] = 0x680C
GUEST_FS_BASE: Final[int] = 0x680E
GUEST_GS_BASE: Final[int] = 0x6810
GUEST_LDTR_BASE: Final[int] = 0x6812
GUEST_TR_BASE: Final[int] = 0x6814
GUEST_GDTR_BASE: Final[int] = 0x6816
GUEST_IDTR_BASE: Final[int] = 0x6818
GUEST_DR7: Final[int] = 0x681A
GUEST_RSP: Final[int] = 0x681C
GUEST_RIP: Final[int] = 0x681E
GUEST_RFLAGS: Final[int] = 0x6820
GUEST_PENDING_DEBUG_EXCEPTIONS: Final[int] = 0x6822
GUEST_IA32_SYSENTER_ESP: Final[int] = 0x6824
GUEST_IA32_SYSENTER_EIP: Final[int] = 0x6826
GUEST_IA32_S_CET: Final[int] = 0x6828
GUEST_SSP: Final[int] = 0x682A
GUEST_IA32_INTERRUPT_SSP_TABLE_ADDR: Final[int] = 0x682C

# Natural-Width Host-State Fields
HOST_CR0: Final[int] = 0x6C00
HOST_CR3: Final[int] = 0x6C02
HOST_CR4: Final[int] = 0x6C04
HOST_FS_BASE: Final[int] = 0x6C06
HOST_GS_BASE: Final[int] = 0x6C08
HOST_TR_BASE: Final[int] = 0x6C0A
HOST_GDTR_BASE: Final[int] = 0x6C0C
HOST_IDTR_BASE: Final[int] = 0x6C0E
HOST_IA32_SYSENTER_ESP: Final[int] = 0x6C10
HOST_IA32_SYSENTER_EIP: Final[int] = 0x6C12
HOST_RSP: Final[int] = 0x6C14
HOST_RIP: Final[int] = 0x6C16
HOST_IA32_S_CET: Final[int] = 0x6C18
HOST_SSP: Final[int] = 0x6C1A
HOST_IA32_INTERRUPT_SSP_TABLE_ADDR: Final[int] = 0x6C1C

# Other names the same fields go by.  The SDM calls 0x4402 just "exit reason"
# and, since the secondary VM-exit controls, 0x400C the "primary" VM-exit controls.
VM_EXIT_REASON: Final[int] = EXIT_REASON
PRIMARY_VM_EXIT_CONTROLS: Final[int] = VM_EXIT_CONTROLS
GUEST_S_CET: Final[int] = GUEST_IA32_S_CET
GUEST_INTERRUPT_SSP_TABLE_ADDR: Final[int] = GUEST_IA32_INTERRUPT_SSP_TABLE_ADDR
HOST_S_CET: Final[int] = HOST_IA32_S_CET
HOST_INTERRUPT_SSP_TABLE_ADDR: Final[int] = HOST_IA32_INTERRUPT_SSP_TABLE_ADDR

ALIASES: Final[dict[str, str]] = {
    "VM_EXIT_REASON": "EXIT_REASON",
    "PRIMARY_VM_EXIT_CONTROLS": "VM_EXIT_CONTROLS",
    "GUEST_S_CET": "GUEST_IA32_S_CET",
    "GUEST_INTERRUPT_SSP_TABLE_ADDR": "GUEST_IA32_INTERRUPT_SSP_TABLE_ADDR",
    "HOST_S_CET": "HOST_IA32_S_CET",
    "HOST_INTERRUPT_SSP_TABLE_ADDR": "HOST_IA32_INTERRUPT_SSP_TABLE_ADDR",
}
"""Alias constant name -> the constant named after the field."""


def _table(title: str, *names: str) -> tuple[VmcsField, ...]:
    """Build one SDM table from field names; 64-bit fields get their HIGH entry too.

    The encodings are looked up from the module constants by name, so a table
    entry and its constant cannot disagree.
    """
    constants = globals()
    table: list[VmcsField] = []
    for name in names:
        full = VmcsField(constants[name.upper()], name)
        table.append(full)
        if full.width is FieldWidth.BITS64:
            table.append(VmcsField(constants[f"{name.upper()}_HIGH"], f"{name}_high"))
    for field in table:
        if field.group != title:
            raise ValueError(f"{field.name} ({field.encoding:#06x}) is not in table {title!r}")
    return tuple(table)


# SDM Table B-1
CONTROL_FIELDS_16BIT: Final[tuple[VmcsField, ...]] = _table(
    "16-Bit Control Fields",
    "virtual_processor_identifier",
    "posted_interrupt_notification_vector",
    "eptp_index",
    "hlat_prefix_size",
    "last_pid_pointer_index",
)

# SDM Table B-2
GUEST_STATE_FIELDS_16BIT: Final[tuple[VmcsField, ...]] = _table(
    "16-Bit Guest-State Fields",
    "guest_es_selector",
    "guest_cs_selector",
    "guest_ss_selector",
    "guest_ds_selector",
    "guest_fs_selector",
    "guest_gs_selector",
    "guest_ldtr_selector",
    "guest_tr_selector",
    "guest_interrupt_status",
    "pml_index",
    "guest_uinv",
)

# SDM Table B-3
HOST_STATE_FIELDS_16BIT: Final[tuple[VmcsField, ...]] = _table(
    "16-Bit Host-State Fields",
    "host_es_selector",
    "host_cs_selector",
    "host_ss_selector",
    "host_ds_selector",
    "host_fs_selector",
    "host_gs_selector",
    "host_tr_selector",
)

# SDM Table B-4
CONTROL_FIELDS_64BIT: Final[tuple[VmcsField, ...]] = _table(
    "64-Bit Control Fields",
    "address_of_io_bitmap_a",
    "address_of_io_bitmap_b",
    "address_of_msr_bitmaps",
    "vm_exit_msr_store_address",
    "vm_exit_msr_load_address",
    "vm_entry_msr_load_address",
    "executive_vmcs_pointer",
    "pml_address",
    "tsc_offset",
    "virtual_apic_address",
    "apic_access_address",
    "posted_interrupt_descriptor_address",
    "vm_function_controls",
    "ept_pointer",
    "eoi_exit_bitmap_0",
    "eoi_exit_bitmap_1",
    "eoi_exit_bitmap_2",
    "eoi_exit_bitmap_3",
    "eptp_list_address",
    "vmread_bitmap_address",
    "vmwrite_bitmap_address",
    "virtualization_exception_information_address",
    "xss_exiting_bitmap",
    "encls_exiting_bitmap",
    "sub_page_permission_table_pointer",
    "tsc_multiplier",
    "tertiary_processor_based_vm_execution_controls",
    "enclv_exiting_bitmap",
    "low_pasid_directory_address",
    "high_pasid_directory_address",
    "shared_ept_pointer",
    "pconfig_exiting_bitmap",
    "hlat_pointer",
    "pid_pointer_table_address",
    "secondary_vm_exit_controls",
    "ia32_spec_ctrl_mask",
    "ia32_spec_ctrl_shadow",
    "injected_event_data",
)

# SDM Table B-5
READ_ONLY_DATA_FIELDS_64BIT: Final[tuple[VmcsField, ...]] = _table(
    "64-Bit Read-Only Data Fields",
    "guest_physical_address",
    "original_event_data",
)

# SDM Table B-6
GUEST_STATE_FIELDS_64BIT: Final[tuple[VmcsField, ...]] = _table(
    "64-Bit Guest-State Fields",
    "vmcs_link_pointer",
    "guest_ia32_debugctl",
    "guest_ia32_pat",
    "guest_ia32_efer",
    "guest_ia32_perf_global_ctrl",
    "guest_pdpte0",
    "guest_pdpte1",
    "guest_pdpte2",
    "guest_pdpte3",
    "guest_ia32_bndcfgs",
    "guest_ia32_rtit_ctl",
    "guest_ia32_lbr_ctl",
    "guest_ia32_pkrs",
    "guest_ia32_fred_config",
    "guest_ia32_fred_rsp1",
    "guest_ia32_fred_rsp2",
    "guest_ia32_fred_rsp3",
    "guest_ia32_fred_stklvls",
    "guest_ia32_fred_ssp1",
    "guest_ia32_fred_ssp2",
    "guest_ia32_fred_ssp3",
)

# SDM Table B-7
HOST_STATE_FIELDS_64BIT: Final[tuple[VmcsField, ...]] = _table(
    "64-Bit Host-State Fields",
    "host_ia32_pat",
    "host_ia32_efer",
    "host_ia32_perf_global_ctrl",
    "host_ia32_pkrs",
    "host_ia32_fred_config",
    "host_ia32_fred_rsp1",
    "host_ia32_fred_rsp2",
    "host_ia32_fred_rsp3",
    "host_ia32_fred_stklvls",
    "host_ia32_fred_ssp1",
    "host_ia32_fred_ssp2",
    "host_ia32_fred_ssp3",
)

# SDM Table B-8
CONTROL_FIELDS_32BIT: Final[tuple[VmcsField, ...]] = _table(
    "32-Bit Control Fields",
    "pin_based_vm_execution_controls",
    "primary_processor_based_vm_execution_controls",
    "exception_bitmap",
    "page_fault_error_code_mask",
    "page_fault_error_code_match",
    "cr3_target_count",
    "vm_exit_controls",
    "vm_exit_msr_store_count",
    "vm_exit_msr_load_count",
    "vm_entry_controls",
    "vm_entry_msr_load_count",
    "vm_entry_interruption_information_field",
    "vm_entry_exception_error_code",
    "vm_entry_instruction_length",
    "tpr_threshold",
    "secondary_processor_based_vm_execution_controls",
    "ple_gap",
    "ple_window",
    "instruction_timeout_control",
)

# SDM Table B-9
READ_ONLY_DATA_FIELDS_32BIT: Final[tuple[VmcsField, ...]] = _table(
    "32-Bit Read-Only Data Fields",
    "vm_instruction_error",
    "exit_reason",
    "vm_exit_interruption_information",
    "vm_exit_interruption_error_code",
    "idt_vectoring_information_field",
    "idt_vectoring_error_code",
    "vm_exit_instruction_length",
    "vm_exit_instruction_information",
)

# SDM Table B-10
GUEST_STATE_FIELDS_32BIT: Final[tuple[VmcsField, ...]] = _table(
    "32-Bit Guest-State Fields",
    "guest_es_limit",
    "guest_cs_limit",
    "guest_ss_limit",
    "guest_ds_limit",
    "guest_fs_limit",
    "guest_gs_limit",
    "guest_ldtr_limit",
    "guest_tr_limit",
    "guest_gdtr_limit",
    "guest_idtr_limit",
    "guest_es_access_rights",
    "guest_cs_access_rights",
    "guest_ss_access_rights",
    "guest_ds_access_rights",
    "guest_fs_access_rights",
    "guest_gs_access_rights",
    "guest_ldtr_access_rights",
    "guest_tr_access_rights",
    "guest_interruptibility_state",
    "guest_activity_state",
    "guest_smbase",
    "guest_ia32_sysenter_cs",
    "vmx_preemption_timer_value",
)

# SDM Table B-11
HOST_STATE_FIELDS_32BIT: Final[tuple[VmcsField, ...]] = _table(
    "32-Bit Host-State Fields",
    "host_ia32_sysenter_cs",
)

# SDM Table B-12
CONTROL_FIELDS_NATURAL: Final[tuple[VmcsField, ...]] = _table(
    "Natural-Width Control Fields",
    "cr0_guest_host_mask",
    "cr4_guest_host_mask",
    "cr0_read_shadow",
    "cr4_read_shadow",
    "cr3_target_value_0",
    "cr3_target_value_1",
    "cr3_target_value_2",
    "cr3_target_value_3",
)

# SDM Table B-13
READ_ONLY_DATA_FIELDS_NATURAL: Final[tuple[VmcsField, ...]] = _table(
    "Natural-Width Read-Only Data Fields",
    "exit_qualification",
    "io_rcx",
    "io_rsi",
    "io_rdi",
    "io_rip",
    "guest_linear_address",
)

# SDM Table B-14
GUEST_STATE_FIELDS_NATURAL: Final[tuple[VmcsField, ...]] = _table(
    "Natural-Width Guest-State Fields",
    "guest_cr0",
    "guest_cr3",
    "guest_cr4",
    "guest_es_base",
    "guest_cs_base",
    "guest_ss_base",
    "guest_ds_base",
    "guest_fs_base",
    "guest_gs_base",
    "guest_ldtr_base",
    "guest_tr_base",
    "guest_gdtr_base",
    "guest_idtr_base",
    "guest_dr7",
    "guest_rsp",
    "guest_rip",
    "guest_rflags",
    "guest_pending_debug_exceptions",
    "guest_ia32_sysenter_esp",
    "guest_ia32_sysenter_eip",
    "guest_ia32_s_cet",
    "guest_ssp",
    "guest_ia32_interrupt_ssp_table_addr",
)

# SDM Table B-15
HOST_STATE_FIELDS_NATURAL: Final[tuple[VmcsField, ...]] = _table(
    "Natural-Width Host-State Fields",
    "host_cr0",
    "host_cr3",
    "host_cr4",
    "host_fs_base",
    "host_gs_base",
    "host_tr_base",
    "host_gdtr_base",
    "host_idtr_base",
    "host_ia32_sysenter_esp",
    "host_ia32_sysenter_eip",
    "host_rsp",
    "host_rip",
    "host_ia32_s_cet",
    "host_ssp",
    "host_ia32_interrupt_ssp_table_addr",
)


FIELD_GROUPS: Final[dict[str, tuple[VmcsField, ...]]] = {
    table[0].group: table
    for table in (
        CONTROL_FIELDS_16BIT,
        GUEST_STATE_FIELDS_16BIT,
        HOST_STATE_FIELDS_16BIT,
        CONTROL_FIELDS_64BIT,
        READ_ONLY_DATA_FIELDS_64BIT,
        GUEST_STATE_FIELDS_64BIT,
        HOST_STATE_FIELDS_64BIT,
        CONTROL_FIELDS_32BIT,
        READ_ONLY_DATA_FIELDS_32BIT,
        GUEST_STATE_FIELDS_32BIT,
        HOST_STATE_FIELDS_32BIT,
        CONTROL_FIELDS_NATURAL,
        READ_ONLY_DATA_FIELDS_NATURAL,
        GUEST_STATE_FIELDS_NATURAL,
        HOST_STATE_FIELDS_NATURAL,
    )
}
"""SDM table title -> its fields, tables and fields both in SDM order."""

ALL_FIELDS: Final[tuple[VmcsField, ...]] = tuple(
    field for table in FIELD_GROUPS.values() for field in table
)
FIELD_BY_ENCODING: Final[dict[int, VmcsField]] = {field.encoding: field for field in ALL_FIELDS}
FIELD_BY_NAME: Final[dict[str, VmcsField]] = {field.name: field for field in ALL_FIELDS}
