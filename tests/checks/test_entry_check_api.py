"""The check API: valid states pass, reports are complete, groups and counts add up."""

from __future__ import annotations

import re
import time

from entry_state import put, valid

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.checks import (
    CHECKS,
    SDM_RULE_COUNTS,
    UNIMPLEMENTED_RULES,
    CheckGroup,
    Violation,
    check_all,
    check_group,
    check_guest_state,
    implemented_counts,
)
from pyflank.intel_x64.cpu import ModelCpu

CR3_LOAD_EXITING = 1 << 15
_PREFIX = {CheckGroup.CONTROLS: "controls.", CheckGroup.HOST_STATE: "host."}


def test_valid_long_mode_state_passes_on_the_model_cpu() -> None:
    vmcs, cpu = valid(ModelCpu())
    assert check_all(vmcs, cpu) == []
    assert check_guest_state(vmcs, cpu) == []


def test_valid_state_without_true_controls_uses_the_plain_msrs() -> None:
    cpu = ModelCpu()
    cpu.read_only_msrs[msrs.IA32_VMX_BASIC] &= ~msrs.VMX_BASIC_TRUE_CONTROLS
    vmcs, cpu = valid(cpu)
    assert check_all(vmcs, cpu) == []
    # CR3-load exiting is a default1 bit: only the TRUE MSR lets it be 0.
    primary = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
    vmcs.processor_write(primary, vmcs.read(primary) & ~CR3_LOAD_EXITING)
    [violation] = check_all(vmcs, cpu)
    assert violation.check_id == "controls.primary.reserved"
    assert "IA32_VMX_PROCBASED_CTLS" in violation.fields


def test_true_controls_allow_clearing_a_default1_bit() -> None:
    vmcs, cpu = valid(ModelCpu())
    primary = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
    vmcs.processor_write(primary, vmcs.read(primary) & ~CR3_LOAD_EXITING)
    assert check_all(vmcs, cpu) == []


def test_every_broken_rule_is_reported() -> None:
    vmcs, cpu = valid()
    put(
        vmcs,
        guest_cr0=0x8001_0032,  # PG without PE (and PE is a fixed bit)
        guest_rflags=0x2 | 1 << 15,
        guest_activity_state=7,
        guest_fs_base=1 << 47,
        host_tr_selector=0,
        cr3_target_count=9,
    )
    ids = {v.check_id for v in check_all(vmcs, cpu)}
    assert {
        "guest.cr0.fixed_bits",
        "guest.cr0.pg_requires_pe",
        "guest.rflags.reserved",
        "guest.activity.valid",
        "guest.base.canonical",
        "host.selector.cs_tr_null",
        "controls.cr3_target_count",
    } <= ids


def test_one_violation_per_offending_register() -> None:
    vmcs, cpu = valid()
    put(vmcs, guest_fs_base=1 << 47, guest_gs_base=1 << 48, guest_tr_base=1 << 63)
    violations = check_all(vmcs, cpu)
    assert [v.check_id for v in violations] == ["guest.base.canonical"] * 3
    assert [next(iter(v.fields)) for v in violations] == [
        "guest_tr_base",
        "guest_fs_base",
        "guest_gs_base",
    ]


def test_guest_state_and_group_checks_see_only_their_groups() -> None:
    vmcs, cpu = valid()
    put(vmcs, host_tr_selector=0, guest_rflags=0, cr3_target_count=9)
    guest_ids = {v.check_id for v in check_guest_state(vmcs, cpu)}
    assert guest_ids == {"guest.rflags.reserved"}
    assert [v.check_id for v in check_group(vmcs, cpu, CheckGroup.HOST_STATE)] == [
        "host.selector.cs_tr_null"
    ]
    assert [v.check_id for v in check_group(vmcs, cpu, CheckGroup.CONTROLS)] == [
        "controls.cr3_target_count"
    ]


def test_violation_reads_well() -> None:
    violation = Violation("guest.x", "26.3.1.1", "broken", {"guest_cr0": 0x21})
    assert str(violation) == "[guest.x] SDM 26.3.1.1: broken (guest_cr0=0x21)"
    assert str(Violation("a.b", "26.2.1.1", "no fields", {})) == "[a.b] SDM 26.2.1.1: no fields"


def test_checks_are_registered_with_ids_sections_and_rules() -> None:
    ids = [check.id for check in CHECKS]
    assert len(ids) == len(set(ids))
    for check in CHECKS:
        assert re.fullmatch(r"[a-z0-9_]+(\.[a-z0-9_]+)+", check.id)
        assert re.fullmatch(r"2[67]\.[23](\.\d)+", check.section)
        assert len(check.docstring) > 20
        assert check.id.startswith(_PREFIX.get(check.group, "guest."))


def test_counts_match_the_sdm_rules_listed() -> None:
    implemented = implemented_counts()
    assert set(implemented) == set(CheckGroup) == set(SDM_RULE_COUNTS)
    for group in CheckGroup:
        same_edition = sum(1 for c in CHECKS if c.group is group and not c.later_edition)
        unimplemented = UNIMPLEMENTED_RULES.get(group, ())
        assert all(re.match(r"2[67]\.[23](\.\d)+: ", text) for text in unimplemented)
        missing = sum(1 for text in unimplemented if text.startswith("26."))
        assert same_edition + missing == SDM_RULE_COUNTS[group], group
        assert implemented[group] >= same_edition


def test_guest_state_check_is_fast() -> None:
    vmcs, cpu = valid()
    check_guest_state(vmcs, cpu)
    runs = 200
    start = time.perf_counter()
    for _ in range(runs):
        check_guest_state(vmcs, cpu)
    per_run = (time.perf_counter() - start) / runs
    assert per_run < 1e-3, f"{per_run * 1e6:.0f} us per guest-state check"
