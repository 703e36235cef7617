"""Which VMX controls the KVM backend implements, and the gaps it documents.

KVM sends user space only some exits (port I/O, HLT, MMIO, filtered MSR accesses,
shutdown, emulation failures).  A control asking for an exit KVM completes in the
kernel cannot be honoured, so ``unsupported`` names it: a VMCS that asks for an exit
the backend cannot produce must not run as if the control were off.  ``GAPS`` says,
for people and for tests that skip on KVM, what differs from the software CPU and why;
``pyflank.backends.kvm``'s docstring lists the same keys.
"""

from __future__ import annotations

from enum import IntFlag
from typing import Final

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

GAPS: Final[dict[str, str]] = {
    "cpuid": "CPUID never exits: the handler's answers are sampled into KVM_SET_CPUID2 at setup",
    "invd": "INVD and WBINVD complete inside KVM (no INVD exit, no WBINVD exiting)",
    "rdtsc": "RDTSC/RDTSCP complete inside KVM (no RDTSC exiting, no TSC offsetting)",
    "rdtscp": "RDTSCP follows KVM's CPUID, not 'enable RDTSCP'",
    "exceptions": "guest exceptions are delivered inside KVM (no exception bitmap or exits)",
    "instruction_exits": "INVLPG, PAUSE, RDPMC, MOV CR3/CR8, MOV DR, MONITOR/MWAIT cannot exit",
    "msr_bitmaps": "every RDMSR/WRMSR exits: KVM's MSR filter is fixed at VM creation",
    "physical_cpu": "the handler's physical CPU is the KVM vCPU, not the software CPU's model",
    "vmx_instructions": "VMX instructions exit only where KVM's emulator gives up on them",
    "vm_functions": "no VM functions ('enable VM functions')",
    "vmcall": "VMCALL/VMMCALL are KVM hypercalls that may never return: guests use the doorbell",
    "emulator": "KVM's ring-0 instruction emulator (kvm_pvm) lacks some instructions (INT n, ...)",
    "io_strings": "string I/O exits come mid-instruction from KVM's emulator, no linear address",
    "linux": "Linux needs guest time and timer interrupts, which the KVM engine does not "
    "drive (no in-kernel irqchip and PIT); on kvm_pvm the kernel stops first at the "
    "emulator's missing LOCK CMPXCHG16B",
    "instruction_count": "KVM does not count guest instructions: exit traces hold no count",
    "monitor_trap_flag": "no monitor trap flag: KVM cannot stop the guest after one instruction",
    "ept_execute": "EPT execute permissions: a memory slot cannot forbid instruction fetches "
    "(execute hooks, execute-only pages)",
    "ept_paging_structures": "KVM walks the guest's page tables itself: no EPT violation is "
    "made for a paging-structure access",
    "ept_write_side_effects": "a write to a read-only memory slot exits after KVM's emulator "
    "ran the instruction: registers it changed (PUSH, STOS) are already changed, a LOCK "
    "prefix is not seen (its start is decoded back from RIP), no linear address is given",
    "unrestricted_guest": "the KVM engine runs 64-bit guests with the CR0 the VMCS holds: no "
    "guest entered outside long mode (PVH), no CR0 guest/host mask",
}

_CR3_EXITING = Proc.CR3_LOAD_EXITING | Proc.CR3_STORE_EXITING
# Pin-based, exit and entry rows: see control_policy.
SUPPORTED: Final[dict[int, tuple[type[IntFlag], int]]] = {
    f.PIN_BASED_VM_EXECUTION_CONTROLS: (Pin, PIN_BASED_SUPPORTED),
    f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: (
        Proc,
        # CR3 load/store exiting are default1 bits, but the TRUE controls let them be 0.
        PRIMARY_PROCESSOR_BASED_CONTROLS_DEFAULT1 & ~_CR3_EXITING
        | Proc.HLT_EXITING
        | Proc.UNCONDITIONAL_IO_EXITING
        | Proc.USE_IO_BITMAPS
        | Proc.ACTIVATE_SECONDARY_CONTROLS,
    ),
    f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS: (
        Proc2,
        Proc2.ENABLE_VPID | Proc2.ENABLE_EPT,
    ),
    f.VM_EXIT_CONTROLS: (Exit, VM_EXIT_SUPPORTED),
    f.VM_ENTRY_CONTROLS: (Entry, VM_ENTRY_SUPPORTED),
}
# Why a control outside SUPPORTED cannot be offered, where a gap explains it.
_WHY: Final[dict[int, str]] = {
    Proc.RDTSC_EXITING: "rdtsc",
    Proc.USE_TSC_OFFSETTING: "rdtsc",
    Proc.USE_MSR_BITMAPS: "msr_bitmaps",
    Proc.INVLPG_EXITING: "instruction_exits",
    Proc.PAUSE_EXITING: "instruction_exits",
    Proc.RDPMC_EXITING: "instruction_exits",
    Proc.CR3_LOAD_EXITING: "instruction_exits",
    Proc.CR3_STORE_EXITING: "instruction_exits",
    Proc.CR8_LOAD_EXITING: "instruction_exits",
    Proc.CR8_STORE_EXITING: "instruction_exits",
    Proc.MOV_DR_EXITING: "instruction_exits",
    Proc.MWAIT_EXITING: "instruction_exits",
    Proc.MONITOR_EXITING: "instruction_exits",
    Proc.MONITOR_TRAP_FLAG: "monitor_trap_flag",
}
_WHY2: Final[dict[int, str]] = {
    Proc2.WBINVD_EXITING: "invd",
    Proc2.ENABLE_RDTSCP: "rdtscp",
    Proc2.ENABLE_VM_FUNCTIONS: "vm_functions",
}


def unsupported(vmcs: Vmcs) -> list[str]:
    """Why the KVM backend cannot run this VMCS's controls; empty if it can."""
    why = {
        Proc: {bit: GAPS[gap] for bit, gap in _WHY.items()},
        Proc2: {bit: GAPS[gap] for bit, gap in _WHY2.items()},
    }
    problems = unsupported_controls(vmcs, SUPPORTED, why)
    if vmcs.read(f.EXCEPTION_BITMAP):
        problems.append(f"EXCEPTION_BITMAP: {GAPS['exceptions']}")
    if vmcs.read(f.VM_FUNCTION_CONTROLS):
        problems.append("VM_FUNCTION_CONTROLS: no VM function is implemented")
    problems.extend(ept_pointer_problems(vmcs))
    return problems
