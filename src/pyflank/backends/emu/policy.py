"""Which VMX controls the software CPU implements.

A control outside ``SUPPORTED`` is refused, named: a VMCS that asks for an exit the
engine cannot produce must not run as if the control were off.

Interrupt-window exits are the processor's (``processor.interrupts``): at a VM entry that
finds the guest interruptible, or, when the guest enables interrupts while it runs, at
its next exit or time-slice end (at most ``MAX_SLICE_NS`` of guest time later).
"""

from __future__ import annotations

from enum import IntFlag

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PRIMARY_PROCESSOR_BASED_CONTROLS_DEFAULT1
from pyflank.intel_x64.controls import PinBasedControls as Pin
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.controls import SecondaryProcessorBasedControls as Proc2
from pyflank.intel_x64.controls import VmEntryControls as Entry
from pyflank.intel_x64.controls import VmExitControls as Exit
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.processor.policy import (
    PIN_BASED_SUPPORTED,
    VM_ENTRY_SUPPORTED,
    VM_EXIT_SUPPORTED,
    ept_pointer_problems,
    unsupported_controls,
)

# Pin-based, exit and entry rows: see control_policy.
SUPPORTED: dict[int, tuple[type[IntFlag], int]] = {
    f.PIN_BASED_VM_EXECUTION_CONTROLS: (Pin, PIN_BASED_SUPPORTED),
    f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: (
        Proc,
        PRIMARY_PROCESSOR_BASED_CONTROLS_DEFAULT1
        | Proc.USE_TSC_OFFSETTING
        | Proc.INTERRUPT_WINDOW_EXITING
        | Proc.HLT_EXITING
        | Proc.INVLPG_EXITING
        | Proc.RDPMC_EXITING
        | Proc.RDTSC_EXITING
        | Proc.CR3_LOAD_EXITING
        | Proc.CR3_STORE_EXITING
        | Proc.CR8_LOAD_EXITING
        | Proc.CR8_STORE_EXITING
        | Proc.MOV_DR_EXITING
        | Proc.UNCONDITIONAL_IO_EXITING
        | Proc.USE_IO_BITMAPS
        | Proc.USE_MSR_BITMAPS
        | Proc.PAUSE_EXITING
        | Proc.MONITOR_TRAP_FLAG
        | Proc.ACTIVATE_SECONDARY_CONTROLS,
    ),
    f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: (
        Proc2,
        Proc2.ENABLE_EPT
        | Proc2.UNRESTRICTED_GUEST
        | Proc2.ENABLE_RDTSCP
        | Proc2.ENABLE_VPID
        | Proc2.WBINVD_EXITING
        | Proc2.ENABLE_VM_FUNCTIONS,
    ),
    f.VM_EXIT_CONTROLS: (Exit, VM_EXIT_SUPPORTED),
    f.VM_ENTRY_CONTROLS: (Entry, VM_ENTRY_SUPPORTED | Entry.LOAD_IA32_PERF_GLOBAL_CTRL),
}


def unsupported(vmcs: Vmcs) -> list[str]:
    """Why the software CPU cannot run this VMCS's controls; empty if it can."""
    problems = unsupported_controls(vmcs, SUPPORTED, outside_long_mode=True, cr0_mask=True)
    if vmcs.read(f.CR3_TARGET_COUNT) > 4:
        problems.append("CR3_TARGET_COUNT above 4")
    if vmcs.read(f.VM_FUNCTION_CONTROLS):
        problems.append("VM_FUNCTION_CONTROLS: no VM function is implemented (EPTP switching)")
    problems.extend(ept_pointer_problems(vmcs))
    return problems
