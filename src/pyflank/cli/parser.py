"""bfm's command line: ``bfm [OPTION]... COMMAND [ARG]... [COMMAND OPTION]...``.

argparse, one parser per command (``bfm start --help``), every error one line.  As in
Bareflank's bfm, a command's options may also stand before the command
(``bfm --cpuid 1 vmcall ...``); ``--`` ends options.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from pyflank.abi.version import __version__ as PYFLANK_VERSION
from pyflank.backends.names import NAMES
from pyflank.cli.errors import UsageError
from pyflank.cli.vmcall_command import HELP as VMCALL_HELP
from pyflank.cli.vmcall_command import number

BACKENDS = NAMES
MAX_VCPUS = 16  # the boot layout's room (platform.boot.BootLayout.max_vcpus)
PROGRAM_FORMATS = ("auto", "asm", "elf", "flat")
VERSION = f"bfm (pyflank) {PYFLANK_VERSION}"

USAGE = f"""\
Usage: bfm [OPTION]... load <extension>
  or:  bfm [OPTION]... unload
  or:  bfm [OPTION]... start [--backend B] [--vcpus N] [--memory SIZE]
  or:  bfm [OPTION]... stop
  or:  bfm [OPTION]... quick <extension> [--backend B] [--vcpus N] [--memory SIZE]
  or:  bfm [OPTION]... status
  or:  bfm [OPTION]... dump [--vcpuid N]
  or:  bfm [OPTION]... stats [--json] [--plot FILE.png]
  or:  bfm [OPTION]... vmcall [--cpuid N] <cmd>
  or:  bfm [OPTION]... run <program> [--backend B] [--vcpus N] [--memory SIZE] [...]
  or:  bfm [OPTION]... run --kernel FILE [--initrd FILE] [--append CMDLINE] [...]
  or:  bfm [OPTION]... run (<program> | --kernel FILE) --gdb PORT [--gdb-no-wait] [...]
  or:  bfm [OPTION]... check <vmcs.json>
pyflank manager: load an exit handler, run the VMM, talk to it from inside the guest;
or run a guest program of your own, or boot Linux, under a handler ('bfm run').
'bfm COMMAND --help' describes one command.

Options:
  -h, --help             show this help and exit
      --version          show the version and exit
  -v, --verbose          say more (every vCPU in status, debug rings after run)
  -q, --quiet            print only errors

Extensions:
  a Python file or module naming an ExitHandlerIntelX64 subclass
  (file.py, file.py:Class, pkg.module, pkg.module:Class), or a .modules
  JSON file {{"modules": [...]}} whose handlers are composed in order

VMCall Commands:
{VMCALL_HELP.split(":", 1)[1].lstrip(chr(10))}
"""


@dataclass
class CommandLine:
    """What a bfm command line asks for, every value checked."""

    command: str | None = None
    help: bool = False
    version: bool = False
    verbose: bool = False
    quiet: bool = False
    backend: str = "auto"
    vcpus: int = 1
    memory: int = 0  # bytes; 0: the command's default
    cpuid: int = 0
    vcpuid: int = 0
    extension: str | None = None
    program: Path | None = None
    program_format: str = "auto"
    kernel: Path | None = None
    initrd: Path | None = None
    append: str | None = None
    timeout: float | None = None
    gdb: str | None = None  # bfm run --gdb: the stub's address (checked by the stub)
    gdb_no_wait: bool = False
    vmcs: Path | None = None
    json: bool = False  # bfm stats --json
    plot: Path | None = None  # bfm stats --plot FILE
    words: list[str] = field(default_factory=list)  # vmcall's command and arguments


def _argument_type(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    def checked(text: str) -> Any:
        try:
            return convert(text)
        except UsageError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    checked.__name__ = convert.__name__
    return checked


def _count(text: str) -> int:
    return number(text)


def _vcpus(text: str) -> int:
    value = number(text)
    if not 1 <= value <= MAX_VCPUS:
        raise UsageError(f"must be 1 to {MAX_VCPUS}: {text}")
    return value


_SIZE = re.compile(r"(?i)^\s*(0x[0-9a-f]+|\d+)\s*([kmg]i?b?|b)?\s*$")
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def memory_size(text: str) -> int:
    """Bytes of guest RAM: ``64M``, ``1GiB``, ``0x4000000``; a multiple of 4 KiB, >= 2 MiB."""
    match = _SIZE.match(text)
    if match is None:
        raise UsageError(f"not a size: {text!r} (for example 64M or 1G)")
    value = int(match.group(1), 0) * _UNITS[(match.group(2) or "")[:1].lower()]
    if value < 2 << 20 or value % 4096:
        raise UsageError(f"must be a multiple of 4 KiB, at least 2 MiB: {text}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"not a number of seconds: {text!r}") from None
    if math.isnan(value) or value <= 0:
        raise UsageError(f"must be more than 0 seconds: {text}")
    return value


class _Parser(argparse.ArgumentParser):
    """argparse, with errors raised as one-line ``UsageError``s in bfm's words."""

    missing = ""  # what to say when positionals are missing ("load takes one extension")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.dests: set[str] = set()  # every option and positional this parser takes
        super().__init__(*args, **kwargs)

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        self.dests.add(action.dest)
        return action

    def error(self, message: str) -> NoReturn:
        message = message.removeprefix("argument ")
        if message.startswith("the following arguments are required") and self.missing:
            message = self.missing
        message = message.replace(": expected one argument", " needs a value")
        raise UsageError(message)

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise UsageError(message.strip() if message else "bad command line")


