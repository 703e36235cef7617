"""VMCS <-> JSON: lossless round trips and one-line errors for bad documents."""

from __future__ import annotations

import json

import pytest
from entry_state import valid
from hypothesis import given
from hypothesis import strategies as st

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.fields import ALL_FIELDS
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.intel_x64.vmcs_json import FORMAT, VERSION, vmcs_from_json, vmcs_to_json

FULL_FIELDS = [field for field in ALL_FIELDS if not field.is_high]


@st.composite
def vmcs_values(draw: st.DrawFn) -> dict[int, int]:
    chosen = draw(st.lists(st.sampled_from(FULL_FIELDS), unique=True, max_size=40))
    return {field.encoding: draw(st.integers(0, field.mask)) for field in chosen}


@given(vmcs_values())
def test_round_trip_keeps_every_field(values: dict[int, int]) -> None:
    vmcs = Vmcs()
    for encoding, value in values.items():
        vmcs.processor_write(encoding, value)
    assert vmcs_from_json(vmcs_to_json(vmcs)).fields() == vmcs.fields()


def test_document_has_names_hex_values_and_version() -> None:
    vmcs, _ = valid()
    vmcs.processor_write(f.EXIT_REASON, 30)
    document = json.loads(vmcs_to_json(vmcs))
    assert document["format"] == FORMAT and document["version"] == VERSION
    assert document["fields"]["guest_cr0"] == "0x80010033"
    assert document["fields"]["exit_reason"] == "0x1e"
    assert len(document["fields"]) == len(FULL_FIELDS)
    loaded = vmcs_from_json(vmcs_to_json(vmcs))
    assert loaded.read(f.EXIT_REASON) == 30  # read-only fields load too


def _doc(fields: object, **top: object) -> str:
    return json.dumps({"format": FORMAT, "version": VERSION, "fields": fields} | top)


def test_missing_fields_read_as_zero() -> None:
    vmcs = vmcs_from_json(_doc({"guest_rip": "0x1000"}))
    assert vmcs.read(f.GUEST_RIP) == 0x1000
    assert vmcs.read(f.GUEST_RSP) == 0


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("{not json", "not JSON"),
        ("[]", "must be a JSON object"),
        (json.dumps({"format": "other", "version": 1, "fields": {}}), "not a pyflank-vmcs"),
        (json.dumps({"format": FORMAT, "version": 99, "fields": {}}), "unsupported"),
        (_doc({}, extra=1), "unknown top-level keys"),
        (_doc([]), "'fields' must be a JSON object"),
        (_doc({"guest_cr9": "0x0"}), "unknown VMCS field name 'guest_cr9'"),
        (_doc({"vmcs_link_pointer_high": "0x0"}), "high half"),
        (_doc({"guest_rip": 16}), "hex string"),
        (_doc({"guest_rip": "16"}), "hex string"),
        (_doc({"guest_rip": "0xg"}), "hex string"),
        (_doc({"guest_cs_selector": "0x10000"}), "does not fit in 16 bits"),
    ],
)
def test_bad_documents_raise_one_line_value_errors(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as raised:
        vmcs_from_json(text)
    assert "\n" not in str(raised.value)
