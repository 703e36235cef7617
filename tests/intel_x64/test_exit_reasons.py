"""Exit reasons, the exit-reason field, and VM-instruction error numbers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflank.intel_x64 import exit_reasons, instruction_errors
from pyflank.intel_x64.exit_reasons import (
    BASIC_EXIT_REASON_MASK,
    DEFINED_BITS,
    VM_ENTRY_FAILURE,
    ExitReason,
    ExitReasonField,
    description,
)


@pytest.mark.parametrize(
    ("reason", "number"),
    [
        (ExitReason.EXCEPTION_OR_NMI, 0),
        (ExitReason.EXTERNAL_INTERRUPT, 1),
        (ExitReason.TRIPLE_FAULT, 2),
        (ExitReason.CPUID, 10),
        (ExitReason.HLT, 12),
        (ExitReason.INVD, 13),
        (ExitReason.RDTSC, 16),
        (ExitReason.VMCALL, 18),
        (ExitReason.VMCLEAR, 19),
        (ExitReason.VMXON, 27),
        (ExitReason.CONTROL_REGISTER_ACCESS, 28),
        (ExitReason.MOV_DR, 29),
        (ExitReason.IO_INSTRUCTION, 30),
        (ExitReason.RDMSR, 31),
        (ExitReason.WRMSR, 32),
        (ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE, 33),
        (ExitReason.VM_ENTRY_FAILURE_MSR_LOADING, 34),
        (ExitReason.MWAIT, 36),
        (ExitReason.EPT_VIOLATION, 48),
        (ExitReason.EPT_MISCONFIGURATION, 49),
        (ExitReason.INVEPT, 50),
        (ExitReason.RDTSCP, 51),
        (ExitReason.INVVPID, 53),
        (ExitReason.WBINVD, 54),
        (ExitReason.XSETBV, 55),
        (ExitReason.VMFUNC, 59),
        (ExitReason.BUS_LOCK, 74),
        (ExitReason.INSTRUCTION_TIMEOUT, 75),
        (ExitReason.TDCALL, 77),
        (ExitReason.RDMSRLIST, 78),
    ],
)
def test_sdm_numbers(reason: ExitReason, number: int) -> None:
    assert reason == number


def test_vmx_instruction_reasons_are_contiguous() -> None:
    names = ["VMCLEAR", "VMLAUNCH", "VMPTRLD", "VMPTRST", "VMREAD", "VMRESUME", "VMWRITE"]
    assert [ExitReason[n] for n in [*names, "VMXOFF", "VMXON"]] == list(range(19, 28))


def test_unassigned_numbers_have_no_member() -> None:
    for number in (35, 38, 42, 71, 82, 83):
        with pytest.raises(ValueError):
            ExitReason(number)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "exception_or_non_maskable_interrupt"),
        (2, "triple_fault"),
        (10, "cpuid"),
        (18, "vmcall"),
        (28, "control_register_accesses"),
        (48, "ept_violation"),
        (VM_ENTRY_FAILURE | 33, "vm_entry_failure_invalid_guest_state"),
        (0x1234_000A, "cpuid"),
        (35, "unknown"),
        (0xBEEF, "unknown"),
        (0xFFFF, "unknown"),
    ],
)
def test_description(value: int, text: str) -> None:
    assert description(value) == text


def test_every_reason_has_a_lower_snake_description() -> None:
    for reason in ExitReason:
        text = description(reason)
        assert text != exit_reasons.UNKNOWN
        assert text == text.lower()
        assert " " not in text


def test_exit_reason_lookup() -> None:
    failed_entry = VM_ENTRY_FAILURE | 34
    assert exit_reasons.exit_reason(failed_entry) is ExitReason.VM_ENTRY_FAILURE_MSR_LOADING
    assert exit_reasons.exit_reason(0xBEEF) is None


def test_exit_reason_field_decodes_flags() -> None:
    field = ExitReasonField.decode(0x8000_0021)
    assert field.basic_reason == 33
    assert field.vm_entry_failure
    assert field.reason is ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE
    assert not (field.pending_mtf or field.from_vmx_root or field.enclave_mode or field.bus_lock)
    assert str(field) == "vm_entry_failure_invalid_guest_state (33) vm_entry_failure"
    smm = ExitReasonField.decode((1 << 28) | (1 << 29) | 6)
    assert smm.pending_mtf and smm.from_vmx_root and smm.reason is ExitReason.OTHER_SMI


def test_exit_reason_field_encode() -> None:
    field = ExitReasonField(ExitReason.EPT_VIOLATION, enclave_mode=True, bus_lock=True)
    assert field.encode() == 48 | 1 << 27 | 1 << 26
    assert BASIC_EXIT_REASON_MASK == 0xFFFF
    assert VM_ENTRY_FAILURE == 0x8000_0000


def test_exit_reason_field_range() -> None:
    with pytest.raises(ValueError):
        ExitReasonField(0x10000)


@given(st.integers(0, 2**32 - 1))
def test_exit_reason_field_round_trip(value: int) -> None:
    assert ExitReasonField.decode(value).encode() == value & DEFINED_BITS


# -- VM-instruction errors ---------------------------------------------------------


def test_instruction_error_numbers() -> None:
    numbers = [int(e) for e in instruction_errors.VmInstructionError]
    assert numbers == [n for n in range(1, 29) if n not in (14, 21, 27)]
    assert set(instruction_errors.DESCRIPTIONS) == set(numbers)


@pytest.mark.parametrize(
    ("error", "fragment"),
    [
        (1, "VMCALL"),
        (4, "VMLAUNCH"),
        (5, "VMRESUME"),
        (7, "control field"),
        (8, "host-state"),
        (12, "not supported"),
        (13, "read-only"),
        (26, "MOV SS"),
        (28, "INVEPT"),
    ],
)
def test_instruction_error_descriptions(error: int, fragment: str) -> None:
    assert fragment in instruction_errors.description(error)


@pytest.mark.parametrize("error", [0, 14, 21, 27, 29, 1000])
def test_unknown_instruction_errors(error: int) -> None:
    assert instruction_errors.description(error) == "undefined"
