"""The VMCS dump: every field by SDM table, and the exit decoded."""

from __future__ import annotations

from entry_state import put, valid

from pyflank.intel_x64.dump import describe_access_rights, dump
from pyflank.intel_x64.fields import ALL_FIELDS, FIELD_GROUPS

IO_EXIT = 30
ENTRY_FAILURE = 1 << 31
INVALID_GUEST_STATE = 33


def test_dump_lists_every_field_under_its_sdm_table() -> None:
    vmcs, _ = valid()
    text = dump(vmcs)
    for title in FIELD_GROUPS:
        assert f"== {title} ==" in text
    names = {line.split()[0] for line in text.splitlines() if line.startswith("  ")}
    assert {field.name for field in ALL_FIELDS if not field.is_high} <= names


def test_dump_shows_64_bit_fields_once_at_full_width() -> None:
    vmcs, _ = valid()
    put(vmcs, vmcs_link_pointer=0x1234_5678_9ABC_D000)
    text = dump(vmcs)
    assert "vmcs_link_pointer_high" not in text
    line = next(line for line in text.splitlines() if line.split()[:1] == ["vmcs_link_pointer"])
    assert line.split()[1] == "0x123456789abcd000"


def test_dump_decodes_an_io_exit() -> None:
    vmcs, _ = valid()
    # OUT DX, AL to port 0x3F8: size 1, direction out, port in bits 31:16.
    put(vmcs, exit_reason=IO_EXIT, exit_qualification=0x03F8_0000)
    text = dump(vmcs)
    assert "basic reason 30 (io_instruction), VM-entry failure: no" in text
    assert "out port 0x03f8 (1 byte(s), port in dx)" in text


def test_dump_decodes_an_entry_failure_and_events() -> None:
    vmcs, _ = valid()
    put(
        vmcs,
        exit_reason=ENTRY_FAILURE | INVALID_GUEST_STATE,
        exit_qualification=4,
        idt_vectoring_information_field=0x8000_0B0E,
        idt_vectoring_error_code=0x2,
        vm_instruction_error=7,
    )
    text = dump(vmcs)
    assert "basic reason 33" in text and "VM-entry failure: yes" in text
    assert "invalid VMCS link pointer" in text
    assert "IDT-vectoring information: 0x80000b0e: vector 14 #PF" in text
    assert "error code 0x2" in text
    assert "VM-exit interruption information: 0x00000000: none" in text
    assert "VM-instruction error: 7 (" in text


def test_dump_summarizes_the_guest() -> None:
    vmcs, _ = valid()
    text = dump(vmcs)
    assert "[PE MP ET NE WP PG]" in text
    assert "[PAE VMXE]" in text
    assert "[LME LMA NXE]" in text
    assert "cs     selector=0x0008 base=0x0 limit=0xffffffff ar=0xa09b" in text
    assert "code execute/read accessed" in text
    assert "ldtr" in text and "(unusable)" in text
    assert "activity state 0 (active)" in text


def test_access_rights_in_words() -> None:
    assert describe_access_rights(0x8B) == "type=11 (busy TSS) dpl=0 p"
    assert describe_access_rights(0xC093) == "type=3 (data read/write accessed) dpl=0 p db g"
    assert describe_access_rights(0xF3).startswith("type=3 (data read/write accessed) dpl=3")
    assert "conforming" in describe_access_rights(0x9F)
    assert describe_access_rights(1 << 16) == "unusable"
