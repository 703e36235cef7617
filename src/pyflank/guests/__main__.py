"""``python -m pyflank.guests cflags | dir``: how to build a C guest against this SDK."""

from __future__ import annotations

import shlex
import sys

from pyflank.guests import GCC_FLAGS, directory


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["dir"]:
        print(directory())
    elif args == ["cflags"]:
        sdk = directory()
        print(shlex.join([*GCC_FLAGS, f"-I{sdk}", "-T", str(sdk / "pyflank.ld")]))
    else:
        print("usage: python -m pyflank.guests cflags | dir", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
