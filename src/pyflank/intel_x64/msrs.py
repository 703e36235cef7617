"""Architectural MSR addresses (Intel SDM Vol. 4) that a VMM touches, and a few bits.

Every ``IA32_*`` constant is an MSR address and appears in ``MSR_NAMES``;
bit constants are named after their MSR without the ``IA32_`` prefix so
they stay out of that table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from pyflank.intel_x64 import fields as _fields

IA32_TIME_STAMP_COUNTER: Final[int] = 0x10
IA32_PLATFORM_ID: Final[int] = 0x17
IA32_APIC_BASE: Final[int] = 0x1B
IA32_FEATURE_CONTROL: Final[int] = 0x3A
IA32_TSC_ADJUST: Final[int] = 0x3B
IA32_SPEC_CTRL: Final[int] = 0x48
IA32_PRED_CMD: Final[int] = 0x49
IA32_BIOS_SIGN_ID: Final[int] = 0x8B
IA32_MTRRCAP: Final[int] = 0xFE
IA32_ARCH_CAPABILITIES: Final[int] = 0x10A
IA32_SYSENTER_CS: Final[int] = 0x174
IA32_SYSENTER_ESP: Final[int] = 0x175
IA32_SYSENTER_EIP: Final[int] = 0x176
IA32_MCG_CAP: Final[int] = 0x179
IA32_MCG_STATUS: Final[int] = 0x17A
IA32_MISC_ENABLE: Final[int] = 0x1A0
IA32_FRED_RSP0: Final[int] = 0x1CC
IA32_FRED_RSP1: Final[int] = 0x1CD
IA32_FRED_RSP2: Final[int] = 0x1CE
IA32_FRED_RSP3: Final[int] = 0x1CF
IA32_FRED_STKLVLS: Final[int] = 0x1D0
IA32_FRED_SSP1: Final[int] = 0x1D1
IA32_FRED_SSP2: Final[int] = 0x1D2
IA32_FRED_SSP3: Final[int] = 0x1D3
IA32_FRED_CONFIG: Final[int] = 0x1D4
IA32_DEBUGCTL: Final[int] = 0x1D9
IA32_PAT: Final[int] = 0x277
IA32_MTRR_DEF_TYPE: Final[int] = 0x2FF
IA32_PERF_GLOBAL_STATUS: Final[int] = 0x38E
IA32_PERF_GLOBAL_CTRL: Final[int] = 0x38F

# VMX capability MSRs (SDM Vol. 3, Appendix A).
IA32_VMX_BASIC: Final[int] = 0x480
IA32_VMX_PINBASED_CTLS: Final[int] = 0x481
IA32_VMX_PROCBASED_CTLS: Final[int] = 0x482
IA32_VMX_EXIT_CTLS: Final[int] = 0x483
IA32_VMX_ENTRY_CTLS: Final[int] = 0x484
IA32_VMX_MISC: Final[int] = 0x485
IA32_VMX_CR0_FIXED0: Final[int] = 0x486
IA32_VMX_CR0_FIXED1: Final[int] = 0x487
IA32_VMX_CR4_FIXED0: Final[int] = 0x488
IA32_VMX_CR4_FIXED1: Final[int] = 0x489
IA32_VMX_VMCS_ENUM: Final[int] = 0x48A
IA32_VMX_PROCBASED_CTLS2: Final[int] = 0x48B
IA32_VMX_EPT_VPID_CAP: Final[int] = 0x48C
IA32_VMX_TRUE_PINBASED_CTLS: Final[int] = 0x48D
IA32_VMX_TRUE_PROCBASED_CTLS: Final[int] = 0x48E
IA32_VMX_TRUE_EXIT_CTLS: Final[int] = 0x48F
IA32_VMX_TRUE_ENTRY_CTLS: Final[int] = 0x490
IA32_VMX_VMFUNC: Final[int] = 0x491
IA32_VMX_PROCBASED_CTLS3: Final[int] = 0x492
IA32_VMX_EXIT_CTLS2: Final[int] = 0x493

IA32_RTIT_CTL: Final[int] = 0x570
IA32_U_CET: Final[int] = 0x6A0
IA32_S_CET: Final[int] = 0x6A2
IA32_PL0_SSP: Final[int] = 0x6A4
IA32_PL1_SSP: Final[int] = 0x6A5
IA32_PL2_SSP: Final[int] = 0x6A6
IA32_PL3_SSP: Final[int] = 0x6A7
IA32_INTERRUPT_SSP_TABLE_ADDR: Final[int] = 0x6A8
IA32_TSC_DEADLINE: Final[int] = 0x6E0
IA32_PKRS: Final[int] = 0x6E1
IA32_BNDCFGS: Final[int] = 0xD90
IA32_PASID: Final[int] = 0xD93
IA32_XSS: Final[int] = 0xDA0
IA32_LBR_CTL: Final[int] = 0x14CE

IA32_EFER: Final[int] = 0xC0000080
IA32_STAR: Final[int] = 0xC0000081
IA32_LSTAR: Final[int] = 0xC0000082
IA32_CSTAR: Final[int] = 0xC0000083
IA32_FMASK: Final[int] = 0xC0000084
IA32_FS_BASE: Final[int] = 0xC0000100
IA32_GS_BASE: Final[int] = 0xC0000101
IA32_KERNEL_GS_BASE: Final[int] = 0xC0000102
IA32_TSC_AUX: Final[int] = 0xC0000103

# IA32_EFER bits.
EFER_SCE: Final[int] = 1 << 0
EFER_LME: Final[int] = 1 << 8
EFER_LMA: Final[int] = 1 << 10
EFER_NXE: Final[int] = 1 << 11

# IA32_FEATURE_CONTROL bits that gate VMXON.
FEATURE_CONTROL_LOCK: Final[int] = 1 << 0
FEATURE_CONTROL_VMXON_INSIDE_SMX: Final[int] = 1 << 1
FEATURE_CONTROL_VMXON_OUTSIDE_SMX: Final[int] = 1 << 2

# IA32_VMX_BASIC bit 55: the IA32_VMX_TRUE_*_CTLS MSRs exist and may clear default1 bits.
VMX_BASIC_TRUE_CONTROLS: Final[int] = 1 << 55
# IA32_VMX_BASIC bit 56: VM entry may inject a hardware exception with or without an
# error code, whatever its vector (SDM Vol. 3D, A.1; processors with CET report it).
VMX_BASIC_NO_ERROR_CODE_CHECK: Final[int] = 1 << 56
# IA32_VMX_BASIC bit 58: VMX nested-exception support (FRED): an injected hardware
# exception may be marked nested (bit 13 of the VM-entry interruption information).
VMX_BASIC_NESTED_EXCEPTION: Final[int] = 1 << 58

# IA32_DEBUGCTL bits a processor defines: LBR, BTF, TR, BTS, BTINT, BTS_OFF_OS/USR,
# FREEZE_LBRS/PERFMON_ON_PMI, ENABLE_UNCORE_PMI, FREEZE_WHILE_SMM, RTM_DEBUG.
DEBUGCTL_DEFINED: Final[int] = 0xFFC3
EFER_DEFINED: Final[int] = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE
# The memory types an IA32_PAT entry may hold: UC, WC, WT, WP, WB, UC-.
PAT_MEMORY_TYPES: Final[frozenset[int]] = frozenset({0, 1, 4, 5, 6, 7})

MSR_NAMES: Final[dict[int, str]] = {
    value: name
    for name, value in sorted(globals().items())
    if name.startswith("IA32_") and isinstance(value, int)
}
"""MSR address -> SDM name (``IA32_EFER``), for dumps."""


def msr_name(msr: int) -> str:
    """The SDM name of an MSR, or its address in hex when it is not listed here."""
    return MSR_NAMES.get(msr, f"MSR {msr:#x}")


def pat_bad_entries(pat: int) -> list[int]:
    """Indexes of IA32_PAT entries that hold no memory type (WRMSR would #GP)."""
    return [i for i in range(8) if (pat >> (8 * i)) & 0xFF not in PAT_MEMORY_TYPES]


# -- what WRMSR accepts (SDM Vol. 2B "WRMSR", Vol. 4 "Architectural MSRs") -------
@dataclass(frozen=True, slots=True)
class WrmsrRule:
    """The values WRMSR accepts for one MSR; any other raises #GP(0).

    ``canonical``: the value is a linear address and must be canonical.
    ``defined``: the bits that may be 1 (the others are reserved).
    ``memory_types``: each byte must be a memory type (IA32_PAT).
    ``counters``: only bits of counters CPUID leaf 0AH enumerates (IA32_PERF_GLOBAL_CTRL).
    """

    canonical: bool = False
    defined: int = (1 << 64) - 1
    memory_types: bool = False
    counters: bool = False


ANY_VALUE: Final = WrmsrRule()
LINEAR_ADDRESS: Final = WrmsrRule(canonical=True)


@dataclass(frozen=True, slots=True)
class VmcsBackedMsr:
    """An MSR whose guest value lives in a VMCS guest-state field."""

    field: int
    rule: WrmsrRule


# MSRs whose guest value lives in the VMCS guest-state area (SDM "Guest Register State"),
# the nine Bareflank 1.1 read and wrote through the VMCS.  A VMCS field holds what a
# WRMSR could have put in the MSR, so a write the MSR refuses never reaches the field.
VMCS_BACKED_MSRS: Final[dict[int, VmcsBackedMsr]] = {
    IA32_DEBUGCTL: VmcsBackedMsr(_fields.GUEST_IA32_DEBUGCTL, WrmsrRule(defined=DEBUGCTL_DEFINED)),
    IA32_PAT: VmcsBackedMsr(_fields.GUEST_IA32_PAT, WrmsrRule(memory_types=True)),
    IA32_EFER: VmcsBackedMsr(_fields.GUEST_IA32_EFER, WrmsrRule(defined=EFER_DEFINED)),
    IA32_PERF_GLOBAL_CTRL: VmcsBackedMsr(
        _fields.GUEST_IA32_PERF_GLOBAL_CTRL, WrmsrRule(counters=True)
    ),
    # The SYSENTER_CS field is 32 bits wide: the VMCS keeps the selector half.
    IA32_SYSENTER_CS: VmcsBackedMsr(_fields.GUEST_IA32_SYSENTER_CS, ANY_VALUE),
    IA32_SYSENTER_ESP: VmcsBackedMsr(_fields.GUEST_IA32_SYSENTER_ESP, LINEAR_ADDRESS),
    IA32_SYSENTER_EIP: VmcsBackedMsr(_fields.GUEST_IA32_SYSENTER_EIP, LINEAR_ADDRESS),
    IA32_FS_BASE: VmcsBackedMsr(_fields.GUEST_FS_BASE, LINEAR_ADDRESS),
    IA32_GS_BASE: VmcsBackedMsr(_fields.GUEST_GS_BASE, LINEAR_ADDRESS),
}

# Every MSR whose WRMSR value is checked: the VMCS-backed ones and the other linear
# addresses the SDM's WRMSR page lists (that the model CPU implements).
WRMSR_RULES: Final[dict[int, WrmsrRule]] = {
    **{msr: backed.rule for msr, backed in VMCS_BACKED_MSRS.items()},
    IA32_KERNEL_GS_BASE: LINEAR_ADDRESS,
    IA32_LSTAR: LINEAR_ADDRESS,
    IA32_TSC_AUX: WrmsrRule(defined=0xFFFF_FFFF),  # bits 63:32 reserved
}
