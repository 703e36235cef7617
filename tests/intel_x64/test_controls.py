"""VMX control bits, default1 sets, guest-state enums and MSR addresses."""

from __future__ import annotations

from enum import IntFlag

import pytest

from pyflank.intel_x64 import controls, msrs
from pyflank.intel_x64.controls import (
    ActivityState,
    InterruptibilityState,
    PinBasedControls,
    PrimaryProcessorBasedControls,
    SecondaryProcessorBasedControls,
    TertiaryProcessorBasedControls,
    VmEntryControls,
    VmExitControls,
)

FLAGS: list[type[IntFlag]] = [
    PinBasedControls,
    PrimaryProcessorBasedControls,
    SecondaryProcessorBasedControls,
    TertiaryProcessorBasedControls,
    VmExitControls,
    controls.SecondaryVmExitControls,
    VmEntryControls,
    InterruptibilityState,
]


@pytest.mark.parametrize("flag", FLAGS)
def test_every_member_is_one_distinct_bit(flag: type[IntFlag]) -> None:
    values = [int(member) for member in flag.__members__.values()]
    assert all(v and v & (v - 1) == 0 for v in values)
    assert len(set(values)) == len(values)


@pytest.mark.parametrize(
    ("member", "bit"),
    [
        (PinBasedControls.EXTERNAL_INTERRUPT_EXITING, 0),
        (PinBasedControls.NMI_EXITING, 3),
        (PinBasedControls.PROCESS_POSTED_INTERRUPTS, 7),
        (PrimaryProcessorBasedControls.INTERRUPT_WINDOW_EXITING, 2),
        (PrimaryProcessorBasedControls.HLT_EXITING, 7),
        (PrimaryProcessorBasedControls.RDTSC_EXITING, 12),
        (PrimaryProcessorBasedControls.ACTIVATE_TERTIARY_CONTROLS, 17),
        (PrimaryProcessorBasedControls.UNCONDITIONAL_IO_EXITING, 24),
        (PrimaryProcessorBasedControls.USE_IO_BITMAPS, 25),
        (PrimaryProcessorBasedControls.USE_MSR_BITMAPS, 28),
        (PrimaryProcessorBasedControls.ACTIVATE_SECONDARY_CONTROLS, 31),
        (SecondaryProcessorBasedControls.ENABLE_EPT, 1),
        (SecondaryProcessorBasedControls.ENABLE_VPID, 5),
        (SecondaryProcessorBasedControls.UNRESTRICTED_GUEST, 7),
        (SecondaryProcessorBasedControls.ENABLE_XSAVES_XRSTORS, 20),
        (SecondaryProcessorBasedControls.INSTRUCTION_TIMEOUT, 31),
        (TertiaryProcessorBasedControls.IPI_VIRTUALIZATION, 4),
        (VmExitControls.HOST_ADDRESS_SPACE_SIZE, 9),
        (VmExitControls.ACKNOWLEDGE_INTERRUPT_ON_EXIT, 15),
        (VmExitControls.SAVE_IA32_PAT, 18),
        (VmExitControls.LOAD_IA32_EFER, 21),
        (VmExitControls.ACTIVATE_SECONDARY_CONTROLS, 31),
        (VmEntryControls.IA_32E_MODE_GUEST, 9),
        (VmEntryControls.LOAD_IA32_PAT, 14),
        (VmEntryControls.LOAD_IA32_EFER, 15),
        (VmEntryControls.LOAD_PKRS, 22),
    ],
)
def test_spot_checks_against_the_sdm(member: IntFlag, bit: int) -> None:
    assert member == 1 << bit


def test_default1_sets() -> None:
    assert controls.PIN_BASED_CONTROLS_DEFAULT1 == 0x0000_0016
    assert controls.PRIMARY_PROCESSOR_BASED_CONTROLS_DEFAULT1 == 0x0401_E172
    assert controls.VM_EXIT_CONTROLS_DEFAULT1 == 0x0003_6DFF
    assert controls.VM_ENTRY_CONTROLS_DEFAULT1 == 0x0000_11FF


