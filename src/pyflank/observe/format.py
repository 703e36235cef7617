"""The exit-trace file format, spelled once for its writer, its readers and the docs.

One JSON object per line, each with a ``type``:

``header`` (first): ``format`` ("pyflank-exit-trace"), ``version``, ``pyflank``, ``backend``,
``memory_size`` (bytes of guest RAM).

``vcpu`` (before its first exit): ``vcpu``, ``handler`` (module.Class), ``hypervisor_leaves``
(leaf -> the four registers the handler answers itself).

``exit``, one per exit the handler saw:

- ``vcpu``, ``exit`` (its index on that vCPU), ``reason`` (basic, a number) and ``name``,
  ``qualification``, ``rip``, ``instructions`` (guest instructions begun, the exiting one
  included; null where the engine does not count them), ``ns`` (since the run began) and
  ``handler_ns`` (the handler's time on it);
- what the handler was given (replayable traces): ``regs`` (the general registers),
  ``vmcs`` (every field whose value differs from what the vCPU's previous line left, the
  exit-information fields included; the first exit holds every non-zero field), ``memory``
  (guest-physical reads the handler made: [address, hex bytes]) and ``cpu`` (what it
  asked the CPU: ["cpuid", leaf, subleaf, [eax, ebx, ecx, edx]], ["rdmsr", msr, value or
  null for #GP], ["wrmsr", msr, value, faulted], ["wbinvd"]);
- ``handler``: what it decided: ``rip`` (where the guest resumes, if it moved), ``regs``
  (registers it changed), ``vmcs`` (fields whose value it changed), ``memory`` (its writes),
  ``state`` ("halted" or "promoted" when it did not resume the guest).

``stop`` (last of each vCPU): ``vcpu``, ``reason``, ``message``, ``exits``.

Numbers that are register or field values and addresses are hexadecimal strings ("0x1f"),
so no reader loses bits of a 64-bit value; counts are JSON numbers.
"""

from __future__ import annotations

from typing import Any, Final

from pyflank.exit_handler.state_save import GENERAL_REGISTERS
from pyflank.intel_x64.fields import ALL_FIELDS

FORMAT: Final = "pyflank-exit-trace"
VERSION: Final = 1
REGISTERS: Final = (*GENERAL_REGISTERS, "rsp")
"""The registers an ``exit`` line holds (StateSave's names; RIP is ``rip``)."""
FIELD_NAMES: Final = {f.encoding: f.name for f in ALL_FIELDS if not f.is_high}
FIELD_ENCODINGS: Final = {name: encoding for encoding, name in FIELD_NAMES.items()}


hexed: Final = hex
"""A value as the format writes it: ``hex`` ("0x1f"; the values are never negative)."""


def number(text: object, what: str) -> int:
    """A value the format wrote as ``hexed`` (or as a plain number), back as an int."""
    if isinstance(text, bool):
        raise ValueError(f"{what}: expected a number, got {text!r}")
    if isinstance(text, int):
        return text
    if isinstance(text, str):
        try:
            return int(text, 0)
        except ValueError:
            pass
    raise ValueError(f"{what}: expected a number, got {text!r}")


CpuCall = tuple[Any, ...]
"""A CPU call: ("cpuid", leaf, subleaf, (eax, ebx, ecx, edx)), ("rdmsr", msr, value or
None for #GP), ("wrmsr", msr, value, faulted), ("wbinvd",)."""


def cpu_call_line(call: CpuCall) -> list[object]:
    """A CPU call as a line holds it (values hexadecimal)."""
    op, *args = call
    if op == "cpuid":
        leaf, subleaf, regs = args
        return [op, hexed(leaf), hexed(subleaf), [hexed(r) for r in regs]]
    if op == "rdmsr":
        msr, value = args
        return [op, hexed(msr), None if value is None else hexed(value)]
    if op == "wrmsr":
        msr, value, faulted = args
        return [op, hexed(msr), hexed(value), faulted]
    return [op]


def cpu_call(line: list[object]) -> CpuCall:
    """A CPU call back from its line."""
    if not isinstance(line, list) or not line:
        raise ValueError(f"not a CPU call: {line!r}")
    op, *args = line
    if op == "cpuid" and len(args) == 3 and isinstance(args[2], list) and len(args[2]) == 4:
        regs = tuple(number(r, "cpuid register") for r in args[2])
        return (op, number(args[0], "leaf"), number(args[1], "subleaf"), regs)
    if op == "rdmsr" and len(args) == 2:
        return (op, number(args[0], "msr"), None if args[1] is None else number(args[1], "msr"))
    if op == "wrmsr" and len(args) == 3 and isinstance(args[2], bool):
        return (op, number(args[0], "msr"), number(args[1], "msr value"), args[2])
    if op == "wbinvd" and not args:
        return (op,)
    raise ValueError(f"not a CPU call: {line!r}")
