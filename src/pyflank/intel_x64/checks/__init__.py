"""The checks a VM entry makes (SDM Vol. 3C, "VM Entries", 26.2 and 26.3.1).

``check_all`` reports every broken rule, not only the first one the processor
would stop at; ``check_guest_state`` runs the guest-state groups only, which is
what a backend needs after the exit handler changed guest state.  Each check
is a small function with a stable id (``CHECKS``); see ``registry`` for the SDM
edition the section numbers come from.
"""

from __future__ import annotations

from collections.abc import Iterable

from pyflank.intel_x64.checks import (  # noqa: F401  (importing registers the checks)
    address_space,
    cet,
    ept_controls,
    execution_controls,
    exit_entry_controls,
    fred,
    guest_access_rights,
    guest_descriptor_tables,
    guest_non_register,
    guest_pdptes,
    guest_registers,
    guest_rip_rflags,
    guest_segments,
    guest_system_segments,
    host_state,
)
from pyflank.intel_x64.checks.context import EntryContext
from pyflank.intel_x64.checks.registry import (
    GUEST_GROUPS,
    REGISTERED,
    Check,
    CheckGroup,
    Violation,
)
from pyflank.intel_x64.checks.sdm_counts import SDM_RULE_COUNTS, UNIMPLEMENTED_RULES
from pyflank.intel_x64.cpu import PhysicalCpu
from pyflank.intel_x64.vmcs import Vmcs

__all__ = [
    "CHECKS",
    "SDM_RULE_COUNTS",
    "UNIMPLEMENTED_RULES",
    "Check",
    "CheckGroup",
    "Violation",
    "check_all",
    "check_group",
    "check_guest_state",
    "implemented_counts",
    "launch_failure",
]

CHECKS: tuple[Check, ...] = tuple(
    sorted(REGISTERED, key=lambda check: list(CheckGroup).index(check.group))
)
_BY_GROUP: dict[CheckGroup, tuple[Check, ...]] = {
    group: tuple(c for c in CHECKS if c.group is group) for group in CheckGroup
}
_GUEST_CHECKS = tuple(c for c in CHECKS if c.group in GUEST_GROUPS)


def _run(checks: Iterable[Check], ctx: EntryContext) -> list[Violation]:
    violations: list[Violation] = []
    for check in checks:
        for message, fields in check.function(ctx):
            violations.append(Violation(check.id, check.section, message, fields))
    return violations


def check_all(vmcs: Vmcs, cpu: PhysicalCpu, *, host_in_ia32e_mode: bool = True) -> list[Violation]:
    """Every violation of every VM-entry check, in SDM order."""
    return _run(CHECKS, EntryContext(vmcs, cpu, host_in_ia32e_mode=host_in_ia32e_mode))


def check_guest_state(vmcs: Vmcs, cpu: PhysicalCpu) -> list[Violation]:
    """Violations of the guest-state checks (SDM 26.3.1) only."""
    return _run(_GUEST_CHECKS, EntryContext(vmcs, cpu))


def check_group(
    vmcs: Vmcs, cpu: PhysicalCpu, group: CheckGroup, *, host_in_ia32e_mode: bool = True
) -> list[Violation]:
    """Violations of one SDM group of checks."""
    ctx = EntryContext(vmcs, cpu, host_in_ia32e_mode=host_in_ia32e_mode)
    return _run(_BY_GROUP[group], ctx)


def implemented_counts() -> dict[CheckGroup, int]:
    """How many checks each group has (compare with ``SDM_RULE_COUNTS``)."""
    return {group: len(checks) for group, checks in _BY_GROUP.items()}


# VMLAUNCH checks controls, then host state, before it looks at the guest; a failure
# there is VMfailValid with these VM-instruction errors, not a VM exit (SDM 26.2).
LAUNCH_ERRORS: tuple[tuple[CheckGroup, int], ...] = (
    (CheckGroup.CONTROLS, 7),  # VM entry with invalid control field(s)
    (CheckGroup.HOST_STATE, 8),  # VM entry with invalid host-state field(s)
)


def launch_failure(vmcs: Vmcs, cpu: PhysicalCpu) -> tuple[int, list[Violation]] | None:
    """The VM-instruction error and violations that make VMLAUNCH fail, or None."""
    for group, error in LAUNCH_ERRORS:
        violations = check_group(vmcs, cpu, group)
        if violations:
            return error, violations
    return None
