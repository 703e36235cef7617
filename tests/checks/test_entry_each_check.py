"""Every VM-entry check fires, alone, when exactly its rule is broken."""

from __future__ import annotations

import pytest
from entry_check_cases import CASES, Case
from entry_state import valid

from pyflank.intel_x64.checks import CHECKS, check_all


def test_every_check_has_a_case() -> None:
    assert {check.id for check in CHECKS} == {case.check_id for case in CASES}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_breaking_one_rule_reports_exactly_that_rule(case: Case) -> None:
    vmcs, cpu = valid()
    case.apply(vmcs, cpu)
    violations = check_all(vmcs, cpu, host_in_ia32e_mode=not case.legacy_processor)
    assert {v.check_id for v in violations} == {case.check_id} | case.also
    mine = [v for v in violations if v.check_id == case.check_id]
    assert len(mine) == 1
    assert mine[0].fields, "a violation names the fields involved"
