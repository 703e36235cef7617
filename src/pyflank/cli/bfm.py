"""bfm: load an extension, start the VMM, send vmcalls from inside the guest, dump, stop;
or run a guest program of your own (``bfm run``).  ``bfm -h``, ``bfm COMMAND --help``.

A plain ``bfm vmcall`` (``bfm [--cpuid N] vmcall [--cpuid N] WORD...``, no other options)
is carried out on the standard library alone: one frame to the service and its answer
back.  Every other command line, and a vmcall when no service answers, goes through
the full parser and manager, imported only then.
"""

from __future__ import annotations

import io
import sys

from pyflank.cli import client
from pyflank.cli import vmcall_abi as abi
from pyflank.cli.errors import (
    CommandError,
    ExtensionError,
    ManagerError,
    ProtocolError,
    UsageError,
)
from pyflank.cli.runtime import RuntimeDir, RuntimeDirError
from pyflank.cli.vmcall_command import number
from pyflank.cli.vmcall_command import request as vmcall_request

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from pyflank.cli.parser import CommandLine
    from pyflank.cli.service_launch import ServiceLaunch

__all__ = ["UsageError", "main", "run"]


def vmcall(rt: RuntimeDir, cpuid: int, words: list[str]) -> str:
    """``bfm vmcall WORDS`` on vCPU ``cpuid``; what to print.  Straight to the service:
    only when none answers does bfm ask for its status (to say why)."""
    message, show = vmcall_request(words)
    try:
        registers, out = client.vmcall(rt, cpuid, message.registers, message.data, message.out_size)
    except client.NotRunning as exc:
        from pyflank.cli import manager  # noqa: PLC0415 - only when it failed

        raise manager.why_not_running(rt, str(exc)) from None
    if registers[abi.STATUS_SLOT] == abi.BF_VMCALL_FAILURE:
        raise ManagerError("the vmcall failed: BF_VMCALL_FAILURE (see bfm dump)")
    return show(registers, out)


def quick_vmcall(argv: Sequence[str]) -> tuple[int, list[str]] | None:
    """(cpuid, words) of a command line that is a plain vmcall, read without argparse;
    None for any other (the full parser takes it).  Only forms whose meaning the full
    parser cannot read differently are taken: no word starts with a dash."""
    words = list(argv)
    cpuid_text: str | None = None
    if words[:1] == ["--cpuid"] and len(words) >= 2:
        cpuid_text, words = words[1], words[2:]
    if words[:1] != ["vmcall"]:
        return None
    words = words[1:]
    if words[:1] == ["--cpuid"] and len(words) >= 2 and cpuid_text is None:
        cpuid_text, words = words[1], words[2:]
    if not words or any(word.startswith("-") for word in words):
        return None
    if cpuid_text is None:
        return 0, words
    if cpuid_text.startswith("-"):
        return None
    try:
        return number(cpuid_text), words
    except UsageError:
        return None  # the full parser words the error


def _run_guest(line: CommandLine) -> int:
    from pyflank.cli.guest_run import RunRequest, run_program  # noqa: PLC0415 - heavy

    request = RunRequest(
        program=line.program,
        program_format=line.program_format,
        kernel=line.kernel,
        initrd=line.initrd,
        append=RunRequest.append if line.append is None else line.append,
        backend=line.backend,
        vcpus=line.vcpus,
        memory=line.memory,
        extension=line.extension,
        timeout=line.timeout,
        gdb=line.gdb,
        gdb_wait=not line.gdb_no_wait,
        verbose=line.verbose,
        quiet=line.quiet,
    )
    return run_program(
        request, sys.stdout.buffer, sys.stderr, RuntimeDir.default(), _keyboard(line)
    )


def _keyboard(line: CommandLine) -> int | None:
    """Standard input's file descriptor, for a kernel's console (None: nothing to type)."""
    if line.kernel is None or sys.stdin is None:
        return None
    try:
        return sys.stdin.fileno()
    except (OSError, ValueError):  # io.UnsupportedOperation is both
        return None