def test_default1_bits_that_are_also_named_controls() -> None:
    # The TRUE capability MSRs exist precisely so these named controls can be cleared.
    primary = PrimaryProcessorBasedControls(controls.PRIMARY_PROCESSOR_BASED_CONTROLS_DEFAULT1)
    assert primary == (
        PrimaryProcessorBasedControls.CR3_LOAD_EXITING
        | PrimaryProcessorBasedControls.CR3_STORE_EXITING
        | primary
    )
    assert controls.VM_EXIT_CONTROLS_DEFAULT1 & VmExitControls.SAVE_DEBUG_CONTROLS
    assert controls.VM_ENTRY_CONTROLS_DEFAULT1 & VmEntryControls.LOAD_DEBUG_CONTROLS
    assert not controls.PIN_BASED_CONTROLS_DEFAULT1 & sum(PinBasedControls)


def test_adjust_controls() -> None:
    capability = 0x0000_007F_0000_0016
    assert controls.allowed_settings(capability) == (0x16, 0x7F)
    wanted = PinBasedControls.NMI_EXITING | PinBasedControls.PROCESS_POSTED_INTERRUPTS
    assert controls.adjust_controls(wanted, capability) == 0x16 | 1 << 3


def test_guest_state_enums() -> None:
    assert [int(s) for s in ActivityState] == [0, 1, 2, 3]
    assert int(InterruptibilityState.BLOCKING_BY_MOV_SS) == 2
    assert int(InterruptibilityState.BLOCKING_BY_NMI) == 8


# -- MSR addresses ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "address"),
    [
        ("IA32_TIME_STAMP_COUNTER", 0x10),
        ("IA32_APIC_BASE", 0x1B),
        ("IA32_FEATURE_CONTROL", 0x3A),
        ("IA32_SYSENTER_CS", 0x174),
        ("IA32_DEBUGCTL", 0x1D9),
        ("IA32_PAT", 0x277),
        ("IA32_PERF_GLOBAL_CTRL", 0x38F),
        ("IA32_MISC_ENABLE", 0x1A0),
        ("IA32_VMX_BASIC", 0x480),
        ("IA32_VMX_CR4_FIXED1", 0x489),
        ("IA32_VMX_VMCS_ENUM", 0x48A),
        ("IA32_VMX_TRUE_ENTRY_CTLS", 0x490),
        ("IA32_VMX_PROCBASED_CTLS3", 0x492),
        ("IA32_VMX_EXIT_CTLS2", 0x493),
        ("IA32_S_CET", 0x6A2),
        ("IA32_PKRS", 0x6E1),
        ("IA32_BNDCFGS", 0xD90),
        ("IA32_EFER", 0xC000_0080),
        ("IA32_LSTAR", 0xC000_0082),
        ("IA32_FMASK", 0xC000_0084),
        ("IA32_KERNEL_GS_BASE", 0xC000_0102),
        ("IA32_TSC_AUX", 0xC000_0103),
    ],
)
def test_msr_addresses(name: str, address: int) -> None:
    assert getattr(msrs, name) == address
    assert msrs.MSR_NAMES[address] == name


def test_vmx_capability_msrs_are_contiguous() -> None:
    vmx = sorted(v for n, v in vars(msrs).items() if n.startswith("IA32_VMX_") and n.isupper())
    assert vmx == list(range(0x480, 0x494))


def test_msr_names_cover_every_address_once() -> None:
    addresses = [v for n, v in vars(msrs).items() if n.startswith("IA32_") and isinstance(v, int)]
    assert len(set(addresses)) == len(addresses) == len(msrs.MSR_NAMES)
    assert msrs.msr_name(0xC000_0080) == "IA32_EFER"
    assert msrs.msr_name(0x12345) == "MSR 0x12345"


def test_efer_bits() -> None:
    assert (msrs.EFER_SCE, msrs.EFER_LME, msrs.EFER_LMA, msrs.EFER_NXE) == (
        1,
        1 << 8,
        1 << 10,
        1 << 11,
    )
