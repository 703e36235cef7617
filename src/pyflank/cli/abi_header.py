"""Write (or check) ``pyflank/cli/vmcall_abi.py``, the vmcall ABI as bfm's quick commands
read it, generated from ``pyflank.abi`` like the guest SDK's headers.

    python -m pyflank.cli.abi_header [--check]

``pyflank.abi`` is built from enums and dataclasses, whose imports would cost each
``bfm vmcall`` process more than the vmcall itself; the generated module holds the same
numbers as plain constants and imports nothing.  ``--check`` writes nothing and exits 1
if the module differs from what the ABI gives.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from pyflank.abi import (
    ARGUMENT_SLOTS,
    BF_VMCALL_FAILURE,
    MAGIC_SLOT,
    OPCODE_SLOT,
    SIGNATURES,
    SLOTS,
    STATUS_SLOT,
    VMCALL_IN_BUFFER_SIZE,
    VMCALL_MAGIC_NUMBER,
    VMCALL_OUT_BUFFER_SIZE,
    VmcallDataType,
    VmcallOpcode,
    VmcallVersionIndex,
)

NAME = "vmcall_abi.py"


def _block(name: str, opening: str, items: list[str], closing: str) -> list[str]:
    """``name = {`` with one item a line: the generated module stays ruff-clean."""
    return [f"{name} = {opening}", *(f"    {item}," for item in items), closing]


def _names(
    name: str, kind: type[VmcallOpcode] | type[VmcallDataType] | type[VmcallVersionIndex]
) -> list[str]:
    return _block(name, "{", [f'"{member.name}": {member.value}' for member in kind], "}")


def _slots(pairs: tuple[tuple[str, str], ...]) -> str:
    return "{" + ", ".join(f'"{name}": {SLOTS.index(slot)}' for name, slot in pairs) + "}"


def render() -> str:
    """The text of the generated module."""
    inputs = [f'"{op.name}": {_slots(s.inputs)}' for op, s in SIGNATURES.items() if s.inputs]
    outputs = [f'"{op.name}": {_slots(s.outputs)}' for op, s in SIGNATURES.items() if s.outputs]
    lines = [
        '"""The vmcall ABI as plain constants, for bfm\'s quick commands (no imports).',
        "",
        "GENERATED from pyflank.abi by `python -m pyflank.cli.abi_header`: do not edit.",
        '"""',
        "",
        f"MAGIC_NUMBER = 0x{VMCALL_MAGIC_NUMBER:X}",
        f"BF_VMCALL_FAILURE = 0x{BF_VMCALL_FAILURE:X}",
        f"IN_BUFFER_SIZE = 0x{VMCALL_IN_BUFFER_SIZE:X}",
        f"OUT_BUFFER_SIZE = 0x{VMCALL_OUT_BUFFER_SIZE:X}",
        *_block("SLOTS", "(", [f'"{slot}"' for slot in SLOTS], ")"),
        f"OPCODE_SLOT = {SLOTS.index(OPCODE_SLOT)}",
        f"MAGIC_SLOT = {SLOTS.index(MAGIC_SLOT)}",
        f"STATUS_SLOT = {SLOTS.index(STATUS_SLOT)}",
        f"ARGUMENT_SLOTS = {tuple(SLOTS.index(slot) for slot in ARGUMENT_SLOTS)!r}",
        *_names("OPCODES", VmcallOpcode),
        *_names("DATA_TYPES", VmcallDataType),
        *_names("VERSION_INDEXES", VmcallVersionIndex),
        "# What each opcode reads and returns: the argument's name and its slot, in order.",
        *_block("INPUTS", "{", inputs, "}"),
        *_block("OUTPUTS", "{", outputs, "}"),
    ]
    return "\n".join(lines) + "\n"


def _module_path() -> Path:
    return Path(str(resources.files("pyflank.cli") / NAME))


def is_current(path: Path | None = None) -> bool:
    target = path or _module_path()
    return target.is_file() and target.read_text() == render()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args not in ([], ["--check"]):
        print("usage: python -m pyflank.cli.abi_header [--check]", file=sys.stderr)
        return 2
    path = _module_path()
    if args:
        if is_current(path):
            return 0
        print(f"{path}: stale, run python -m pyflank.cli.abi_header", file=sys.stderr)
        return 1
    path.write_text(render())
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
