"""The README's VM-entry checks table is the one the code produces."""

from readme_blocks import README, block, expected


def test_readme_checks_table_matches_the_code() -> None:
    current = block(README.read_text(), "checks-table")
    assert current is not None, "README.md lacks the generated checks-table block"
    assert current == expected("checks-table"), "run: .venv/bin/python tests/readme_blocks.py"
