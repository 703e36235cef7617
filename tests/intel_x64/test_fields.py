"""The VMCS field table against the encoding rules and SDM Appendix B values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pyflank.intel_x64 import fields
from pyflank.intel_x64.fields import (
    ALL_FIELDS,
    FIELD_BY_ENCODING,
    FIELD_BY_NAME,
    FIELD_GROUPS,
    FieldType,
    FieldWidth,
    VmcsField,
    field_bits,
    field_type,
    field_width,
)

TABLES: dict[str, tuple[tuple[VmcsField, ...], FieldWidth, FieldType]] = {
    "CONTROL_FIELDS_16BIT": (fields.CONTROL_FIELDS_16BIT, FieldWidth.BITS16, FieldType.CONTROL),
    "GUEST_STATE_FIELDS_16BIT": (
        fields.GUEST_STATE_FIELDS_16BIT,
        FieldWidth.BITS16,
        FieldType.GUEST_STATE,
    ),
    "HOST_STATE_FIELDS_16BIT": (
        fields.HOST_STATE_FIELDS_16BIT,
        FieldWidth.BITS16,
        FieldType.HOST_STATE,
    ),
    "CONTROL_FIELDS_64BIT": (fields.CONTROL_FIELDS_64BIT, FieldWidth.BITS64, FieldType.CONTROL),
    "READ_ONLY_DATA_FIELDS_64BIT": (
        fields.READ_ONLY_DATA_FIELDS_64BIT,
        FieldWidth.BITS64,
        FieldType.READ_ONLY_DATA,
    ),
    "GUEST_STATE_FIELDS_64BIT": (
        fields.GUEST_STATE_FIELDS_64BIT,
        FieldWidth.BITS64,
        FieldType.GUEST_STATE,
    ),
    "HOST_STATE_FIELDS_64BIT": (
        fields.HOST_STATE_FIELDS_64BIT,
        FieldWidth.BITS64,
        FieldType.HOST_STATE,
    ),
    "CONTROL_FIELDS_32BIT": (fields.CONTROL_FIELDS_32BIT, FieldWidth.BITS32, FieldType.CONTROL),
    "READ_ONLY_DATA_FIELDS_32BIT": (
        fields.READ_ONLY_DATA_FIELDS_32BIT,
        FieldWidth.BITS32,
        FieldType.READ_ONLY_DATA,
    ),
    "GUEST_STATE_FIELDS_32BIT": (
        fields.GUEST_STATE_FIELDS_32BIT,
        FieldWidth.BITS32,
        FieldType.GUEST_STATE,
    ),
    "HOST_STATE_FIELDS_32BIT": (
        fields.HOST_STATE_FIELDS_32BIT,
        FieldWidth.BITS32,
        FieldType.HOST_STATE,
    ),
    "CONTROL_FIELDS_NATURAL": (
        fields.CONTROL_FIELDS_NATURAL,
        FieldWidth.NATURAL,
        FieldType.CONTROL,
    ),
    "READ_ONLY_DATA_FIELDS_NATURAL": (
        fields.READ_ONLY_DATA_FIELDS_NATURAL,
        FieldWidth.NATURAL,
        FieldType.READ_ONLY_DATA,
    ),
    "GUEST_STATE_FIELDS_NATURAL": (
        fields.GUEST_STATE_FIELDS_NATURAL,
        FieldWidth.NATURAL,
        FieldType.GUEST_STATE,
    ),
    "HOST_STATE_FIELDS_NATURAL": (
        fields.HOST_STATE_FIELDS_NATURAL,
        FieldWidth.NATURAL,
        FieldType.HOST_STATE,
    ),
}


def _module_constants() -> dict[str, int]:
    return {
        name: value
        for name, value in vars(fields).items()
        if name.isupper()
        and not name.startswith("_")
        and isinstance(value, int)
        and not isinstance(value, FieldType | FieldWidth)
    }


def test_encodings_and_names_are_unique() -> None:
    assert len({f.encoding for f in ALL_FIELDS}) == len(ALL_FIELDS)
    assert len({f.name for f in ALL_FIELDS}) == len(ALL_FIELDS)
    assert len(FIELD_BY_ENCODING) == len(FIELD_BY_NAME) == len(ALL_FIELDS)


@pytest.mark.parametrize("table_name", TABLES)
def test_each_table_holds_its_width_and_type(table_name: str) -> None:
    table, width, type_ = TABLES[table_name]
    assert table, f"{table_name} is empty"
    for field in table:
        assert field.width is width, field
        assert field.type is type_, field
        assert field.group == table[0].group
    assert FIELD_GROUPS[table[0].group] is table


def test_field_groups_are_the_tables_in_sdm_order() -> None:
    assert list(FIELD_GROUPS.values()) == [table for table, _, _ in TABLES.values()]
    titles = list(FIELD_GROUPS)
    assert (titles[0], titles[-1]) == ("16-Bit Control Fields", "Natural-Width Host-State Fields")
    assert tuple(f for table in FIELD_GROUPS.values() for f in table) == ALL_FIELDS


def test_fields_within_a_table_ascend_like_the_sdm() -> None:
    for table in FIELD_GROUPS.values():
        encodings = [f.encoding for f in table]
        assert encodings == sorted(encodings)


def test_high_entries_exist_exactly_for_64bit_fields() -> None:
    for field in ALL_FIELDS:
        if field.is_high:
            full = FIELD_BY_ENCODING[field.encoding - 1]
            assert full.width is FieldWidth.BITS64
            assert field.name == f"{full.name}_high"
            assert field.bits == 32
            assert field.mask == 0xFFFF_FFFF
        elif field.width is FieldWidth.BITS64:
            high = FIELD_BY_ENCODING[field.encoding + 1]
            assert high.is_high
            assert high.name == f"{field.name}_high"
        else:
            assert field.encoding + 1 not in FIELD_BY_ENCODING
            assert field.encoding % 2 == 0


def test_every_field_has_its_constant_and_every_constant_a_field() -> None:
    constants = _module_constants()
    for field in ALL_FIELDS:
        assert constants[field.name.upper()] == field.encoding
    aliases = set(fields.ALIASES)
    for name, value in constants.items():
        if name in aliases:
            assert value == constants[fields.ALIASES[name]]
        else:
            assert FIELD_BY_NAME[name.lower()].encoding == value


@pytest.mark.parametrize(
    ("name", "encoding"),
    [
        ("VIRTUAL_PROCESSOR_IDENTIFIER", 0x0000),
        ("EPTP_INDEX", 0x0004),
        ("LAST_PID_POINTER_INDEX", 0x0008),
        ("GUEST_ES_SELECTOR", 0x0800),
        ("GUEST_TR_SELECTOR", 0x080E),
        ("GUEST_INTERRUPT_STATUS", 0x0810),
        ("PML_INDEX", 0x0812),
        ("HOST_ES_SELECTOR", 0x0C00),
        ("HOST_TR_SELECTOR", 0x0C0C),
        ("ADDRESS_OF_IO_BITMAP_A", 0x2000),
        ("ADDRESS_OF_MSR_BITMAPS", 0x2004),
        ("EPT_POINTER", 0x201A),
        ("TSC_MULTIPLIER", 0x2032),
        ("TERTIARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS", 0x2034),
        ("ENCLV_EXITING_BITMAP", 0x2036),
        ("LOW_PASID_DIRECTORY_ADDRESS", 0x2038),
        ("HIGH_PASID_DIRECTORY_ADDRESS", 0x203A),
        ("PCONFIG_EXITING_BITMAP", 0x203E),
        ("HLAT_POINTER", 0x2040),
        ("PID_POINTER_TABLE_ADDRESS", 0x2042),
        ("SECONDARY_VM_EXIT_CONTROLS", 0x2044),
        ("GUEST_PHYSICAL_ADDRESS", 0x2400),
        ("VMCS_LINK_POINTER", 0x2800),
        ("GUEST_IA32_EFER", 0x2806),
        ("GUEST_IA32_EFER_HIGH", 0x2807),
        ("GUEST_PDPTE3", 0x2810),
        ("GUEST_IA32_BNDCFGS", 0x2812),
        ("GUEST_IA32_RTIT_CTL", 0x2814),
        ("GUEST_IA32_LBR_CTL", 0x2816),
        ("GUEST_IA32_PKRS", 0x2818),
        ("HOST_IA32_PAT", 0x2C00),
        ("HOST_IA32_PKRS", 0x2C06),
        ("PIN_BASED_VM_EXECUTION_CONTROLS", 0x4000),
        ("PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS", 0x4002),
        ("VM_EXIT_CONTROLS", 0x400C),
        ("VM_ENTRY_CONTROLS", 0x4012),
        ("TPR_THRESHOLD", 0x401C),
        ("SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS", 0x401E),
        ("PLE_WINDOW", 0x4022),
        ("INSTRUCTION_TIMEOUT_CONTROL", 0x4024),
        ("VM_INSTRUCTION_ERROR", 0x4400),
        ("VM_EXIT_REASON", 0x4402),
        ("EXIT_REASON", 0x4402),
        ("VM_EXIT_INSTRUCTION_INFORMATION", 0x440E),
        ("GUEST_IDTR_LIMIT", 0x4812),
        ("GUEST_TR_ACCESS_RIGHTS", 0x4822),
        ("GUEST_ACTIVITY_STATE", 0x4826),
        ("VMX_PREEMPTION_TIMER_VALUE", 0x482E),
        ("HOST_IA32_SYSENTER_CS", 0x4C00),
        ("CR3_TARGET_VALUE_3", 0x600E),
        ("EXIT_QUALIFICATION", 0x6400),
        ("GUEST_LINEAR_ADDRESS", 0x640A),
        ("GUEST_RIP", 0x681E),
        ("GUEST_RFLAGS", 0x6820),
        ("GUEST_S_CET", 0x6828),
        ("GUEST_SSP", 0x682A),
        ("GUEST_INTERRUPT_SSP_TABLE_ADDR", 0x682C),
        ("HOST_RSP", 0x6C14),
        ("HOST_RIP", 0x6C16),
        ("HOST_INTERRUPT_SSP_TABLE_ADDR", 0x6C1C),
    ],
)
def test_spot_checks_against_the_sdm(name: str, encoding: int) -> None:
    assert getattr(fields, name) == encoding


def test_derived_properties_of_known_fields() -> None:
    rip = FIELD_BY_NAME["guest_rip"]
    assert (rip.type, rip.width, rip.bits, rip.is_high) == (
        FieldType.GUEST_STATE,
        FieldWidth.NATURAL,
        64,
        False,
    )
    assert rip.mask == 2**64 - 1
    assert rip.group == "Natural-Width Guest-State Fields"
    reason = FIELD_BY_ENCODING[fields.VM_EXIT_REASON]
    assert (reason.name, reason.type, reason.bits) == ("exit_reason", FieldType.READ_ONLY_DATA, 32)
    selector = FIELD_BY_NAME["host_cs_selector"]
    assert (selector.bits, selector.mask, selector.index) == (16, 0xFFFF, 1)
    efer = FIELD_BY_NAME["guest_ia32_efer"]
    assert (efer.bits, efer.index) == (64, 3)


def test_table_sizes() -> None:
    # Full (non-HIGH) fields per SDM table; update deliberately when Intel adds fields.
    counts = {title: sum(not f.is_high for f in table) for title, table in FIELD_GROUPS.items()}
    assert counts == {
        "16-Bit Control Fields": 5,
        "16-Bit Guest-State Fields": 11,
        "16-Bit Host-State Fields": 7,
        "64-Bit Control Fields": 38,
        "64-Bit Read-Only Data Fields": 2,
        "64-Bit Guest-State Fields": 21,
        "64-Bit Host-State Fields": 12,
        "32-Bit Control Fields": 19,
        "32-Bit Read-Only Data Fields": 8,
        "32-Bit Guest-State Fields": 23,
        "32-Bit Host-State Fields": 1,
        "Natural-Width Control Fields": 8,
        "Natural-Width Read-Only Data Fields": 6,
        "Natural-Width Guest-State Fields": 23,
        "Natural-Width Host-State Fields": 15,
    }


@pytest.mark.parametrize("encoding", [0x1000, 0x8000, 0x10000, -2, 0x0001, 0x4001, 0x6801])
def test_invalid_encodings_are_refused(encoding: int) -> None:
    with pytest.raises(ValueError):
        VmcsField(encoding, "bogus")


def test_helpers_refuse_reserved_bits() -> None:
    with pytest.raises(ValueError):
        field_type(0x1000)
    with pytest.raises(ValueError):
        field_width(0x8000)


@given(
    index=st.integers(0, 0x1FF),
    type_=st.sampled_from(FieldType),
    width=st.sampled_from(FieldWidth),
    high=st.booleans(),
)
def test_helpers_decode_any_encoding(
    index: int, type_: FieldType, width: FieldWidth, high: bool
) -> None:
    high = high and width is FieldWidth.BITS64
    encoding = int(high) | index << 1 | type_ << 10 | width << 13
    field = VmcsField(encoding, "any")
    assert field_type(encoding) is field.type is type_
    assert field_width(encoding) is field.width is width
    assert field.index == index
    assert field.is_high is high
    expected = {FieldWidth.BITS16: 16, FieldWidth.BITS32: 32}.get(width, 64)
    assert field_bits(encoding) == field.bits == (32 if high else expected)
    assert field.mask == (1 << field.bits) - 1
