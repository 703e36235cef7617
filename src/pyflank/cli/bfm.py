"""bfm: load an extension, start the VMM, send vmcalls from inside the guest, dump, stop."""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyflank.abi import (
    ARGUMENT_SLOTS,
    BF_VMCALL_FAILURE,
    DATA,
    MAGIC_SLOT,
    OPCODE_SLOT,
    SIGNATURES,
    VMCALL_IN_BUFFER_SIZE,
    VMCALL_MAGIC_NUMBER,
    VMCALL_OUT_BUFFER_SIZE,
    VmcallDataType,
    VmcallOpcode,
    VmcallVersionIndex,
)
from pyflank.cli import manager
from pyflank.cli.errors import ExtensionError
from pyflank.cli.protocol import ProtocolError
from pyflank.cli.runtime import RuntimeDir, RuntimeDirError

USAGE = """\
Usage: bfm [OPTION]... load <extension>
  or:  bfm [OPTION]... unload
  or:  bfm [OPTION]... start
  or:  bfm [OPTION]... stop
  or:  bfm [OPTION]... quick <extension>
  or:  bfm [OPTION]... status
  or:  bfm [OPTION]... dump
  or:  bfm [OPTION]... vmcall <cmd>
  or:  bfm [OPTION]... check <vmcs.json>
pyflank manager: load an exit handler, run the VMM, talk to it from inside the guest

       --backend <name>   emu, kvm or auto (auto: emu) for start and quick
       --cpuid <number>   the vCPU whose guest agent makes the vmcall
       --vcpuid <number>  the vCPU whose debug ring dump prints
       --vcpus <number>   how many vCPUs start runs (default 1)
  -h,  --help             show this help and exit

Extensions:
  a Python file or module naming an ExitHandlerIntelX64 subclass
  (file.py, file.py:Class, pkg.module, pkg.module:Class), or a .modules
  JSON file {"modules": [...]} whose handlers are composed in order

VMCall Commands:
  versions <index>                     0 protocol, 1 pyflank, 10 extension
  registers <r2> <r3> ... <r12>        values in hex
  string unformatted <string>
  string json <json>
  data unformatted <ifile> <ofile>
  event <index>
  unittest <index>
"""

VERSION_NAMES = {
    VmcallVersionIndex.PROTOCOL: "VMCALL_VERSION_PROTOCOL",
    VmcallVersionIndex.BAREFLANK: "VMCALL_VERSION_PYFLANK",
    VmcallVersionIndex.USER: "VMCALL_VERSION_USER",
}


_VERSIONS = SIGNATURES[VmcallOpcode.VERSIONS]


class UsageError(Exception):
    """A bad command line; printed as one line."""


OPTIONS = {"--backend", "--cpuid", "--vcpuid", "--vcpus"}
BACKENDS = ("emu", "kvm", "auto")


@dataclass
class CommandLine:
    command: str | None = None
    arguments: list[str] = field(default_factory=list)
    help: bool = False
    backend: str = "auto"
    cpuid: int = 0
    vcpuid: int = 0
    vcpus: int = 1


def _number(text: str, option: str = "") -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"{option + ': ' if option else ''}not a number: {text!r}") from None
    if value < 0:
        raise UsageError(f"{option + ': ' if option else ''}must not be negative: {text}")
    return value


def parse(argv: Sequence[str]) -> CommandLine:
    """Options may stand anywhere (as in Bareflank's bfm); ``--`` ends them."""
    line, positional = CommandLine(), []
    tokens = list(argv)
    while tokens:
        token = tokens.pop(0)
        name, eq, inline = token.partition("=")
        if token == "--":
            positional += tokens
            break
        if token in ("-h", "--help"):
            line.help = True
        elif name in OPTIONS:
            if not eq:
                if not tokens:
                    raise UsageError(f"{name} needs a value")
                inline = tokens.pop(0)
            if name == "--backend":
                if inline not in BACKENDS:
                    raise UsageError(f"--backend: invalid choice {inline!r} (emu, kvm, auto)")
                line.backend = inline
            else:
                setattr(line, name[2:], _number(inline, name))
        elif token.startswith("--"):
            raise UsageError(f"unknown option: {token}")
        else:
            positional.append(token)
    if positional:
        line.command, line.arguments = positional[0], positional[1:]
    return line


def _hex(text: str) -> int:
    try:
        value = int(text, 16)
    except ValueError:
        raise UsageError(f"malformed hex value: {text!r}") from None
    if not 0 <= value < 1 << 64:
        raise UsageError(f"hex value out of range: {text!r}")
    return value


