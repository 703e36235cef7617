"""Why a KVM vCPU stopped running: the StopReason every backend shares, and KVM's counters."""

from __future__ import annotations

from dataclasses import dataclass

from pyflank.backends.base import StopReason

__all__ = ["KvmRunResult", "StopReason"]


@dataclass(frozen=True)
class KvmRunResult:
    reason: StopReason
    message: str
    dispatched: int = 0  # VM exits the handler saw, over the vCPU's life
    kvm_exits: int = 0  # KVM_RUN returns with an exit, over the vCPU's life
