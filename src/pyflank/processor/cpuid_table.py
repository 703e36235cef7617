"""CPUID answers for engines that cannot trap CPUID (KVM): sampled from the handler once.

The handler's ``handle_cpuid`` is asked for every (leaf, subleaf) the engine exposes,
on a scratch VMCS and StateSave, before the guest runs; the engine installs the answers
as its CPUID table.  The samples call ``handle_cpuid`` directly, never ``dispatch`` or
``handle_exit``: they are not exits the guest made, so a handler counting or narrating
exits does not see them.  A CPUID handler must then be a function of (leaf, subleaf) to
behave the same on such an engine.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from pyflank.exit_handler import ExitHandlerIntelX64, StateSave
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.cpu import CpuidRegisters
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import Vmcs, VmcsState

log = logging.getLogger("pyflank.processor")
_CPUID_LENGTH = 2  # 0F A2
_MASK32 = 0xFFFF_FFFF


def sample_cpuid(
    handler: ExitHandlerIntelX64, leaves: Iterable[tuple[int, int]], vcpuid: int = 0
) -> dict[tuple[int, int], CpuidRegisters | None]:
    """The handler's answer for each (leaf, subleaf); None where it raised or halted."""
    saved_vmcs, saved_state = handler.m_vmcs, handler.m_state_save
    vmcs, state = Vmcs(), StateSave(vcpuid)
    handler.set_vmcs(vmcs)
    handler.set_state_save(state)
    try:
        vmcs.load()
        vmcs.launch()
        vmcs.processor_write(f.VM_EXIT_REASON, ExitReason.CPUID)
        vmcs.processor_write(f.VM_EXIT_INSTRUCTION_LENGTH, _CPUID_LENGTH)
        return {
            (leaf, subleaf): _ask(handler, vmcs, state, leaf, subleaf) for leaf, subleaf in leaves
        }
    finally:
        handler.set_vmcs(saved_vmcs)
        handler.set_state_save(saved_state)


def _ask(
    handler: ExitHandlerIntelX64, vmcs: Vmcs, state: StateSave, leaf: int, subleaf: int
) -> CpuidRegisters | None:
    state.rax, state.rcx, state.rbx, state.rdx = leaf, subleaf, 0, 0
    try:
        handler.handle_cpuid()
    except Exception as exc:  # noqa: BLE001 - a handler bug costs one leaf, not the vCPU
        log.warning("CPUID handler raised %r at leaf %#x.%d: using the engine's value", exc,
                    leaf, subleaf)  # fmt: skip
        return None
    if vmcs.state is not VmcsState.LAUNCHED:
        log.warning("CPUID handler stopped the vCPU at leaf %#x.%d: using the engine's value",
                    leaf, subleaf)  # fmt: skip
        vmcs.state = VmcsState.LAUNCHED
        return None
    return (state.rax & _MASK32, state.rbx & _MASK32, state.rcx & _MASK32, state.rdx & _MASK32)
