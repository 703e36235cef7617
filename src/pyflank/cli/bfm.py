"""bfm: load an extension, start the VMM, send vmcalls from inside the guest, dump, stop;
or run a guest program of your own (``bfm run``).  ``bfm -h``, ``bfm COMMAND --help``."""

from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from pathlib import Path

from pyflank.abi import BF_VMCALL_FAILURE, MAGIC_SLOT, VMCALL_MAGIC_NUMBER
from pyflank.cli import manager
from pyflank.cli.errors import CommandError, ExtensionError, UsageError
from pyflank.cli.parser import VERSION, CommandLine, command_help, parse
from pyflank.cli.protocol import ProtocolError
from pyflank.cli.runtime import RuntimeDir, RuntimeDirError
from pyflank.cli.vmcall_command import request as vmcall_request

__all__ = ["UsageError", "main", "run"]


def _vmcall(rt: RuntimeDir, cpuid: int, words: list[str]) -> str:
    message, show = vmcall_request(words)
    message["regs"][MAGIC_SLOT] = VMCALL_MAGIC_NUMBER
    reply = manager.vmcall(rt, cpuid, message)
    if reply.get("ret") == BF_VMCALL_FAILURE:
        raise manager.ManagerError("the vmcall failed: BF_VMCALL_FAILURE (see bfm dump)")
    return show(reply)


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


def execute(line: CommandLine, rt: RuntimeDir) -> str:
    """Carry out one parsed command (other than ``run``); returns what to print."""
    command = line.command
    if command == "load":
        assert line.extension is not None
        return manager.load(rt, line.extension)
    if command == "unload":
        return manager.unload(rt)
    if command == "start":
        return manager.start(rt, backend=line.backend, vcpus=line.vcpus, memory=line.memory)
    if command == "quick":
        assert line.extension is not None
        loaded = manager.load(rt, line.extension)
        started = manager.start(rt, backend=line.backend, vcpus=line.vcpus, memory=line.memory)
        return f"{loaded}\n{started}"
    if command == "stop":
        return manager.stop(rt)
    if command == "status":
        return "\n".join(manager.status_lines(rt, verbose=line.verbose))
    if command == "dump":
        return manager.dump(rt, line.vcpuid)
    if command == "vmcall":
        return _vmcall(rt, line.cpuid, line.words)
    if command == "check":
        assert line.vmcs is not None
        return manager.check(line.vmcs)
    raise UsageError(f"unknown command: {command} (see bfm -h)")


def run(argv: Sequence[str], rt: RuntimeDir) -> str:
    """Carry out one bfm command line (other than ``run``); returns what to print."""
    line = parse(argv)
    if line.version:
        return VERSION
    if line.help or line.command is None:
        return command_help(line.command)
    return execute(line, rt)


def _tolerant(stream: object) -> None:
    # Arguments that are not UTF-8 reach us as surrogates; they must print, not raise.
    if isinstance(stream, io.TextIOWrapper):
        stream.reconfigure(errors="backslashreplace")


def _fail(message: object, code: int) -> int:
    text = " ".join(str(message).split()) or "failed"
    print(f"bfm: {text}", file=sys.stderr)
    return code


def main(argv: Sequence[str] | None = None) -> int:
    _tolerant(sys.stdout)
    _tolerant(sys.stderr)
    args = sys.argv[1:] if argv is None else argv
    try:
        line = parse(args)
        if line.command == "run" and not (line.help or line.version):
            return _run_guest(line)
        output = run(args, RuntimeDir.default())
        if output and not line.quiet:
            print(output)
    except UsageError as exc:
        return _fail(exc, 2)
    except (ExtensionError, ProtocolError, RuntimeDirError, CommandError) as exc:
        return _fail(exc, 1)
    except manager.ManagerError as exc:
        if exc.output:
            print(exc.output)
        return _fail(exc, exc.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
    except BrokenPipeError:  # whoever read our output went away: nothing left to say
        sys.stdout = open(Path("/dev/null"), "w")  # noqa: SIM115 - silences the exit flush
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
