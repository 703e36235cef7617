"""The README's table of differences from Bareflank 1.1 is the one the code produces."""

from pyflank.exit_handler.differences import DIFFERENCES
from readme_blocks import README, block, expected


def test_readme_differences_table_matches_the_code() -> None:
    current = block(README.read_text(), "bareflank-differences")
    assert current is not None, "README.md lacks the generated bareflank-differences block"
    assert current == expected("bareflank-differences"), (
        "run: .venv/bin/python tests/readme_blocks.py"
    )


def test_every_difference_gives_a_reason() -> None:
    for difference in DIFFERENCES:
        assert all((difference.member, difference.bareflank, difference.pyflank, difference.why))
    assert len({d.member + d.bareflank for d in DIFFERENCES}) == len(DIFFERENCES)