def _new(
    prog: str, description: str, missing: str = "", epilog: str = "", *, add_help: bool = True
) -> _Parser:
    parser = _Parser(
        prog=prog,
        add_help=add_help,
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter if epilog else argparse.HelpFormatter,
        argument_default=argparse.SUPPRESS,  # only what the user gave: merged later
        allow_abbrev=False,
    )
    parser.missing = missing
    parser.add_argument("-v", "--verbose", action="store_true", help="say more")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    return parser


EXTENSION_HELP = "file.py[:Class], pkg.module[:Class] or x.modules"
RUN_TAKES = "run takes a program (.s, ELF or flat binary) or --kernel FILE"


def _vm_options(parser: _Parser) -> None:
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        help="emu (the software CPU), kvm, or auto: kvm where the guest runs natively, "
        "else emu (bfm says which and why)",
    )
    parser.add_argument(
        "--vcpus",
        type=_argument_type(_vcpus),
        metavar="N",
        help=f"how many vCPUs (1 to {MAX_VCPUS}, default 1)",
    )
    parser.add_argument(
        "--memory",
        type=_argument_type(memory_size),
        metavar="SIZE",
        help="guest RAM, e.g. 64M or 1G (default 16M)",
    )


def _run_options(parser: _Parser) -> None:
    parser.add_argument(
        "program",
        type=Path,
        nargs="?",
        default=None,  # not argparse.SUPPRESS: an optional positional would keep its text
        help="assembly (.s), an ELF64 executable, or a flat binary loaded at 0x100000",
    )
    parser.add_argument(
        "--kernel", type=Path, metavar="FILE", help="boot this Linux bzImage instead of a program"
    )
    parser.add_argument("--initrd", type=Path, metavar="FILE", help="the kernel's initramfs")
    parser.add_argument(
        "--append",
        metavar="CMDLINE",
        help='the kernel command line, as QEMU takes it (default "console=ttyS0")',
    )
    _vm_options(parser)
    parser.add_argument("--extension", metavar="EXT", help="the exit handler (default: the seed's)")
    parser.add_argument(
        "--format",
        dest="program_format",
        choices=PROGRAM_FORMATS,
        help="how to read the program (default auto: by its suffix and content)",
    )
    parser.add_argument(
        "--timeout",
        type=_argument_type(_seconds),
        metavar="SECONDS",
        help="stop the vCPUs after this long (default: no limit)",
    )
    parser.add_argument(
        "--gdb",
        metavar="PORT",
        help="serve gdb's remote protocol on this loopback port (or HOST:PORT; 0: a free "
        "one, printed) -- on the software CPU; the guest waits for gdb before it starts",
    )
    parser.add_argument(
        "--gdb-no-wait",
        action="store_true",
        help="with --gdb: run at once (gdb attaching stops the guest)",
    )


