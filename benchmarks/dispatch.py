"""Exits per second through ``dispatch()`` on the software VMCS (no backend)."""

from __future__ import annotations

import cProfile
import pstats
import time
from pathlib import Path

from pyflank.abi import VMCALL_MAGIC_NUMBER, VmcallOpcode
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.testing import ExitHarness


def _prepare(reason: int, length: int, **registers: int) -> ExitHandlerIntelX64:
    harness = ExitHarness()
    harness.state.update(registers)
    harness.vmcs.processor_write(f.VM_EXIT_REASON, reason)
    harness.vmcs.processor_write(f.VM_EXIT_INSTRUCTION_LENGTH, length)
    harness.handler.bench_registers = (harness.state.rax, harness.state.rdx)  # type: ignore[attr-defined]
    return harness.handler


def cpuid_handler() -> ExitHandlerIntelX64:
    return _prepare(ExitReason.CPUID, 2, rax=0)


def versions_handler() -> ExitHandlerIntelX64:
    return _prepare(ExitReason.VMCALL, 3, rax=VmcallOpcode.VERSIONS, rdx=VMCALL_MAGIC_NUMBER)


def rate(handler: ExitHandlerIntelX64, seconds: float = 1.0) -> float:
    """Dispatches per second; the registers the handler rewrites are reset each time."""
    batch, done = 2000, 0
    start = time.perf_counter()
    deadline = start + seconds
    while True:
        _repeat(handler, batch)
        done += batch
        now = time.perf_counter()
        if now >= deadline:
            return done / (now - start)


def _repeat(handler: ExitHandlerIntelX64, exits: int) -> None:
    """Dispatch the prepared exit again and again; rax/rdx are reset as the guest would."""
    state, dispatch = handler.m_state_save, handler.dispatch
    opcode, magic = handler.bench_registers  # type: ignore[attr-defined]
    for _ in range(exits):
        state.rax = opcode
        state.rdx = magic
        dispatch()


def profile(handler: ExitHandlerIntelX64, exits: int = 100_000, top: int = 8) -> list[str]:
    """The functions that take the most own time, as 'share  module:function' lines."""
    profiler = cProfile.Profile()
    profiler.runcall(_repeat, handler, exits)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())
    ranked = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return [
        f"{own / total:6.1%}  {Path(file).stem}:{func}"
        for (file, _line, func), (_cc, _nc, own, _cum, _callers) in ranked
    ]
