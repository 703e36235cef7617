"""Which guest register carries which slot of ``vmcall_registers_t`` (Intel x64), and the
generated code that moves them between a StateSave and ``VmcallRegisters``.

The exit path runs these for every vmcall, so they are compiled once from the map
(straight-line attribute copies, as the hand-written code was) instead of looping.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from pyflank.abi.vmcall import (
    MAGIC_SLOT,
    OPCODE_SLOT,
    REGISTER_MASK,
    SLOTS,
    STATUS_SLOT,
    VmcallRegisters,
)

# Slot i travels in INTEL_X64_REGISTERS[i]; r13-r15 do not travel on Intel.
INTEL_X64_REGISTERS: Final = (
    "rax", "rdx", "rcx", "rbx", "rsi",
    "r08", "r09", "r10", "r11", "r12", "r13", "r14", "r15",
)  # fmt: skip
INTEL_X64_REGISTER_MAP: Final = tuple(zip(SLOTS, INTEL_X64_REGISTERS, strict=False))
REGISTER_OF_SLOT: Final = dict(INTEL_X64_REGISTER_MAP)

# The slots a guest fills for an opcode's arguments: every one that travels after the opcode
# and the magic number (``bfm vmcall registers`` takes r02-r12).
ARGUMENT_SLOTS: Final = tuple(
    slot for slot, _ in INTEL_X64_REGISTER_MAP if slot not in (OPCODE_SLOT, MAGIC_SLOT)
)

# What a completed vmcall writes back into the guest besides the status, as Bareflank 1.1's
# complete_vmcall did: the argument slots r02-r12 (never r00: RAX keeps the opcode), but
# only r02 for EVENT.
RETURNED_SLOTS: Final = ARGUMENT_SLOTS
EVENT_RETURNED_SLOTS: Final = ("r02",)

# The I/O-port doorbell (CPUID 0x40000001 bit 1): OUT needs the port in DX, so the slot that
# RDX carries (r01, the magic number) travels in RDI instead; the status still comes back
# in RDX.
DOORBELL_REGISTERS: Final = {"r01": "rdi"}

Loader = Callable[[Any], VmcallRegisters]
Storer = Callable[[VmcallRegisters, Any, int], None]


def _compile(source: str, name: str) -> Any:
    namespace: dict[str, Any] = {
        "VmcallRegisters": VmcallRegisters,
        "_new": object.__new__,
        "MASK": REGISTER_MASK,
    }
    exec(compile(source, f"<pyflank.abi.registers:{name}>", "exec"), namespace)
    return namespace[name]


def compile_loader() -> Loader:
    """``load(state) -> VmcallRegisters``: the slots from a StateSave's registers."""
    lines = ["def load(state):", "    regs = _new(VmcallRegisters)"]
    lines += [f"    regs.{slot} = state.{register}" for slot, register in INTEL_X64_REGISTER_MAP]
    lines += [f"    regs.{slot} = 0" for slot in SLOTS[len(INTEL_X64_REGISTERS) :]]
    lines.append("    return regs")
    loader: Loader = _compile("\n".join(lines) + "\n", "load")
    return loader


def compile_storer(slots: Sequence[str]) -> Storer:
    """``store(regs, state, status)``: ``slots`` and the status into a StateSave."""
    lines = ["def store(regs, state, status):"]
    lines += [f"    state.{REGISTER_OF_SLOT[slot]} = regs.{slot} & MASK" for slot in slots]
    lines.append(f"    state.{REGISTER_OF_SLOT[STATUS_SLOT]} = status & MASK")
    storer: Storer = _compile("\n".join(lines) + "\n", "store")
    return storer
