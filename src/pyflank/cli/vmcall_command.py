"""``bfm vmcall``: the registers and buffers a command line asks for, and the reply printed
as Bareflank's bfm printed it.

It reads the ABI from the generated ``vmcall_abi`` and imports ``json`` only for JSON
commands, so that a ``bfm vmcall`` process starts on the standard library alone.
"""

from __future__ import annotations

import os

from pyflank.cli import vmcall_abi as abi
from pyflank.cli.errors import UsageError
from pyflank.cli.files import read_input, write_output

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    Printer = Callable[[tuple[int, ...], bytes], str]  # (registers after, output) -> text

VERSION_NAMES = {
    abi.VERSION_INDEXES["PROTOCOL"]: "VMCALL_VERSION_PROTOCOL",
    abi.VERSION_INDEXES["BAREFLANK"]: "VMCALL_VERSION_PYFLANK",
    abi.VERSION_INDEXES["USER"]: "VMCALL_VERSION_USER",
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
_INDEXED = {"versions": "VERSIONS", "event": "EVENT", "unittest": "UNITTEST"}


class VmcallRequest:
    """What a ``bfm vmcall`` sends: r00-r15 (r01 the magic number), the DATA input and how
    much output it accepts."""

    __slots__ = ("data", "out_size", "registers")

    def __init__(self, registers: list[int], data: bytes = b"", out_size: int = 0) -> None:
        self.registers = registers
        self.data = data
        self.out_size = out_size


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


def _registers(opcode: str, **slots: int) -> list[int]:
    registers = [0] * len(abi.SLOTS)
    registers[abi.OPCODE_SLOT] = abi.OPCODES[opcode]
    registers[abi.MAGIC_SLOT] = abi.MAGIC_NUMBER
    for name, value in slots.items():
        registers[abi.INPUTS[opcode][name]] = value
    return registers


def request(args: list[str]) -> tuple[VmcallRequest, Printer]:
    """The registers and buffers of a ``bfm vmcall`` and how to print the reply."""
    if not args:
        raise UsageError("vmcall needs a command (see bfm vmcall --help)")
    kind, rest = args[0], args[1:]
    if kind in _INDEXED:
        if len(rest) != 1:
            raise UsageError(f"vmcall {kind} takes one index")
        index = number(rest[0])
        message = VmcallRequest(_registers(_INDEXED[kind], index=index))
        if kind == "versions":
            return message, lambda regs, out: _print_version(index, regs)
        if kind == "event":
            return message, lambda regs, out: "success"
        return message, lambda regs, out: f"vmm unittest {index}: passed"
    if kind == "registers":
        if not 1 <= len(rest) <= len(abi.ARGUMENT_SLOTS):
            raise UsageError("vmcall registers takes 1 to 11 hex values (r2 ... r12)")
        registers = _registers("REGISTERS")
        for slot, value in zip(abi.ARGUMENT_SLOTS, rest, strict=False):
            registers[slot] = _hex(value)
        return VmcallRequest(registers), _print_registers
    if kind == "string":
        if len(rest) != 2 or rest[0] not in ("unformatted", "json"):
            raise UsageError("usage: vmcall string unformatted|json <text>")
        data = os.fsencode(rest[1])  # the argument's own bytes, even if not UTF-8
        if rest[0] == "json":
            _check_json(data)
            return _data("STRING_JSON", data), _print_json
        return _data("STRING_UNFORMATTED", data), _print_string
    if kind == "data":
        if len(rest) != 3 or rest[0] != "unformatted":
            raise UsageError("usage: vmcall data unformatted <ifile> <ofile>")
        data = read_input(rest[1], abi.IN_BUFFER_SIZE, "the 32-page limit")
        out = rest[2]
        return _data("BINARY_UNFORMATTED", data), lambda regs, reply: _write(out, reply)
    raise UsageError(f"unknown vmcall command: {kind} (see bfm vmcall --help)")


def _check_json(data: bytes) -> None:
    import json  # noqa: PLC0415 - only JSON commands pay for it

    from pyflank.cli.json_text import loads  # noqa: PLC0415 - only JSON commands pay for it

    try:
        loads(data)
    except ValueError as exc:
        if isinstance(exc, json.JSONDecodeError):
            problem = f"{exc.msg} at column {exc.colno}"
        elif isinstance(exc, UnicodeDecodeError):
            problem = f"not UTF-8 at byte {exc.start}"
        else:
            problem = str(exc)
        raise UsageError(f"invalid JSON: {problem}") from None


def _data(kind: str, data: bytes) -> VmcallRequest:
    if not data:
        raise UsageError("vmcall data: the input is empty")
    if len(data) > abi.IN_BUFFER_SIZE:
        raise UsageError(f"vmcall data: {len(data)} bytes exceeds the 32-page limit")
    registers = _registers("DATA", in_type=abi.DATA_TYPES[kind])
    return VmcallRequest(registers, data, abi.OUT_BUFFER_SIZE)


def _print_version(index: int, registers: tuple[int, ...]) -> str:
    name = VERSION_NAMES.get(index, f"index {index}")
    return f"{name}: " + ".".join(str(registers[s]) for s in abi.OUTPUTS["VERSIONS"].values())


def _print_registers(registers: tuple[int, ...], out: bytes) -> str:
    lines = ["received from vmm:"]
    lines += [f"  {abi.SLOTS[slot]}: {registers[slot]:#018x}" for slot in abi.ARGUMENT_SLOTS]
    return "\n".join(lines)


def _print_string(registers: tuple[int, ...], out: bytes) -> str:
    return "received from vmm: " + out.decode("utf-8", "replace")


def _print_json(registers: tuple[int, ...], out: bytes) -> str:
    import json  # noqa: PLC0415 - only JSON commands pay for it

    from pyflank.cli.json_text import loads  # noqa: PLC0415 - only JSON commands pay for it

    text = out.decode("utf-8", "replace")
    try:
        return "received from vmm: " + json.dumps(loads(text), indent=4, ensure_ascii=False)
    except (ValueError, RecursionError):  # not JSON after all, or too deep to indent
        return "received from vmm: " + text


def _write(path: str, data: bytes) -> str:
    write_output(path, data)
    return f"received from vmm: {len(data)} bytes, written to {path}"
