"""The VM-entry checks counted against the SDM, as the README shows them (Markdown).

Everything here is computed from the registered checks and ``sdm_counts``, so the
README's table cannot drift from the code (a test compares the two).
"""

from __future__ import annotations

from pyflank.intel_x64.checks.registry import VERIFIED_CHAPTER, Check, CheckGroup
from pyflank.intel_x64.checks.sdm_counts import SDM_RULE_COUNTS, UNIMPLEMENTED_RULES


def _same_edition(text: str) -> bool:
    return text.startswith(VERIFIED_CHAPTER + ".")


def checks_table(checks: tuple[Check, ...]) -> str:
    """The per-group table and the list of rules pyflank does not check."""
    lines = [
        "| group | checks | of which newer | SDM rules (2016) | not implemented (of 2016) |",
        "|---|---:|---:|---:|---:|",
    ]
    totals = [0, 0, 0, 0, 0]
    for group in CheckGroup:
        mine = [c for c in checks if c.group is group]
        missing = UNIMPLEMENTED_RULES.get(group, ())
        row = [
            len(mine),
            sum(1 for c in mine if c.later_edition),
            SDM_RULE_COUNTS[group],
            len(missing),
            sum(1 for text in missing if _same_edition(text)),
        ]
        totals = [t + r for t, r in zip(totals, row, strict=True)]
        lines.append(_row(group.value, row))
    lines.append(_row("**all**", totals))
    lines += ["", "Not implemented:", ""]
    for group in CheckGroup:
        lines += [f"- {group.value}, {text}" for text in UNIMPLEMENTED_RULES.get(group, ())]
    return "\n".join(lines)


def _row(name: str, numbers: list[int]) -> str:
    checks, newer, sdm, missing, missing_2016 = numbers
    return f"| {name} | {checks} | {newer} | {sdm} | {missing} ({missing_2016}) |"