def execute(line: CommandLine, rt: RuntimeDir, launch: ServiceLaunch | None = None) -> str:
    """Carry out one parsed command (other than ``run``); returns what to print.
    ``launch``: a service spawned early for ``start`` or ``quick`` to use."""
    command = line.command
    if command == "vmcall":
        return vmcall(rt, line.cpuid, line.words)
    from pyflank.cli import manager  # noqa: PLC0415 - not needed by a vmcall

    if command == "load":
        assert line.extension is not None
        return manager.load(rt, line.extension)
    if command == "unload":
        return manager.unload(rt)
    if command in ("start", "quick"):
        loaded = ""
        if command == "quick":
            assert line.extension is not None
            loaded = manager.load(rt, line.extension) + "\n"
        backend, vcpus, memory = line.backend, line.vcpus, line.memory
        return loaded + manager.start(
            rt, backend=backend, vcpus=vcpus, memory=memory, launch=launch
        )
    if command == "stop":
        return manager.stop(rt)
    if command == "status":
        return "\n".join(manager.status_lines(rt, verbose=line.verbose))
    if command == "dump":
        return manager.dump(rt, line.vcpuid)
    if command == "stats":
        return _stats(rt, line)
    if command == "check":
        assert line.vmcs is not None
        return manager.check(line.vmcs)
    raise UsageError(f"unknown command: {command} (see bfm -h)")


def _stats(rt: RuntimeDir, line: CommandLine) -> str:
    """``bfm stats``: the running VMM's exit statistics, as a table, JSON or a picture."""
    import importlib  # noqa: PLC0415 - bfm imports only what a command needs
    import json  # noqa: PLC0415

    from pyflank.cli import manager  # noqa: PLC0415
    from pyflank.observe.statistics import ExitStatistics  # noqa: PLC0415

    figures = manager.stats(rt, timeline=line.plot is not None)

    statistics = ExitStatistics.from_dict(figures)
    if line.plot is not None:
        try:
            plot = importlib.import_module("pyflank.observe.plot")
        except ImportError as exc:
            raise ManagerError(str(exc)) from None
        try:
            drawn = plot.plot_exits(statistics, line.plot)
        except (OSError, ValueError) as exc:
            raise ManagerError(f"{line.plot}: {exc}") from None
        return f"{statistics.exits()} exits drawn into {drawn}"
    if line.json:
        return json.dumps(figures, indent=2)
    return statistics.table() or "no exits yet"


def run(argv: Sequence[str], rt: RuntimeDir, launch: ServiceLaunch | None = None) -> str:
    """Carry out one bfm command line (other than ``run``); returns what to print.

    In a long-lived process, vmcalls reuse the connection the last one opened."""
    quick = quick_vmcall(argv)
    if quick is not None:
        return vmcall(rt, *quick)
    from pyflank.cli.parser import VERSION, command_help, parse  # noqa: PLC0415 - argparse

    line = parse(argv)
    if line.version:
        return VERSION
    if line.help or line.command is None:
        return command_help(line.command)
    return execute(line, rt, launch)


def _early_launch(args: list[str]) -> ServiceLaunch | None:
    """For ``bfm start`` and ``bfm quick``: the service, spawned before bfm imports its
    parser, so that the VMM's import overlaps bfm's own work (``cli.service_launch``)."""
    if args[:1] not in (["start"], ["quick"]) or {"-h", "--help", "--version"} & set(args):
        return None
    from pyflank.cli.service_launch import ServiceLaunch  # noqa: PLC0415 - start only

    try:
        return ServiceLaunch(RuntimeDir.default())
    except (RuntimeDirError, OSError):
        return None  # the command itself will say what is wrong


def _tolerant(stream: object) -> None:
    # Arguments that are not UTF-8 reach us as surrogates; they must print, not raise.
    if isinstance(stream, io.TextIOWrapper):
        stream.reconfigure(errors="backslashreplace")


def _fail(message: object, code: int) -> int:
    text = " ".join(str(message).split()) or "failed"
    print(f"bfm: {text}", file=sys.stderr)
    return code


def _carry_out(args: list[str]) -> int:
    if quick_vmcall(args) is not None:
        print(run(args, RuntimeDir.default()))
        return 0
    launch = _early_launch(args)
    try:
        from pyflank.cli.parser import parse  # noqa: PLC0415 - argparse, for all the rest

        line = parse(args)
        if line.command == "run" and not (line.help or line.version):
            return _run_guest(line)
        output = run(args, RuntimeDir.default(), launch)
    finally:
        if launch is not None:
            launch.cancel()  # unless it was told to run
    if output and not line.quiet:
        print(output)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    _tolerant(sys.stdout)
    _tolerant(sys.stderr)
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        return _carry_out(args)
    except UsageError as exc:
        return _fail(exc, 2)
    except (ExtensionError, ProtocolError, RuntimeDirError, CommandError) as exc:
        return _fail(exc, 1)
    except ManagerError as exc:
        if exc.output:
            print(exc.output)
        return _fail(exc, exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # whoever read our output went away: nothing left to say
        sys.stdout = open("/dev/null", "w")  # noqa: SIM115 - silences the exit flush
        return 1


if __name__ == "__main__":
    sys.exit(main())
