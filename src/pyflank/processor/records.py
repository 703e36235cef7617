"""What crosses the line between an engine and the processor: values, one exit or one entry.

An engine runs guest code until something happens and says what with an ``ExitRecord``
(the exit-information fields, the registers, the guest state that moved) or a ``Stop``.
The processor answers with an ``EntryPlan``: the registers to load, the guest-state fields
the handler changed, new exit controls, an event to inject -- or a ``Stop``.  Nothing else
passes between them, so an engine can be tested with synthetic plans and the processor
with synthetic records.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, ClassVar, Final, NamedTuple

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.qualifications import InterruptionType

if TYPE_CHECKING:
    from pyflank.processor.policy import ExitPolicy


class StopReason(Enum):
    """Why a vCPU stopped running."""

    HALTED = "halted"  # the exit handler halted the vCPU (halt(), an unhandled exit, ...)
    HANDLER_ERROR = "handler error"  # the exit handler raised: the message holds the report
    PROMOTED = "promoted"  # the handler left VMX operation (VMXOFF)
    GUEST_HLT = "guest hlt"  # HLT that does not exit: nothing would wake the vCPU
    SHUTDOWN = "shutdown"  # triple fault, and the handler did not resume the guest
    POWER_OFF = "power off"  # the guest powered the machine off (a platform device)
    RESET = "reset"  # the guest reset the machine (the keyboard controller's reset line)
    TIMEOUT = "timeout"
    STOPPED = "stopped"  # stopped from outside (another vCPU finished with an error, ...)
    BREAK = "break"  # an observer broke on an exit, before the handler saw it
    DIVERGED = "diverged"  # a replayed run left its recording (``observe.Replayer``)
    # KVM only: its instruction emulator met a guest instruction it cannot run (and that
    # stands for no VM exit); on hardware VMX the instruction would simply have executed.
    EMULATION_FAILURE = "emulation failure"
    ERROR = "error"  # the engine could not go on (unsupported control, emulator error)


class ExitInformation(NamedTuple):
    """The VM-exit information fields of one exit (SDM "VM-Exit Information Fields").

    Fields an exit does not define are 0, so a handler never reads a stale value.  A
    tuple, so that an engine can keep the ones it repeats (an unprefixed CPUID's) prebuilt.
    """

    reason: int
    qualification: int = 0
    instruction_length: int = 0
    instruction_information: int = 0
    guest_linear_address: int = 0
    guest_physical_address: int = 0
    interruption_information: int = 0
    interruption_error_code: int = 0
    idt_vectoring_information: int = 0
    idt_vectoring_error_code: int = 0


# The VMCS fields of ``ExitInformation``, in its order.
EXIT_INFORMATION_FIELDS: Final = (
    f.VM_EXIT_REASON,
    f.EXIT_QUALIFICATION,
    f.VM_EXIT_INSTRUCTION_LENGTH,
    f.VM_EXIT_INSTRUCTION_INFORMATION,
    f.GUEST_LINEAR_ADDRESS,
    f.GUEST_PHYSICAL_ADDRESS,
    f.VM_EXIT_INTERRUPTION_INFORMATION,
    f.VM_EXIT_INTERRUPTION_ERROR_CODE,
    f.IDT_VECTORING_INFORMATION_FIELD,
    f.IDT_VECTORING_ERROR_CODE,
)


class ExitRecord(NamedTuple):
    """One VM exit, as the engine saw it.

    ``regs``: the general registers in the SDM's numbering (RAX, RCX, RDX, RBX, RSP, RBP,
    RSI, RDI, R8-R15), then two words the processor does not read (an engine's register
    file unpacked as it lies: its RIP and flags).  ``rip``: where the exiting instruction
    is; ``rflags``: RFLAGS, exact.  ``guest``: other guest-state fields (VMCS encoding ->
    value) that changed since the engine's last record, or None when nothing did.
    ``detail``: why, for an exit the engine made up itself (a VM entry its hardware
    refused), written to the debug ring.  ``executed``: how much guest code has run, in
    the engine's deterministic units (guest time follows it, ``processor.time``), or -1
    for an engine that does not measure it.
    """

    info: ExitInformation
    regs: Sequence[int]
    rip: int
    rflags: int
    guest: Mapping[int, int] | None = None
    detail: str = ""
    executed: int = -1


@dataclass(frozen=True, slots=True)
class Stop:
    """The vCPU stops.  ``state``: the guest state then, when the engine stopped it between
    two exits (a timeout); None when the last exit's state stands."""

    reason: StopReason
    message: str = ""
    state: ExitRecord | None = None
    simple: ClassVar[bool] = False  # as ``EntryPlan.simple``: nothing to resume in place


@dataclass(frozen=True, slots=True)
class Pause:
    """The engine stopped between exits and the guest can go on: it ran the guest code
    the plan allowed (``EntryPlan.budget``), or it executed HLT with interrupts enabled
    (``halted``: activity state HLT, RIP past the HLT).  ``state``: the guest state then."""

    state: ExitRecord
    halted: bool = False


@dataclass(frozen=True, slots=True)
class Event:
    """An event to deliver at VM entry; ``return_rip`` is what its frame saves (past the
    instruction for software interrupts and traps, at it for faults)."""

    vector: int
    type: InterruptionType
    error_code: int | None
    return_rip: int


class EntryPlan:
    """What the next VM entry loads.

    ``regs``: the 16 general registers in the SDM's numbering and ``rip`` (the exit stub
    reloads them from StateSave).  ``changed``: guest-state fields whose new values the
    entry must load from ``fields`` (a read-only view of the VMCS; empty when none).
    ``policy``: the exit controls, when they changed.  ``event``: an event to inject.
    ``launch``: the first entry, which loads the whole guest state.  ``simple``: only
    registers to load, so an engine can resume in place.

    An engine that measures guest progress runs at most ``budget`` units of guest code
    (None: no limit) before it pauses, and keeps guest time as ``time.guest_ns(executed,
    idle_ns)`` (its RDTSC answers from it).

    An engine consumes a plan before it reports the next exit, so the processor reuses
    the plan of an exit that only resumes (a plan is a message, not a record to keep).
    """

    __slots__ = (
        "budget", "changed", "event", "fields", "idle_ns", "launch", "policy", "regs", "rip",
        "simple",
    )  # fmt: skip

    def __init__(
        self,
        regs: tuple[int, ...],
        rip: int,
        changed: frozenset[int] = frozenset(),
        fields: Mapping[int, int] | None = None,
        policy: ExitPolicy | None = None,
        event: Event | None = None,
        launch: bool = False,
    ) -> None:
        self.regs = regs
        self.rip = rip
        self.changed = changed
        self.fields = fields
        self.policy = policy
        self.event = event
        self.launch = launch
        self.simple = not changed and event is None and policy is None
        self.budget: int | None = None
        self.idle_ns = 0

    def __repr__(self) -> str:
        parts = [f"rip={self.rip:#x}"]
        if self.changed:
            parts.append(f"{len(self.changed)} changed fields")
        if self.policy is not None:
            parts.append("new controls")
        if self.event is not None:
            parts.append(f"event={self.event}")
        if self.launch:
            parts.append("launch")
        return f"EntryPlan({', '.join(parts)})"
