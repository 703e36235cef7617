"""Why a KVM vCPU stopped running."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class StopReason(Enum):
    HALTED = "halted"  # the exit handler halted the vCPU (halt(), unimplemented exit, ...)
    PROMOTED = "promoted"  # the handler left VMX operation (VMXOFF, promote())
    GUEST_HLT = "guest hlt"  # HLT without HLT exiting: the vCPU halts
    TIMEOUT = "timeout"
    STOPPED = "stopped"  # stop() from another thread
    EMULATION_FAILURE = "emulation failure"  # KVM could not emulate a guest instruction
    ERROR = "error"  # any other KVM exit the VMX model has no meaning for


@dataclass(frozen=True)
class KvmRunResult:
    reason: StopReason
    message: str
    dispatched: int = 0  # VM exits the handler saw, over the vCPU's life
    kvm_exits: int = 0  # KVM_RUN returns with an exit, over the vCPU's life
