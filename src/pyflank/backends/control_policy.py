"""Checking a VMCS's controls against what a backend implements (shared by emu and KVM).

Each backend states its implemented controls as a table, field -> (flag type, allowed
bits); ``unsupported_controls`` names every bit outside it, with the backend's reason
where it has one, plus the requirements both backends share.  A VMCS that asks for an
exit the backend cannot produce must never run as if the control were off.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntFlag

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import (
    PIN_BASED_CONTROLS_DEFAULT1,
    VM_ENTRY_CONTROLS_DEFAULT1,
    VM_EXIT_CONTROLS_DEFAULT1,
)
from pyflank.intel_x64.controls import PinBasedControls as Pin
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.controls import VmEntryControls as Entry
from pyflank.intel_x64.controls import VmExitControls as Exit
from pyflank.intel_x64.vmcs import Vmcs

SupportedControls = Mapping[int, tuple[type[IntFlag], int]]

# Rows both backends implement.  Interrupt/NMI exiting never fire (the platform has no
# interrupt sources); the host-side exit controls describe the host, which is Python.
PIN_BASED_SUPPORTED = (
    PIN_BASED_CONTROLS_DEFAULT1
    | Pin.EXTERNAL_INTERRUPT_EXITING
    | Pin.NMI_EXITING
    | Pin.VIRTUAL_NMIS
)
VM_EXIT_SUPPORTED = (
    VM_EXIT_CONTROLS_DEFAULT1
    | Exit.SAVE_DEBUG_CONTROLS
    | Exit.HOST_ADDRESS_SPACE_SIZE
    | Exit.LOAD_IA32_PERF_GLOBAL_CTRL
    | Exit.ACKNOWLEDGE_INTERRUPT_ON_EXIT
    | Exit.SAVE_IA32_PAT
    | Exit.LOAD_IA32_PAT
    | Exit.SAVE_IA32_EFER
    | Exit.LOAD_IA32_EFER
)
VM_ENTRY_SUPPORTED = (
    VM_ENTRY_CONTROLS_DEFAULT1
    | Entry.LOAD_DEBUG_CONTROLS
    | Entry.IA_32E_MODE_GUEST
    | Entry.LOAD_IA32_PAT
    | Entry.LOAD_IA32_EFER
)


def flag_names(flag_type: type[IntFlag], bits: int, why: Mapping[int, str] = {}) -> str:
    names = []
    for bit in range(64):
        mask = 1 << bit
        if not bits & mask:
            continue
        try:
            name = flag_type(mask).name or f"bit {bit}"
        except ValueError:
            name = f"reserved bit {bit}"
        names.append(f"{name} ({why[mask]})" if mask in why else name)
    return ", ".join(names)


def unsupported_controls(
    vmcs: Vmcs,
    supported: SupportedControls,
    why: Mapping[type[IntFlag], Mapping[int, str]] = {},
) -> list[str]:
    """Every control bit outside ``supported``, and the shared requirements."""
    problems = []
    proc = vmcs.read(f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)
    for encoding, (flag_type, allowed) in supported.items():
        secondary = encoding == f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        if secondary and not proc & Proc.ACTIVATE_SECONDARY_CONTROLS:
            continue
        extra = vmcs.read(encoding) & ~allowed
        if extra:
            names = flag_names(flag_type, extra, why.get(flag_type, {}))
            problems.append(f"{flag_type.__name__}: {names}")
    if not vmcs.read(f.VM_ENTRY_CONTROLS) & Entry.IA_32E_MODE_GUEST:
        problems.append("VmEntryControls: IA_32E_MODE_GUEST must be 1 (64-bit guests only)")
    for mask in (f.CR0_GUEST_HOST_MASK, f.CR4_GUEST_HOST_MASK):
        if vmcs.read(mask):
            problems.append(f"CR guest/host masks ({mask:#06x}): read shadows are not supported")
    return problems