def _commands() -> dict[str, _Parser]:
    p = {
        "load": _new(
            "bfm load",
            "Load an extension: the exit handler the next start runs.",
            "load takes one extension",
        ),
        "unload": _new("bfm unload", "Stop the VMM if it runs and forget the extension."),
        "start": _new(
            "bfm start",
            "Start the VMM service with the loaded extension "
            "(a running VMM is restarted, as in Bareflank).",
        ),
        "stop": _new("bfm stop", "Stop the VMM (and clean up one that failed)."),
        "quick": _new("bfm quick", "load, then start.", "quick takes one extension"),
        "status": _new(
            "bfm status",
            "Print VMM_UNLOADED, VMM_LOADED, VMM_RUNNING or VMM_CORRUPT, and a line for "
            "each vCPU that stopped (-v: every vCPU, and why a VMM is corrupt).",
        ),
        "dump": _new("bfm dump", "Print a vCPU's debug ring."),
        "stats": _new(
            "bfm stats",
            "Print the running VMM's exits so far: how many of each reason on each vCPU, "
            "and the handler's time on them.",
        ),
        "vmcall": _new(
            "bfm vmcall", "Have the guest agent on a vCPU make a vmcall.", epilog=VMCALL_HELP
        ),
        "run": _new(
            "bfm run",
            "Run a guest program, or boot a Linux kernel (--kernel), in the foreground: its "
            "console (COM1) on stdout, typing on stdin reaching it, and how each vCPU "
            "stopped (with the kernel's exit summary) on stderr at the end.",
            RUN_TAKES,
        ),
        "check": _new(
            "bfm check",
            "Run the VM-entry checks on a VMCS saved as JSON.",
            "check takes one VMCS JSON file",
        ),
    }
    for name in ("load", "quick"):
        p[name].add_argument("extension", help=EXTENSION_HELP)
    for name in ("start", "quick"):
        _vm_options(p[name])
    _run_options(p["run"])
    p["dump"].add_argument(
        "--vcpuid", type=_argument_type(_count), metavar="N", help="the vCPU (default 0)"
    )
    p["stats"].add_argument("--json", action="store_true", help="the figures as JSON")
    p["stats"].add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="draw exits per reason and over time into FILE (.png, .svg; pyflank[plot])",
    )
    p["vmcall"].add_argument(
        "--cpuid",
        type=_argument_type(_count),
        metavar="N",
        help="the vCPU whose agent makes the vmcall (default 0)",
    )
    p["vmcall"].add_argument("words", nargs="*", metavar="cmd", help="see below")
    p["check"].add_argument("vmcs", type=Path, help="a pyflank-vmcs JSON document")
    return p


COMMANDS = _commands()
# Options that may stand before the command (Bareflank's bfm took them anywhere).
_EARLY = _new("bfm", "", add_help=False)
_EARLY.add_argument("-h", "--help", action="store_true")
_EARLY.add_argument("--version", action="store_true")
_EARLY.add_argument("--backend", choices=BACKENDS)
_EARLY.add_argument("--vcpus", type=_argument_type(_vcpus))
_EARLY.add_argument("--memory", type=_argument_type(memory_size))
_EARLY.add_argument("--cpuid", type=_argument_type(_count))
_EARLY.add_argument("--vcpuid", type=_argument_type(_count))
_EARLY.add_argument("command", nargs="?")
_EARLY.add_argument("rest", nargs=argparse.REMAINDER)
_EARLY_ONLY = {"help", "version", "verbose", "quiet", "command", "rest"}


def parse(argv: Sequence[str]) -> CommandLine:
    early, unknown = _EARLY.parse_known_args(list(argv))
    if unknown:
        raise UsageError(f"unknown option: {unknown[0]} (see bfm -h)")
    given = vars(early)
    line = CommandLine(
        command=given.get("command"),
        help=bool(given.get("help")),
        version=bool(given.get("version")),
    )
    if line.help or line.version or line.command is None:
        return line
    parser = COMMANDS.get(line.command)
    if parser is None:
        raise UsageError(f"unknown command: {line.command} (see bfm -h)")
    rest = list(given.get("rest", []))
    options = rest[: rest.index("--")] if "--" in rest else rest
    if "-h" in options or "--help" in options:
        line.help = True
        return line
    values, extra = parser.parse_known_args(rest)
    if extra:
        first = extra[0]
        kind = "unknown option" if first.startswith("-") else "unexpected argument"
        raise UsageError(f"{line.command}: {kind}: {first} (see bfm {line.command} --help)")
    merged = {k: v for k, v in given.items() if k not in _EARLY_ONLY}
    for option in merged:
        if option not in parser.dests:
            raise UsageError(f"{line.command} takes no --{option} option")
    merged.update(vars(values))
    for name, value in merged.items():
        setattr(line, name, value)
    if line.command == "run":
        _check_run(line)
    line.verbose = bool(merged.get("verbose") or given.get("verbose"))
    line.quiet = bool(merged.get("quiet") or given.get("quiet"))
    if line.verbose and line.quiet:
        raise UsageError("-v and -q together: choose one")
    return line


def _check_run(line: CommandLine) -> None:
    if line.program is None and line.kernel is None:
        raise UsageError(RUN_TAKES)
    if line.program is not None and line.kernel is not None:
        raise UsageError(f"run takes a program or --kernel, not both ({line.program})")
    if line.kernel is None:
        for option, value in (("--initrd", line.initrd), ("--append", line.append)):
            if value is not None:
                raise UsageError(f"run: {option} goes with --kernel")
    if line.gdb is None and line.gdb_no_wait:
        raise UsageError("run: --gdb-no-wait goes with --gdb")
    if line.gdb is not None and line.backend == "kvm":
        raise UsageError("run: --gdb needs the software CPU (--backend emu), not kvm")


def command_help(command: str | None) -> str:
    parser = COMMANDS.get(command or "")
    return parser.format_help().rstrip("\n") if parser else USAGE.rstrip("\n")