def _vmcall_request(args: list[str]) -> tuple[dict[str, Any], Callable[[dict[str, Any]], str]]:
    """The registers and buffers of a ``bfm vmcall`` and how to print the reply."""
    if not args:
        raise UsageError("vmcall needs a command (see bfm -h)")
    kind, rest = args[0], args[1:]
    if kind in ("versions", "event", "unittest"):
        if len(rest) != 1:
            raise UsageError(f"vmcall {kind} takes one index")
        index = _number(rest[0])
        opcode = {"versions": VmcallOpcode.VERSIONS, "event": VmcallOpcode.EVENT}.get(
            kind, VmcallOpcode.UNITTEST
        )
        request = {"regs": {OPCODE_SLOT: int(opcode), SIGNATURES[opcode].slot("index"): index}}
        if kind == "versions":
            return request, lambda r: _print_version(index, r)
        if kind == "event":
            return request, lambda r: "success"
        return request, lambda r: f"vmm unittest {index}: passed"
    if kind == "registers":
        if not 1 <= len(rest) <= len(ARGUMENT_SLOTS):
            raise UsageError("vmcall registers takes 1 to 11 hex values (r2 ... r12)")
        regs = {slot: _hex(v) for slot, v in zip(ARGUMENT_SLOTS, rest, strict=False)}
        return {"regs": {OPCODE_SLOT: int(VmcallOpcode.REGISTERS), **regs}}, _print_registers
    if kind == "string":
        if len(rest) != 2 or rest[0] not in ("unformatted", "json"):
            raise UsageError("usage: vmcall string unformatted|json <text>")
        data = rest[1].encode()
        if rest[0] == "json":
            try:
                json.loads(data)
            except json.JSONDecodeError as exc:
                raise UsageError(f"invalid JSON: {exc.msg} at column {exc.colno}") from None
            return _data(VmcallDataType.STRING_JSON, data), _print_json
        return _data(VmcallDataType.STRING_UNFORMATTED, data), _print_string
    if kind == "data":
        if len(rest) != 3 or rest[0] != "unformatted":
            raise UsageError("usage: vmcall data unformatted <ifile> <ofile>")
        data = _read_input(Path(rest[1]))
        out = Path(rest[2])
        return _data(VmcallDataType.BINARY_UNFORMATTED, data), lambda r: _write_output(out, r)
    raise UsageError(f"unknown vmcall command: {kind}")


def _data(kind: VmcallDataType, data: bytes) -> dict[str, Any]:
    if not data:
        raise UsageError("vmcall data: the input is empty")
    if len(data) > VMCALL_IN_BUFFER_SIZE:
        raise UsageError(f"vmcall data: {len(data)} bytes exceeds the 32-page limit")
    return {
        "regs": {OPCODE_SLOT: int(VmcallOpcode.DATA), DATA.slot("in_type"): int(kind)},
        "in": base64.b64encode(data).decode(),
        "out_size": VMCALL_OUT_BUFFER_SIZE,
    }


def _read_input(path: Path) -> bytes:
    try:
        size = path.stat().st_size
        if size > VMCALL_IN_BUFFER_SIZE:
            raise UsageError(f"{path}: {size} bytes exceeds the 32-page limit")
        return path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None


def _reply_bytes(reply: dict[str, Any]) -> bytes:
    return base64.b64decode(reply.get("out", ""))


def _print_version(index: int, reply: dict[str, Any]) -> str:
    regs = reply["regs"]
    name = VERSION_NAMES.get(VmcallVersionIndex(index), f"index {index}")
    return f"{name}: " + ".".join(str(regs[slot]) for _, slot in _VERSIONS.outputs)


def _print_registers(reply: dict[str, Any]) -> str:
    regs = reply["regs"]
    lines = ["received from vmm:"]
    lines += [f"  {slot}: {regs[slot]:#018x}" for slot in ARGUMENT_SLOTS]
    return "\n".join(lines)


def _print_string(reply: dict[str, Any]) -> str:
    return "received from vmm: " + _reply_bytes(reply).decode("utf-8", "replace")


def _print_json(reply: dict[str, Any]) -> str:
    text = _reply_bytes(reply).decode("utf-8", "replace")
    with contextlib.suppress(json.JSONDecodeError):
        text = json.dumps(json.loads(text), indent=4)
    return "received from vmm: " + text


def _write_output(path: Path, reply: dict[str, Any]) -> str:
    data = _reply_bytes(reply)
    try:
        path.write_bytes(data)
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None
    return f"received from vmm: {len(data)} bytes, written to {path}"


def _vmcall(rt: RuntimeDir, cpuid: int, args: list[str]) -> str:
    request, show = _vmcall_request(args)
    request["regs"][MAGIC_SLOT] = VMCALL_MAGIC_NUMBER
    reply = manager.vmcall(rt, cpuid, request)
    if reply["ret"] == BF_VMCALL_FAILURE:
        raise manager.ManagerError("the vmcall failed: BF_VMCALL_FAILURE (see bfm dump)")
    return show(reply)


def run(argv: Sequence[str], rt: RuntimeDir) -> str:
    """Carry out one bfm command line; returns what to print."""
    args = parse(argv)
    if args.help or args.command is None:
        return USAGE.rstrip("\n")
    command, rest = args.command, list(args.arguments)

    def arity(n: int, what: str = "") -> None:
        if len(rest) != n:
            raise UsageError(f"{command} takes {what or 'no arguments'}")

    if command == "load":
        arity(1, "one extension")
        return manager.load(rt, rest[0])
    if command == "unload":
        arity(0)
        return manager.unload(rt)
    if command == "start":
        arity(0)
        return manager.start(rt, backend=args.backend, vcpus=args.vcpus)
    if command == "quick":
        arity(1, "one extension")
        manager.unload(rt)
        manager.load(rt, rest[0])
        return manager.start(rt, backend=args.backend, vcpus=args.vcpus)
    if command == "stop":
        arity(0)
        return manager.stop(rt)
    if command == "status":
        arity(0)
        return manager.status(rt).value
    if command == "dump":
        arity(0)
        return manager.dump(rt, args.vcpuid)
    if command == "vmcall":
        return _vmcall(rt, args.cpuid, rest)
    if command == "check":
        arity(1, "one VMCS JSON file")
        return manager.check(Path(rest[0]))
    raise UsageError(f"unknown command: {command} (see bfm -h)")


def main(argv: Sequence[str] | None = None) -> int:
    try:
        print(run(sys.argv[1:] if argv is None else argv, RuntimeDir.default()))
    except (UsageError, ExtensionError, ProtocolError, RuntimeDirError) as exc:
        print(f"bfm: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, UsageError) else 1
    except manager.ManagerError as exc:
        if exc.output:
            print(exc.output)
        print(f"bfm: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
