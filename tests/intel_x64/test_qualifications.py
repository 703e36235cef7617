"""Exit-qualification and interruption-information decoders and encoders."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflank.intel_x64.qualifications import (
    ControlRegisterAccess,
    CrAccessType,
    DrAccessDirection,
    EptViolation,
    InterruptionInformation,
    InterruptionType,
    IoDirection,
    IoInstruction,
    IoOperandEncoding,
    LmswOperandType,
    MovDrAccess,
)

QWORDS = st.integers(0, 2**64 - 1)


@given(QWORDS)
def test_control_register_access_round_trip(value: int) -> None:
    decoded = ControlRegisterAccess.decode(value)
    assert decoded.encode() == value & ControlRegisterAccess.DEFINED_BITS


def test_control_register_access_decode() -> None:
    # mov cr3, r10 (MOV to CR, GPR 10)
    access = ControlRegisterAccess.decode(0x0A03)
    assert access == ControlRegisterAccess(3, CrAccessType.MOV_TO_CR, gpr=10)
    assert str(access) == "mov cr3, r10"
    assert ControlRegisterAccess(0, CrAccessType.MOV_FROM_CR, gpr=0).describe() == "mov rax, cr0"
    assert ControlRegisterAccess.decode(0x20).access_type is CrAccessType.CLTS
    lmsw = ControlRegisterAccess.decode(0x0011_0070)
    assert lmsw.access_type is CrAccessType.LMSW
    assert lmsw.lmsw_operand_type is LmswOperandType.MEMORY
    assert lmsw.lmsw_source_data == 0x11
    assert lmsw.describe() == "lmsw 0x0011 (from memory)"


def test_control_register_access_ranges() -> None:
    with pytest.raises(ValueError):
        ControlRegisterAccess(16, CrAccessType.MOV_TO_CR)
    with pytest.raises(ValueError):
        ControlRegisterAccess(0, CrAccessType.LMSW, lmsw_source_data=0x10000)


@given(QWORDS)
def test_mov_dr_round_trip(value: int) -> None:
    assert MovDrAccess.decode(value).encode() == value & MovDrAccess.DEFINED_BITS


def test_mov_dr_decode() -> None:
    access = MovDrAccess.decode(0x0317)
    assert access == MovDrAccess(7, DrAccessDirection.MOV_FROM_DR, 3)
    assert access.describe() == "mov rbx, dr7"


def _valid_io(value: int) -> bool:
    return value & 0x7 in (0, 1, 3)


@given(QWORDS.filter(_valid_io))
def test_io_instruction_round_trip(value: int) -> None:
    assert IoInstruction.decode(value).encode() == value & IoInstruction.DEFINED_BITS


def test_io_instruction_decode() -> None:
    # in al, dx with DX = 0x3F8
    io = IoInstruction.decode(0x03F8_0008)
    assert io == IoInstruction(size=1, direction=IoDirection.IN, port=0x3F8)
    assert io.describe() == "in port 0x03f8 (1 byte(s), port in dx)"
    # rep outsd to port 0x80 given as an immediate
    rep = IoInstruction(
        size=4,
        direction=IoDirection.OUT,
        port=0x80,
        string=True,
        rep=True,
        operand_encoding=IoOperandEncoding.IMMEDIATE,
    )
    assert rep.encode() == 0x0080_0073
    assert rep.describe().startswith("rep outs port 0x0080")


def test_io_instruction_refuses_bad_sizes() -> None:
    with pytest.raises(ValueError):
        IoInstruction.decode(0x2)
    with pytest.raises(ValueError):
        IoInstruction(size=3, direction=IoDirection.IN, port=0)
    with pytest.raises(ValueError):
        IoInstruction(size=2, direction=IoDirection.IN, port=0x10000)


@given(QWORDS)
def test_ept_violation_round_trip(value: int) -> None:
    assert EptViolation.decode(value).encode() == value & EptViolation.DEFINED_BITS


def test_ept_violation_decode() -> None:
    # A write to a read-only page through a valid linear address.
    violation = EptViolation.decode(0x18A)
    assert violation.data_write and not violation.data_read
    assert violation.readable and not violation.writable and not violation.executable
    assert violation.guest_linear_address_valid and violation.translated_access
    assert not violation.paging_structure_access
    assert violation.describe() == "ept violation: write (ept allows r--) gla_valid"
    walk = EptViolation(data_read=True, guest_linear_address_valid=True)
    assert walk.paging_structure_access
    assert "guest page walk" in walk.describe()
    assert EptViolation(nmi_unblocking=True).encode() == 1 << 12


@given(QWORDS)
def test_interruption_information_round_trip(value: int) -> None:
    decoded = InterruptionInformation.decode(value)
    assert decoded.encode() == value & InterruptionInformation.DEFINED_BITS


def test_interruption_information_decode() -> None:
    # #PF with an error code, valid.
    page_fault = InterruptionInformation.decode(0x8000_0B0E)
    assert page_fault == InterruptionInformation(
        vector=14,
        type=InterruptionType.HARDWARE_EXCEPTION,
        error_code_valid=True,
        nmi_unblocking=False,
        valid=True,
    )
    assert str(page_fault) == "vector 14 #PF hardware_exception error_code"
    nmi = InterruptionInformation(2, InterruptionType.NMI, nmi_unblocking=True)
    assert nmi.encode() == 0x8000_1202
    assert InterruptionInformation.decode(0x30).describe() == "vector 48 external_interrupt invalid"
    assert int(InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION) == 5
    assert int(InterruptionType.OTHER_EVENT) == 7


def test_interruption_information_vector_range() -> None:
    with pytest.raises(ValueError):
        InterruptionInformation(256, InterruptionType.EXTERNAL_INTERRUPT)
