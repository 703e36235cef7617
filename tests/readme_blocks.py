"""README blocks that are generated from the code, and a check that they are current.

A block sits between ``<!-- generated: NAME -->`` and ``<!-- end: NAME -->``.  To
rewrite the README after changing the code:

    .venv/bin/python tests/readme_blocks.py
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path

from pyflank.backends.kvm.policy import GAPS
from pyflank.exit_handler.differences import differences_table
from pyflank.intel_x64.checks import CHECKS
from pyflank.intel_x64.checks.summary import checks_table

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS: dict[str, Callable[[], str]] = {
    "checks-table": lambda: checks_table(CHECKS),
    "bareflank-differences": differences_table,
    "kvm-gaps": lambda: "\n".join(
        ["| gap | what differs from the software CPU |", "|---|---|"]
        + [f"| `{name}` | {text} |" for name, text in GAPS.items()]
    ),
}


def _pattern(name: str) -> re.Pattern[str]:
    return re.compile(
        rf"(<!-- generated: {re.escape(name)} -->\n)(.*?)(<!-- end: {re.escape(name)} -->)",
        re.DOTALL,
    )


def block(text: str, name: str) -> str | None:
    """The current content of block ``name`` in ``text``, or None if it is missing."""
    match = _pattern(name).search(text)
    return None if match is None else match.group(2)


def expected(name: str) -> str:
    """What block ``name`` must hold: the generator's text, newline-terminated."""
    return BLOCKS[name]() + "\n"


def rewrite(text: str) -> str:
    for name in BLOCKS:
        text = _pattern(name).sub(lambda m, n=name: m.group(1) + expected(n) + m.group(3), text)
    return text


if __name__ == "__main__":
    README.write_text(rewrite(README.read_text()))
    sys.stdout.write(f"rewrote {len(BLOCKS)} generated blocks in {README}\n")
