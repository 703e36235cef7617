"""The seed's exits an engine may carry out itself (the fused path), and as what.

An engine can complete an exit without calling ``dispatch()`` only where nobody could tell
the difference: the handler's class (and the instance) leaves the seed's code for that
exit as the seed wrote it -- the ``handle_*`` method, ``dispatch``, ``handle_exit`` and
``advance_rip`` -- and what that code computes is a pure function of state the engine may
cache while no Python runs on the vCPU.  An override always wins: the exit then goes
through ``dispatch()`` exactly as before.

CPUID is such an exit: ``handle_cpuid`` answers from the hypervisor leaves, else from the
CPU model's tables, and steps past the instruction.  The answer for (leaf, subleaf) is
the seed's own ``handle_cpuid`` run on a probe that holds the handler's leaves and CPU
and a scratch StateSave, so it is spelled once, in the seed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyflank.exit_handler.exit_handler_intel_x64 import MASK32, ExitHandlerIntelX64
from pyflank.exit_handler.state_save import StateSave
from pyflank.intel_x64.cpu import CpuidRegisters, ModelCpu
from pyflank.intel_x64.exit_reasons import ExitReason

__all__ = ["CpuidAnswer", "fused_cpuid"]

CpuidAnswer = Callable[[int, int], CpuidRegisters]
_CPUID = int(ExitReason.CPUID)
# The seed's members a CPUID exit runs through, from dispatch() to the resume.
_CPUID_PATH = ("dispatch", "handle_exit", "handle_cpuid", "advance_rip")
_SEED = ExitHandlerIntelX64


def _unchanged(handler: ExitHandlerIntelX64, names: tuple[str, ...]) -> bool:
    cls, own = type(handler), vars(handler)
    return all(getattr(cls, name) is getattr(_SEED, name) and name not in own for name in names)


class _CpuidProbe:
    """What the seed's ``handle_cpuid`` reads of a handler, with a StateSave of its own."""

    __slots__ = ("handler", "m_state_save")

    def __init__(self, handler: ExitHandlerIntelX64) -> None:
        self.handler = handler
        self.m_state_save = StateSave()

    @property
    def hypervisor_leaves(self) -> Any:
        return self.handler.hypervisor_leaves

    @property
    def m_cpu(self) -> Any:
        return self.handler.m_cpu

    def advance_rip(self) -> None:
        pass  # the engine steps past the instruction

    def answer(self, leaf: int, subleaf: int) -> CpuidRegisters:
        state = self.m_state_save
        state.rax, state.rcx = leaf & MASK32, subleaf & MASK32
        _SEED.handle_cpuid(self)  # type: ignore[arg-type]
        return state.rax, state.rbx, state.rcx, state.rdx


def fused_cpuid(handler: ExitHandlerIntelX64) -> CpuidAnswer | None:
    """The seed's CPUID answer of ``handler`` as a pure function of (leaf, subleaf), or
    None where its CPUID exit must go through ``dispatch()``: an override anywhere on the
    path, an exit table that sends CPUID elsewhere, or a physical CPU other than the
    model (whose answers may have effects: a KVM vCPU's, or a user's)."""
    if not _unchanged(handler, _CPUID_PATH):
        return None
    target = handler._exit_table.get(_CPUID)
    if getattr(target, "__func__", None) is not _SEED.handle_cpuid:
        return None
    if getattr(type(handler.m_cpu), "cpuid", None) is not ModelCpu.cpuid:
        return None
    return _CpuidProbe(handler).answer
