"""``python -m pyflank.observe``: a recorded exit trace, read without any CPU.

    python -m pyflank.observe stats TRACE [--json]          the statistics table
    python -m pyflank.observe plot TRACE -o FILE.png        the picture (pyflank[plot])
    python -m pyflank.observe replay TRACE --handler EXT    re-run a handler over it

``EXT`` names a handler as ``bfm`` does (``file.py``, ``file.py:Class``, ``pkg.mod:Class``).
``replay`` exits 1 when the handler decides otherwise than the recording, and says where.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from pyflank.cli.extension import ExtensionError, load_handler
from pyflank.observe.replay import replay
from pyflank.observe.statistics import ExitStatistics
from pyflank.observe.tracefile import TraceError, read_trace


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pyflank.observe", description="Read a pyflank exit trace."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    stats = commands.add_parser("stats", help="exits per vCPU and reason")
    stats.add_argument("trace")
    stats.add_argument("--json", action="store_true", help="the figures as JSON")
    plot = commands.add_parser("plot", help="draw exits per reason and over time")
    plot.add_argument("trace")
    plot.add_argument("-o", "--output", required=True, help="the image file (.png, .svg)")
    plot.add_argument("--title")
    again = commands.add_parser("replay", help="replay the trace into a handler")
    again.add_argument("trace")
    again.add_argument("--handler", required=True, help="file.py[:Class] or module:Class")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        trace = read_trace(args.trace)
        if args.command == "stats":
            stats = ExitStatistics.from_trace(trace)
            print(json.dumps(stats.as_dict(), indent=2) if args.json else stats.table())
            return 0
        if args.command == "plot":
            plot = importlib.import_module("pyflank.observe.plot")  # needs pyflank[plot]
            print(plot.plot_exits(trace, args.output, title=args.title))
            return 0
        result = replay(trace, load_handler(args.handler))
    except (OSError, TraceError, ExtensionError, ImportError, ValueError) as exc:
        print(f"pyflank.observe: {exc}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"note: {note}")
    print(result.describe())
    return 0 if result.matched else 1


if __name__ == "__main__":
    sys.exit(main())
