"""``monitor`` commands of the gdb stub: what a hypervisor's user asks besides registers and
memory (gdb sends them as ``qRcmd``; the answer is printed in gdb).

    monitor help
    monitor break-exit cpuid wrmsr 0x30 rip=0x100020   break on these exits (reason name or
                                                        number, or the exiting RIP)
    monitor delete-exits                              no more exit breaks
    monitor vmcs                                      the current vCPU's VMCS, decoded
    monitor exits                                     how many exits each vCPU's handler saw
    monitor physical on|off                           m/M addresses are guest-physical
    monitor snapshot FILE                             save the stopped VM (Vm.restore)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from pyflank.debug.parking import ParkingClosed
from pyflank.intel_x64 import exit_reasons
from pyflank.intel_x64.dump import dump
from pyflank.intel_x64.exit_reasons import ExitReason

if TYPE_CHECKING:
    from pyflank.gdbstub.server import GdbStub

_TIMEOUT = 30.0


def run(stub: GdbStub, command: str) -> str:
    """The output of ``command`` (ending in a newline), or a one-line refusal."""
    words = command.split()
    if not words:
        return _HELP
    action = _ACTIONS.get(words[0])
    if action is None:
        return f"unknown monitor command {words[0]!r}: try 'monitor help'\n"
    try:
        return action(stub, words[1:])
    except ValueError as exc:
        return f"{words[0]}: {exc}\n"


def _help(stub: GdbStub, _: list[str]) -> str:
    return _HELP


def _break_exit(stub: GdbStub, args: list[str]) -> str:
    if not args:
        return f"breaking on exits: {stub.breaks.describe()}\n"
    reasons, rips = [], []
    for arg in args:
        if arg.startswith("rip="):
            rips.append(int(arg[4:], 0))
        else:
            reasons.append(_reason(arg))
    stub.breaks.add(reasons=reasons, rips=rips)
    return f"breaking on exits: {stub.breaks.describe()}\n"


def _delete_exits(stub: GdbStub, _: list[str]) -> str:
    stub.breaks.clear()
    return "no exit breaks\n"


def _vmcs(stub: GdbStub, _: list[str]) -> str:
    parking = stub.vcpus.get(stub.current)
    if parking is None:
        return "no such vCPU\n"
    try:
        return parking.call(lambda _view: dump(parking.vmcs), _TIMEOUT) + "\n"
    except (ParkingClosed, TimeoutError) as exc:
        return f"vmcs: {exc}\n"


def _exits(stub: GdbStub, _: list[str]) -> str:
    lines = []
    for vcpuid, parking in sorted(stub.vcpus.items()):
        processor = parking.processor
        count = processor.exits if processor is not None else 0
        lines.append(f"vCPU {vcpuid}: {count} exits")
    return "\n".join(lines) + "\n"


def _physical(stub: GdbStub, args: list[str]) -> str:
    if args:
        if args[0] not in ("on", "off"):
            raise ValueError("say 'on' or 'off'")
        stub.physical = args[0] == "on"
    kind = "guest-physical" if stub.physical else "guest-virtual (the guest's paging)"
    return f"memory addresses are {kind}\n"


def _snapshot(stub: GdbStub, args: list[str]) -> str:
    if len(args) != 1:
        raise ValueError("say where: monitor snapshot FILE")
    if stub.snapshot is None:
        return "snapshots are not available here\n"
    try:
        return stub.snapshot(args[0]) + "\n"
    except (OSError, ValueError) as exc:  # (a vCPU stopped at an exit, a bad path)
        return f"snapshot: {exc}\n"


def _reason(word: str) -> int:
    try:
        reason = int(word, 0)
    except ValueError:
        try:
            return int(ExitReason[word.upper()])
        except KeyError:
            raise ValueError(f"no exit reason {word!r}") from None
    if exit_reasons.exit_reason(reason) is None:
        raise ValueError(f"no basic exit reason {reason}")
    return reason


_ACTIONS: dict[str, Callable[[GdbStub, list[str]], str]] = {
    "help": _help,
    "break-exit": _break_exit,
    "delete-exits": _delete_exits,
    "vmcs": _vmcs,
    "exits": _exits,
    "physical": _physical,
    "snapshot": _snapshot,
}
_HELP = (__doc__ or "").split("\n\n", 1)[1].replace("    monitor", "monitor") + "\n"
