"""The software CPU's hidden state, saved and put into another engine: what a snapshot holds
of a vCPU beyond its VMCS and StateSave.

That is unicorn's CPU context (every register, the MSRs it keeps, the SVM guest mode and
intercepts loaded at VMRUN, the x87/SSE state), the host region the VM-entry stub runs in
(its VMCB, host save area, permission maps), the stop gate's progress count and the end of
the time slice, the idle time the engine answers RDTSC from, the fields it changed itself
since the last exit (a WRMSR the bitmaps let through), the instruction count, and the CPU
model the handler sees.  Taken where the guest is between two instructions outside
unicorn's run loop (a parked vCPU, ``debug.parking``), it is all there is: the engine
restarts exactly there, as the vCPU it came from would have: the progress count is of
translation blocks, which QEMU forms from where they start, whatever it translated before.

A context is unicorn's own bytes, meaningful only to the same unicorn build: a snapshot
names the build and its context size, and ``restore_engine`` refuses another.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import unicorn
from unicorn import unicorn_const as uc_const
from unicorn import x86_const as x86
from unicorn.unicorn_py3 import unicorn as _binding_module

from pyflank.backends.emu import engine as eng
from pyflank.backends.emu import svm
from pyflank.backends.emu.stop_gate import NO_BUDGET
from pyflank.intel_x64 import fields as f
from pyflank.processor import EntryPlan, exit_policy

if TYPE_CHECKING:
    from pyflank.backends.emu.vcpu import EmuVcpu
    from pyflank.intel_x64.vmcs import Vmcs

UNICORN_VERSION: str = getattr(unicorn, "__version__", "unknown")
_binding: Any = _binding_module


class EngineMismatch(ValueError):
    """The saved engine state cannot go into this engine (another unicorn build)."""


@dataclass(frozen=True)
class EngineState:
    context: bytes
    """unicorn's CPU context, as ``uc_context_save`` left it."""
    host_region: bytes
    """The VM-entry stub's region (``svm.HOST_BASE``, ``svm.HOST_SIZE`` bytes)."""
    executed: int
    budget_end: int
    idle_ns: int
    in_guest_mode: bool
    noted: dict[int, int]
    instructions: int | None
    unicorn: str = UNICORN_VERSION


def save_engine(vcpu: EmuVcpu) -> EngineState:
    """``vcpu``'s engine now (its own thread, outside unicorn's run loop)."""
    engine = vcpu.engine
    gate = vcpu.stop_gate.state
    counter = vcpu.instructions
    return EngineState(
        context=bytes(engine.context_save()),
        host_region=engine.read_physical(svm.HOST_BASE, svm.HOST_SIZE),
        executed=gate.executed,
        budget_end=gate.budget_end,
        idle_ns=vcpu.hooks.idle_ns,
        in_guest_mode=vcpu.loader.in_guest_mode,
        noted=dict(vcpu.capture.noted),
        instructions=None if counter is None else counter.count(),
    )


def restore_engine(vcpu: EmuVcpu, state: EngineState, vmcs: Vmcs) -> None:
    """Put ``state`` into ``vcpu``'s (new) engine, whose guest's VMCS is ``vmcs``."""
    engine = vcpu.engine
    size = len(bytes(engine.context_save()))
    if state.unicorn != UNICORN_VERSION or size != len(state.context):
        raise EngineMismatch(
            f"the snapshot's engine state is from unicorn {state.unicorn} ({len(state.context)}"
            f"-byte context); this is unicorn {UNICORN_VERSION} ({size} bytes)"
        )
    context = _binding.UcContext.__new__(_binding.UcContext)
    context.__setstate__((state.context, size, uc_const.UC_ARCH_X86, uc_const.UC_MODE_64))
    engine.context_restore(context)
    engine.write_physical(svm.HOST_BASE, state.host_region)
    vcpu.stop_gate.state.executed = state.executed
    vcpu.hooks.set_policy(exit_policy(vmcs))
    vcpu.loader.fields = vmcs.view()
    vcpu.loader.in_guest_mode = state.in_guest_mode
    vcpu.capture.noted.update(state.noted)
    vcpu.capture.forget()
    if state.instructions is not None and vcpu.instructions is not None:
        vcpu.instructions.cell.value = state.instructions


def resume_plan(vcpu: EmuVcpu, state: EngineState, vmcs: Vmcs) -> EntryPlan:
    """The entry that goes on from a restored engine stopped between two instructions: it
    loads what the engine already holds (the registers, RIP, and RFLAGS, put into the VMCS
    here, where the entry reads it) and ends the time slice where the saved one ended."""
    engine = vcpu.engine
    vmcs.processor_write(f.GUEST_RFLAGS, engine.read(x86.UC_X86_REG_RFLAGS))
    regs = tuple(engine.read(reg) for reg in eng.SDM_GPR_IDS)
    plan = EntryPlan(regs, engine.read(x86.UC_X86_REG_RIP))
    plan.budget = None if state.budget_end == NO_BUDGET else state.budget_end - state.executed
    plan.idle_ns = state.idle_ns
    return plan
