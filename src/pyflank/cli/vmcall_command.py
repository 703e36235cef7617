"""``bfm vmcall``: the registers and buffers a command line asks for, and the reply printed
as Bareflank's bfm printed it."""

from __future__ import annotations

import base64
import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pyflank.abi import (
    ARGUMENT_SLOTS,
    DATA,
    OPCODE_SLOT,
    SIGNATURES,
    VMCALL_IN_BUFFER_SIZE,
    VMCALL_OUT_BUFFER_SIZE,
    VmcallDataType,
    VmcallOpcode,
    VmcallVersionIndex,
)
from pyflank.cli.errors import UsageError
from pyflank.cli.files import read_input, write_output
from pyflank.cli.protocol import loads

VERSION_NAMES = {
    VmcallVersionIndex.PROTOCOL: "VMCALL_VERSION_PROTOCOL",
    VmcallVersionIndex.BAREFLANK: "VMCALL_VERSION_PYFLANK",
    VmcallVersionIndex.USER: "VMCALL_VERSION_USER",
}
HELP = """\
vmcall commands:
  versions <index>                     0 protocol, 1 pyflank, 10 extension
  registers <r2> <r3> ... <r12>        values in hex
  string unformatted <string>
  string json <json>
  data unformatted <ifile> <ofile>
  event <index>
  unittest <index>"""

Printer = Callable[[dict[str, Any]], str]
_VERSIONS = SIGNATURES[VmcallOpcode.VERSIONS]


def _u64(text: str, base: int, malformed: str, out_of_range: str) -> int:
    try:
        value = int(text, base)
    except ValueError:
        raise UsageError(malformed) from None
    if not 0 <= value < 1 << 64:
        raise UsageError(out_of_range)
    return value


def number(text: str, option: str = "") -> int:
    """A non-negative integer below 2**64 (decimal, 0x hex, 0o, 0b)."""
    where = f"{option}: " if option else ""
    return _u64(
        text, 0, f"{where}not a number: {text!r}", f"{where}out of range (0 to 2**64 - 1): {text}"
    )


def _hex(text: str) -> int:
    return _u64(text, 16, f"malformed hex value: {text!r}", f"hex value out of range: {text!r}")


def request(args: list[str]) -> tuple[dict[str, Any], Printer]:
    """The registers and buffers of a ``bfm vmcall`` and how to print the reply."""
    if not args:
        raise UsageError("vmcall needs a command (see bfm vmcall --help)")
    kind, rest = args[0], args[1:]
    if kind in ("versions", "event", "unittest"):
        if len(rest) != 1:
            raise UsageError(f"vmcall {kind} takes one index")
        index = number(rest[0])
        opcode = {"versions": VmcallOpcode.VERSIONS, "event": VmcallOpcode.EVENT}.get(
            kind, VmcallOpcode.UNITTEST
        )
        message = {"regs": {OPCODE_SLOT: int(opcode), SIGNATURES[opcode].slot("index"): index}}
        if kind == "versions":
            return message, lambda r: _print_version(index, r)
        if kind == "event":
            return message, lambda r: "success"
        return message, lambda r: f"vmm unittest {index}: passed"
    if kind == "registers":
        if not 1 <= len(rest) <= len(ARGUMENT_SLOTS):
            raise UsageError("vmcall registers takes 1 to 11 hex values (r2 ... r12)")
        regs = {slot: _hex(v) for slot, v in zip(ARGUMENT_SLOTS, rest, strict=False)}
        return {"regs": {OPCODE_SLOT: int(VmcallOpcode.REGISTERS), **regs}}, _print_registers
    if kind == "string":
        if len(rest) != 2 or rest[0] not in ("unformatted", "json"):
            raise UsageError("usage: vmcall string unformatted|json <text>")
        data = os.fsencode(rest[1])  # the argument's own bytes, even if not UTF-8
        if rest[0] == "json":
            try:
                loads(data)
            except ValueError as exc:
                raise UsageError(f"invalid JSON: {_json_problem(exc)}") from None
            return _data(VmcallDataType.STRING_JSON, data), _print_json
        return _data(VmcallDataType.STRING_UNFORMATTED, data), _print_string
    if kind == "data":
        if len(rest) != 3 or rest[0] != "unformatted":
            raise UsageError("usage: vmcall data unformatted <ifile> <ofile>")
        data = read_input(Path(rest[1]), VMCALL_IN_BUFFER_SIZE, "the 32-page limit")
        out = Path(rest[2])
        return _data(VmcallDataType.BINARY_UNFORMATTED, data), lambda r: _write(out, r)
    raise UsageError(f"unknown vmcall command: {kind} (see bfm vmcall --help)")


def _json_problem(exc: ValueError) -> str:
    if isinstance(exc, json.JSONDecodeError):
        return f"{exc.msg} at column {exc.colno}"
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 at byte {exc.start}"
    return str(exc)


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


def _reply_bytes(reply: dict[str, Any]) -> bytes:
    try:
        return base64.b64decode(reply.get("out", ""), validate=True)
    except ValueError:
        return b""


def _print_version(index: int, reply: dict[str, Any]) -> str:
    regs = reply["regs"]
    try:
        name = VERSION_NAMES.get(VmcallVersionIndex(index), f"index {index}")
    except ValueError:
        name = f"index {index}"
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
    # Not JSON after all (or too deep to indent): show it as it came.
    with contextlib.suppress(ValueError, RecursionError):
        text = json.dumps(loads(text), indent=4, ensure_ascii=False)
    return "received from vmm: " + text


def _write(path: Path, reply: dict[str, Any]) -> str:
    data = _reply_bytes(reply)
    write_output(path, data)
    return f"received from vmm: {len(data)} bytes, written to {path}"
