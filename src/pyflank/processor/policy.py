"""The exit controls: what an engine implements, and what the current ones make exit.

Each engine states its implemented controls as a table, field -> (flag type, allowed
bits); ``unsupported_controls`` names every bit outside it, with the engine's reason
where it has one, plus the requirements every engine shares.  A VMCS that asks for an
exit the engine cannot produce must never run as if the control were off.

``exit_policy`` reads the control fields once per change and answers the questions an
exit path asks ("does this OUT exit?") from plain attributes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntFlag
from typing import TYPE_CHECKING, Final

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import (
    PIN_BASED_CONTROLS_DEFAULT1,
    VM_ENTRY_CONTROLS_DEFAULT1,
    VM_EXIT_CONTROLS_DEFAULT1,
)
from pyflank.intel_x64.controls import PinBasedControls as Pin
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.controls import SecondaryProcessorBasedControls as Proc2
from pyflank.intel_x64.controls import VmEntryControls as Entry
from pyflank.intel_x64.controls import VmExitControls as Exit
from pyflank.intel_x64.fields import ALL_FIELDS, FieldType
from pyflank.intel_x64.vmcs import Vmcs

if TYPE_CHECKING:
    from pyflank.processor.ept import EptView

SupportedControls = Mapping[int, tuple[type[IntFlag], int]]
_EPTP_ACCESSED_DIRTY = 1 << 6

# Every control field: a handler writing one may change what exits.
CONTROL_ENCODINGS: Final = frozenset(
    e.encoding for e in ALL_FIELDS if e.type is FieldType.CONTROL and not e.is_high
)

# Rows every engine implements.  Interrupt/NMI exiting never fire (the platform has no
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
    *,
    outside_long_mode: bool = False,
    cr0_mask: bool = False,
) -> list[str]:
    """Every control bit outside ``supported``, and the shared requirements (an engine
    that runs guests outside long mode, or honours a CR0 guest/host mask, says so)."""
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
    if not outside_long_mode and not vmcs.read(f.VM_ENTRY_CONTROLS) & Entry.IA_32E_MODE_GUEST:
        problems.append("VmEntryControls: IA_32E_MODE_GUEST must be 1 (64-bit guests only)")
    masks = (f.CR4_GUEST_HOST_MASK,) if cr0_mask else (f.CR0_GUEST_HOST_MASK, f.CR4_GUEST_HOST_MASK)
    for mask in masks:
        if vmcs.read(mask):
            problems.append(f"CR guest/host masks ({mask:#06x}): read shadows are not supported")
    return problems


def ept_pointer_problems(vmcs: Vmcs) -> list[str]:
    """What no engine implements of an EPTP the VMCS enables: accessed and dirty flags."""
    proc = vmcs.read(f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)
    proc2 = vmcs.read(f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)
    enabled = proc & Proc.ACTIVATE_SECONDARY_CONTROLS and proc2 & Proc2.ENABLE_EPT
    if enabled and vmcs.read(f.EPT_POINTER) & _EPTP_ACCESSED_DIRTY:
        return ["EPT_POINTER bit 6: accessed and dirty flags for EPT are not implemented"]
    return []


@dataclass(frozen=True, slots=True)
class ExitPolicy:
    """What the current controls make exit, in the form an exit path tests."""

    external_interrupts: bool  # "external-interrupt exiting"
    acknowledge_on_exit: bool  # "acknowledge interrupt on exit"
    interrupt_window: bool
    preemption_timer: bool
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
    cr3_targets: tuple[int, ...]
    cr0_mask: int  # CR0 bits the VMM owns: the guest reads the shadow, a change exits
    cr0_shadow: int
    mov_dr: bool
    tsc_offset: int  # added to the TSC the guest reads ("use TSC offsetting")
    monitor_trap: bool = False  # "monitor trap flag": an exit after each instruction
    eptp: int | None = None  # the EPT pointer with "enable EPT" on
    unrestricted_guest: bool = False  # CR0.PE and CR0.PG may be 0
    ept: EptView | None = None  # the EPT as walked at the entry (the processor fills it)

    @property
    def io_exits(self) -> bool:
        return self.io_unconditional or self.io_bitmaps is not None


# The control bits exit_policy tests, as plain ints (IntFlag arithmetic costs a
# microsecond per operator, and a handler toggling the monitor trap flag pays it twice
# per instruction).
_EXIT_ACKNOWLEDGE_INTERRUPT_ON_EXIT = int(Exit.ACKNOWLEDGE_INTERRUPT_ON_EXIT)
_PIN_ACTIVATE_VMX_PREEMPTION_TIMER = int(Pin.ACTIVATE_VMX_PREEMPTION_TIMER)
_PIN_EXTERNAL_INTERRUPT_EXITING = int(Pin.EXTERNAL_INTERRUPT_EXITING)
_P_ACTIVATE_SECONDARY_CONTROLS = int(Proc.ACTIVATE_SECONDARY_CONTROLS)
_P_HLT_EXITING = int(Proc.HLT_EXITING)
_P_INTERRUPT_WINDOW_EXITING = int(Proc.INTERRUPT_WINDOW_EXITING)
_P_MONITOR_TRAP_FLAG = int(Proc.MONITOR_TRAP_FLAG)
_P_MOV_DR_EXITING = int(Proc.MOV_DR_EXITING)
_P_RDTSC_EXITING = int(Proc.RDTSC_EXITING)
_P_UNCONDITIONAL_IO_EXITING = int(Proc.UNCONDITIONAL_IO_EXITING)
_P_USE_IO_BITMAPS = int(Proc.USE_IO_BITMAPS)
_P_USE_MSR_BITMAPS = int(Proc.USE_MSR_BITMAPS)
_P_USE_TSC_OFFSETTING = int(Proc.USE_TSC_OFFSETTING)
_P2_ENABLE_EPT = int(Proc2.ENABLE_EPT)
_P2_ENABLE_RDTSCP = int(Proc2.ENABLE_RDTSCP)
_P2_UNRESTRICTED_GUEST = int(Proc2.UNRESTRICTED_GUEST)
_P2_ENABLE_VM_FUNCTIONS = int(Proc2.ENABLE_VM_FUNCTIONS)
_P2_WBINVD_EXITING = int(Proc2.WBINVD_EXITING)


def exit_policy(vmcs: Vmcs) -> ExitPolicy:
    """Summarise the controls of ``vmcs`` (checked against the engine elsewhere)."""
    read = vmcs.read
    proc = read(f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)
    proc2 = read(f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)
    if not proc & _P_ACTIVATE_SECONDARY_CONTROLS:
        proc2 = 0
    io_bitmaps = None
    if proc & _P_USE_IO_BITMAPS:
        io_bitmaps = (read(f.ADDRESS_OF_IO_BITMAP_A), read(f.ADDRESS_OF_IO_BITMAP_B))
    pin = read(f.PIN_BASED_VM_EXECUTION_CONTROLS)
    return ExitPolicy(
        external_interrupts=bool(pin & _PIN_EXTERNAL_INTERRUPT_EXITING),
        acknowledge_on_exit=bool(read(f.VM_EXIT_CONTROLS) & _EXIT_ACKNOWLEDGE_INTERRUPT_ON_EXIT),
        interrupt_window=bool(proc & _P_INTERRUPT_WINDOW_EXITING),
        preemption_timer=bool(pin & _PIN_ACTIVATE_VMX_PREEMPTION_TIMER),
        hlt=bool(proc & _P_HLT_EXITING),
        rdtsc=bool(proc & _P_RDTSC_EXITING),
        rdtscp_enabled=bool(proc2 & _P2_ENABLE_RDTSCP),
        wbinvd=bool(proc2 & _P2_WBINVD_EXITING),
        vmfunc_enabled=bool(proc2 & _P2_ENABLE_VM_FUNCTIONS),
        # SDM: with "use I/O bitmaps" on, "unconditional I/O exiting" is ignored.
        io_unconditional=bool(proc & _P_UNCONDITIONAL_IO_EXITING) and io_bitmaps is None,
        io_bitmaps=io_bitmaps,
        msr_bitmap=read(f.ADDRESS_OF_MSR_BITMAPS) if proc & _P_USE_MSR_BITMAPS else None,
        exception_bitmap=read(f.EXCEPTION_BITMAP),
        pfec_mask=read(f.PAGE_FAULT_ERROR_CODE_MASK),
        pfec_match=read(f.PAGE_FAULT_ERROR_CODE_MATCH),
        cr3_targets=tuple(
            read(f.CR3_TARGET_VALUE_0 + 2 * i) for i in range(min(read(f.CR3_TARGET_COUNT), 4))
        ),
        cr0_mask=read(f.CR0_GUEST_HOST_MASK),
        cr0_shadow=read(f.CR0_READ_SHADOW),
        mov_dr=bool(proc & _P_MOV_DR_EXITING),
        tsc_offset=read(f.TSC_OFFSET) if proc & _P_USE_TSC_OFFSETTING else 0,
        monitor_trap=bool(proc & _P_MONITOR_TRAP_FLAG),
        eptp=read(f.EPT_POINTER) if proc2 & _P2_ENABLE_EPT else None,
        unrestricted_guest=bool(proc2 & _P2_UNRESTRICTED_GUEST),
    )
