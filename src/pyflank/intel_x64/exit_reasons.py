"""VMX basic exit reasons (Intel SDM Vol. 3, Appendix C) and the exit-reason field.

The exit-reason VMCS field (SDM "Basic VM-Exit Information") holds the basic
exit reason in bits 15:0 and a few flags above it; ``ExitReasonField`` splits
and rebuilds it.  ``description`` names a reason the way Bareflank's
``basic_exit_reason::description()`` did, so dumps read the same.

Reasons 78 and up come from Intel's instruction-set-extensions reference
(MSR-list, user-MSR and immediate-form MSR instructions) and are newer than
some SDM editions.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Final


class ExitReason(IntEnum):
    """Basic exit reasons, SDM Table C-1; 35, 38, 42, 71, 82 and 83 name no reason."""

    EXCEPTION_OR_NMI = 0
    EXTERNAL_INTERRUPT = 1
    TRIPLE_FAULT = 2
    INIT_SIGNAL = 3
    SIPI = 4
    IO_SMI = 5
    OTHER_SMI = 6
    INTERRUPT_WINDOW = 7
    NMI_WINDOW = 8
    TASK_SWITCH = 9
    CPUID = 10
    GETSEC = 11
    HLT = 12
    INVD = 13
    INVLPG = 14
    RDPMC = 15
    RDTSC = 16
    RSM = 17
    VMCALL = 18
    VMCLEAR = 19
    VMLAUNCH = 20
    VMPTRLD = 21
    VMPTRST = 22
    VMREAD = 23
    VMRESUME = 24
    VMWRITE = 25
    VMXOFF = 26
    VMXON = 27
    CONTROL_REGISTER_ACCESS = 28
    MOV_DR = 29
    IO_INSTRUCTION = 30
    RDMSR = 31
    WRMSR = 32
    VM_ENTRY_FAILURE_INVALID_GUEST_STATE = 33
    VM_ENTRY_FAILURE_MSR_LOADING = 34
    MWAIT = 36
    MONITOR_TRAP_FLAG = 37
    MONITOR = 39
    PAUSE = 40
    VM_ENTRY_FAILURE_MACHINE_CHECK_EVENT = 41
    TPR_BELOW_THRESHOLD = 43
    APIC_ACCESS = 44
    VIRTUALIZED_EOI = 45
    ACCESS_TO_GDTR_OR_IDTR = 46
    ACCESS_TO_LDTR_OR_TR = 47
    EPT_VIOLATION = 48
    EPT_MISCONFIGURATION = 49
    INVEPT = 50
    RDTSCP = 51
    VMX_PREEMPTION_TIMER_EXPIRED = 52
    INVVPID = 53
    WBINVD = 54  # also WBNOINVD
    XSETBV = 55
    APIC_WRITE = 56
    RDRAND = 57
    INVPCID = 58
    VMFUNC = 59
    ENCLS = 60
    RDSEED = 61
    PAGE_MODIFICATION_LOG_FULL = 62
    XSAVES = 63
    XRSTORS = 64
    PCONFIG = 65
    SPP_RELATED_EVENT = 66
    UMWAIT = 67
    TPAUSE = 68
    LOADIWKEY = 69
    ENCLV = 70
    ENQCMD_PASID_TRANSLATION_FAILURE = 72
    ENQCMDS_PASID_TRANSLATION_FAILURE = 73
    BUS_LOCK = 74
    INSTRUCTION_TIMEOUT = 75  # called "notify VM exit" before the SDM renamed it
    SEAMCALL = 76
    TDCALL = 77
    RDMSRLIST = 78
    WRMSRLIST = 79
    URDMSR = 80
    UWRMSR = 81
    RDMSR_IMMEDIATE = 84
    WRMSRNS_IMMEDIATE = 85


BASIC_EXIT_REASON_MASK: Final[int] = 0xFFFF

# Flag bits of the exit-reason field above the basic reason.
SHADOW_STACK_PREMATURELY_BUSY: Final[int] = 1 << 25
BUS_LOCK_ASSERTED: Final[int] = 1 << 26
ENCLAVE_MODE: Final[int] = 1 << 27
PENDING_MTF: Final[int] = 1 << 28
FROM_VMX_ROOT: Final[int] = 1 << 29
VM_ENTRY_FAILURE: Final[int] = 1 << 31

DEFINED_BITS: Final[int] = (
    BASIC_EXIT_REASON_MASK
    | SHADOW_STACK_PREMATURELY_BUSY
    | BUS_LOCK_ASSERTED
    | ENCLAVE_MODE
    | PENDING_MTF
    | FROM_VMX_ROOT
    | VM_ENTRY_FAILURE
)

# Bareflank's strings for the reasons it knew (0..64); the newer ones follow the
# same lower-snake rendering of the SDM's wording.
_DESCRIPTIONS: Final[dict[int, str]] = {
    ExitReason.EXCEPTION_OR_NMI: "exception_or_non_maskable_interrupt",
    ExitReason.EXTERNAL_INTERRUPT: "external_interrupt",
    ExitReason.TRIPLE_FAULT: "triple_fault",
    ExitReason.INIT_SIGNAL: "init_signal",
    ExitReason.SIPI: "sipi",
    ExitReason.IO_SMI: "smi",
    ExitReason.OTHER_SMI: "other_smi",
    ExitReason.INTERRUPT_WINDOW: "interrupt_window",
    ExitReason.NMI_WINDOW: "nmi_window",
    ExitReason.TASK_SWITCH: "task_switch",
    ExitReason.CPUID: "cpuid",
    ExitReason.GETSEC: "getsec",
    ExitReason.HLT: "hlt",
    ExitReason.INVD: "invd",
    ExitReason.INVLPG: "invlpg",
    ExitReason.RDPMC: "rdpmc",
    ExitReason.RDTSC: "rdtsc",
    ExitReason.RSM: "rsm",
    ExitReason.VMCALL: "vmcall",
    ExitReason.VMCLEAR: "vmclear",
    ExitReason.VMLAUNCH: "vmlaunch",
    ExitReason.VMPTRLD: "vmptrld",
    ExitReason.VMPTRST: "vmptrst",
    ExitReason.VMREAD: "vmread",
    ExitReason.VMRESUME: "vmresume",
    ExitReason.VMWRITE: "vmwrite",
    ExitReason.VMXOFF: "vmxoff",
    ExitReason.VMXON: "vmxon",
    ExitReason.CONTROL_REGISTER_ACCESS: "control_register_accesses",
    ExitReason.MOV_DR: "mov_dr",
    ExitReason.IO_INSTRUCTION: "io_instruction",
    ExitReason.RDMSR: "rdmsr",
    ExitReason.WRMSR: "wrmsr",
    ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE: "vm_entry_failure_invalid_guest_state",
    ExitReason.VM_ENTRY_FAILURE_MSR_LOADING: "vm_entry_failure_msr_loading",
    ExitReason.MWAIT: "mwait",
    ExitReason.MONITOR_TRAP_FLAG: "monitor_trap_flag",
    ExitReason.MONITOR: "monitor",
    ExitReason.PAUSE: "pause",
    ExitReason.VM_ENTRY_FAILURE_MACHINE_CHECK_EVENT: "vm_entry_failure_machine_check_event",
    ExitReason.TPR_BELOW_THRESHOLD: "tpr_below_threshold",
    ExitReason.APIC_ACCESS: "apic_access",
    ExitReason.VIRTUALIZED_EOI: "virtualized_eoi",
    ExitReason.ACCESS_TO_GDTR_OR_IDTR: "access_to_gdtr_or_idtr",
    ExitReason.ACCESS_TO_LDTR_OR_TR: "access_to_ldtr_or_tr",
    ExitReason.EPT_VIOLATION: "ept_violation",
    ExitReason.EPT_MISCONFIGURATION: "ept_misconfiguration",
    ExitReason.INVEPT: "invept",
    ExitReason.RDTSCP: "rdtscp",
    ExitReason.VMX_PREEMPTION_TIMER_EXPIRED: "vmx_preemption_timer_expired",
    ExitReason.INVVPID: "invvpid",
    ExitReason.WBINVD: "wbinvd",
    ExitReason.XSETBV: "xsetbv",
    ExitReason.APIC_WRITE: "apic_write",
    ExitReason.RDRAND: "rdrand",
    ExitReason.INVPCID: "invpcid",
    ExitReason.VMFUNC: "vmfunc",
    ExitReason.ENCLS: "encls",
    ExitReason.RDSEED: "rdseed",
    ExitReason.PAGE_MODIFICATION_LOG_FULL: "page_modification_log_full",
    ExitReason.XSAVES: "xsaves",
    ExitReason.XRSTORS: "xrstors",
    ExitReason.PCONFIG: "pconfig",
    ExitReason.SPP_RELATED_EVENT: "spp_related_event",
    ExitReason.UMWAIT: "umwait",
    ExitReason.TPAUSE: "tpause",
    ExitReason.LOADIWKEY: "loadiwkey",
    ExitReason.ENCLV: "enclv",
    ExitReason.ENQCMD_PASID_TRANSLATION_FAILURE: "enqcmd_pasid_translation_failure",
    ExitReason.ENQCMDS_PASID_TRANSLATION_FAILURE: "enqcmds_pasid_translation_failure",
    ExitReason.BUS_LOCK: "bus_lock",
    ExitReason.INSTRUCTION_TIMEOUT: "instruction_timeout",
    ExitReason.SEAMCALL: "seamcall",
    ExitReason.TDCALL: "tdcall",
    ExitReason.RDMSRLIST: "rdmsrlist",
    ExitReason.WRMSRLIST: "wrmsrlist",
    ExitReason.URDMSR: "urdmsr",
    ExitReason.UWRMSR: "uwrmsr",
    ExitReason.RDMSR_IMMEDIATE: "rdmsr_immediate",
    ExitReason.WRMSRNS_IMMEDIATE: "wrmsrns_immediate",
}

UNKNOWN: Final[str] = "unknown"
"""What ``description`` says for a number the SDM gives no reason, as Bareflank 1.1 did."""


def basic_exit_reason(value: int) -> int:
    """The basic exit reason (bits 15:0) of a full exit-reason field value."""
    return value & BASIC_EXIT_REASON_MASK


def description(reason: int) -> str:
    """Lower-snake name of a basic exit reason; a full exit-reason value is accepted."""
    return _DESCRIPTIONS.get(basic_exit_reason(reason), UNKNOWN)


def exit_reason(value: int) -> ExitReason | None:
    """The ``ExitReason`` of a full exit-reason value, or None if the SDM defines none."""
    try:
        return ExitReason(basic_exit_reason(value))
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class ExitReasonField:
    """The 32-bit exit-reason VMCS field, bit by bit (SDM "Basic VM-Exit Information").

    Bits the SDM leaves undefined (16..24, 30) are dropped by ``decode``.
    """

    basic_reason: int
    vm_entry_failure: bool = False
    pending_mtf: bool = False
    from_vmx_root: bool = False
    enclave_mode: bool = False
    bus_lock: bool = False
    shadow_stack_prematurely_busy: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.basic_reason <= BASIC_EXIT_REASON_MASK:
            raise ValueError(f"basic exit reason out of range: {self.basic_reason:#x}")

    @classmethod
    def decode(cls, value: int) -> ExitReasonField:
        return cls(
            basic_reason=value & BASIC_EXIT_REASON_MASK,
            vm_entry_failure=bool(value & VM_ENTRY_FAILURE),
            pending_mtf=bool(value & PENDING_MTF),
            from_vmx_root=bool(value & FROM_VMX_ROOT),
            enclave_mode=bool(value & ENCLAVE_MODE),
            bus_lock=bool(value & BUS_LOCK_ASSERTED),
            shadow_stack_prematurely_busy=bool(value & SHADOW_STACK_PREMATURELY_BUSY),
        )

    def encode(self) -> int:
        value = self.basic_reason
        if self.vm_entry_failure:
            value |= VM_ENTRY_FAILURE
        if self.pending_mtf:
            value |= PENDING_MTF
        if self.from_vmx_root:
            value |= FROM_VMX_ROOT
        if self.enclave_mode:
            value |= ENCLAVE_MODE
        if self.bus_lock:
            value |= BUS_LOCK_ASSERTED
        if self.shadow_stack_prematurely_busy:
            value |= SHADOW_STACK_PREMATURELY_BUSY
        return value

    @property
    def reason(self) -> ExitReason | None:
        return exit_reason(self.basic_reason)

    def describe(self) -> str:
        flags = [
            name
            for name, is_set in (
                ("vm_entry_failure", self.vm_entry_failure),
                ("pending_mtf", self.pending_mtf),
                ("from_vmx_root", self.from_vmx_root),
                ("enclave_mode", self.enclave_mode),
                ("bus_lock", self.bus_lock),
                ("shadow_stack_prematurely_busy", self.shadow_stack_prematurely_busy),
            )
            if is_set
        ]
        text = f"{description(self.basic_reason)} ({self.basic_reason})"
        return " ".join([text, *flags])

    def __str__(self) -> str:
        return self.describe()
