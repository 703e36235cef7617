"""Which VMX controls the software CPU implements, and what they make exit.

``exit_policy`` reads the control fields once per change and answers the questions the
exit path asks ("does this OUT exit?") from plain attributes.  A control outside
``SUPPORTED`` is a ``ValueError`` naming it: a VMCS that asks for an exit the backend
cannot produce must not run as if the control were off.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag

from pyflank.backends.control_policy import (
    PIN_BASED_SUPPORTED,
    VM_ENTRY_SUPPORTED,
    VM_EXIT_SUPPORTED,
    unsupported_controls,
)
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import (
    PRIMARY_PROCESSOR_BASED_CONTROLS_DEFAULT1,
    PinBasedControls,
    PrimaryProcessorBasedControls,
    SecondaryProcessorBasedControls,
    VmEntryControls,
    VmExitControls,
)
from pyflank.intel_x64.vmcs import Vmcs

Pin = PinBasedControls
Proc = PrimaryProcessorBasedControls
Proc2 = SecondaryProcessorBasedControls
Exit = VmExitControls
Entry = VmEntryControls

# Pin-based, exit and entry rows: see control_policy.
SUPPORTED: dict[int, tuple[type[IntFlag], int]] = {
    f.PIN_BASED_VM_EXECUTION_CONTROLS: (Pin, PIN_BASED_SUPPORTED),
    f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: (
        Proc,
        PRIMARY_PROCESSOR_BASED_CONTROLS_DEFAULT1
        | Proc.USE_TSC_OFFSETTING
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
        | Proc.ACTIVATE_SECONDARY_CONTROLS,
    ),
    f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: (
        Proc2,
        Proc2.ENABLE_RDTSCP | Proc2.ENABLE_VPID | Proc2.WBINVD_EXITING | Proc2.ENABLE_VM_FUNCTIONS,
    ),
    f.VM_EXIT_CONTROLS: (Exit, VM_EXIT_SUPPORTED),
    f.VM_ENTRY_CONTROLS: (Entry, VM_ENTRY_SUPPORTED | Entry.LOAD_IA32_PERF_GLOBAL_CTRL),
}
CONTROL_FIELDS = frozenset(SUPPORTED) | {
    f.EXCEPTION_BITMAP,
    f.PAGE_FAULT_ERROR_CODE_MASK,
    f.PAGE_FAULT_ERROR_CODE_MATCH,
    f.ADDRESS_OF_IO_BITMAP_A,
    f.ADDRESS_OF_IO_BITMAP_B,
    f.ADDRESS_OF_MSR_BITMAPS,
    f.TSC_OFFSET,
    f.CR3_TARGET_COUNT,
    f.CR0_GUEST_HOST_MASK,
    f.CR4_GUEST_HOST_MASK,
    f.VM_FUNCTION_CONTROLS,
}
# Controls whose change needs the SVM intercepts reloaded (a full VM entry).
INTERCEPT_FIELDS = frozenset({f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS, f.TSC_OFFSET})


def unsupported(vmcs: Vmcs) -> list[str]:
    """Why the software CPU cannot run this VMCS's controls; empty if it can."""
    problems = unsupported_controls(vmcs, SUPPORTED)
    if vmcs.read(f.CR3_TARGET_COUNT) > 4:
        problems.append("CR3_TARGET_COUNT above 4")
    if vmcs.read(f.VM_FUNCTION_CONTROLS):
        problems.append("VM_FUNCTION_CONTROLS: no VM function is implemented (EPTP switching)")
    return problems


@dataclass(frozen=True, slots=True)
class ExitPolicy:
    """What the current controls make exit, in the form the exit path tests."""

    hlt: bool
    rdtsc: bool
    rdtscp_enabled: bool
    wbinvd: bool
    vmfunc_enabled: bool
    io_unconditional: bool
    io_bitmaps: tuple[int, int] | None
    msr_bitmap: int | None
    exception_bitmap: int
    pfec_mask: int
    pfec_match: int
    cr3_load: bool
    cr3_store: bool
    cr8_load: bool
    cr8_store: bool
    cr3_targets: tuple[int, ...]
    mov_dr: bool
    tsc_offset: int

    @property
    def io_exits(self) -> bool:
        return self.io_unconditional or self.io_bitmaps is not None


def exit_policy(vmcs: Vmcs) -> ExitPolicy:
    """Validate the controls (``ValueError`` naming what is unsupported) and summarise them."""
    problems = unsupported(vmcs)
    if problems:
        raise ValueError("unsupported VMX controls on the software CPU: " + "; ".join(problems))
    read = vmcs.read
    proc = read(f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)
    proc2 = read(f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)
    if not proc & Proc.ACTIVATE_SECONDARY_CONTROLS:
        proc2 = 0
    io_bitmaps = None
    if proc & Proc.USE_IO_BITMAPS:
        io_bitmaps = (read(f.ADDRESS_OF_IO_BITMAP_A), read(f.ADDRESS_OF_IO_BITMAP_B))
    return ExitPolicy(
        hlt=bool(proc & Proc.HLT_EXITING),
        rdtsc=bool(proc & Proc.RDTSC_EXITING),
        rdtscp_enabled=bool(proc2 & Proc2.ENABLE_RDTSCP),
        wbinvd=bool(proc2 & Proc2.WBINVD_EXITING),
        vmfunc_enabled=bool(proc2 & Proc2.ENABLE_VM_FUNCTIONS),
        # SDM: with "use I/O bitmaps" on, "unconditional I/O exiting" is ignored.
        io_unconditional=bool(proc & Proc.UNCONDITIONAL_IO_EXITING) and io_bitmaps is None,
        io_bitmaps=io_bitmaps,
        msr_bitmap=read(f.ADDRESS_OF_MSR_BITMAPS) if proc & Proc.USE_MSR_BITMAPS else None,
        exception_bitmap=read(f.EXCEPTION_BITMAP),
        pfec_mask=read(f.PAGE_FAULT_ERROR_CODE_MASK),
        pfec_match=read(f.PAGE_FAULT_ERROR_CODE_MATCH),
        cr3_load=bool(proc & Proc.CR3_LOAD_EXITING),
        cr3_store=bool(proc & Proc.CR3_STORE_EXITING),
        cr8_load=bool(proc & Proc.CR8_LOAD_EXITING),
        cr8_store=bool(proc & Proc.CR8_STORE_EXITING),
        cr3_targets=tuple(
            read(f.CR3_TARGET_VALUE_0 + 2 * i) for i in range(read(f.CR3_TARGET_COUNT))
        ),
        mov_dr=bool(proc & Proc.MOV_DR_EXITING),
        tsc_offset=read(f.TSC_OFFSET) if proc & Proc.USE_TSC_OFFSETTING else 0,
    )
