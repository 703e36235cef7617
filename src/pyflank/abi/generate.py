"""Write (or check) the guest SDK headers generated from ``pyflank.abi``.

    python -m pyflank.abi.generate [--check] [DIR]

DIR defaults to the guest SDK of this pyflank (``pyflank/guests``).  ``--check`` writes
nothing and exits 1 naming each file that differs from what the ABI gives.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from importlib import resources
from pathlib import Path

from pyflank.abi import asm_header, c_header

GENERATED: dict[str, Callable[[], str]] = {
    "pyflank_abi.inc": asm_header.render,
    "pyflank.h": c_header.render,
}


def stale(directory: Path) -> list[str]:
    """The generated files in ``directory`` that are missing or differ from the ABI."""
    return [
        name
        for name, render in GENERATED.items()
        if not (directory / name).is_file() or (directory / name).read_text() != render()
    ]


def write(directory: Path) -> list[str]:
    """Write every generated file into ``directory``; returns the names written."""
    for name, render in GENERATED.items():
        (directory / name).write_text(render())
    return list(GENERATED)


def _sdk_directory() -> Path:
    return Path(str(resources.files("pyflank") / "guests"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyflank.abi.generate")
    parser.add_argument("--check", action="store_true", help="only report stale files")
    parser.add_argument("directory", nargs="?", type=Path, help="default: pyflank/guests")
    args = parser.parse_args(argv)
    directory = args.directory or _sdk_directory()
    if args.check:
        names = stale(directory)
        for name in names:
            print(f"{directory / name}: stale, run python -m pyflank.abi.generate", file=sys.stderr)
        return 1 if names else 0
    for name in write(directory):
        print(f"wrote {directory / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
