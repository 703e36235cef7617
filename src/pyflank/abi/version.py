"""pyflank's version, the one a VERSIONS vmcall (index BAREFLANK) answers; spelled once
(``pyproject.toml`` reads it from here)."""

from __future__ import annotations

from typing import Final

__version__: Final = "0.1.0"
VERSION: Final[tuple[int, int, int]] = (0, 1, 0)
assert ".".join(map(str, VERSION)) == __version__
