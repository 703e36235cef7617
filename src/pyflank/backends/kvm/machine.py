"""One KVM VM over pyflank's guest RAM: the memory slot, the MSR filter, the vCPUs' common facts."""

from __future__ import annotations

from dataclasses import dataclass, field

from pyflank.abi import DEFAULT_DOORBELL_PORT
from pyflank.backends.kvm import abi
from pyflank.backends.kvm.device import CpuidEntry, KvmSystem, KvmVm, MsrFilterRange
from pyflank.backends.kvm.ept import MemorySlots
from pyflank.backends.kvm.kick import DEFAULT_KICK_SIGNAL, ensure_kick_handler
from pyflank.backends.kvm.tiny import TSS_ADDRESS
from pyflank.memory import GuestPhysicalMemory

_RW = abi.KVM_MSR_FILTER_READ | abi.KVM_MSR_FILTER_WRITE


@dataclass(frozen=True)
class KvmConfig:
    """How the KVM backend maps the VMX model onto KVM.

    ``doorbell_port``: OUT to this port is the guest's VMCALL (None: no doorbell).
    ``msr_exits``: every RDMSR/WRMSR exits to the handler, as with no MSR bitmaps.
    ``allowed_msrs``: MSRs the guest may access without an exit (e.g. for speed).
    """

    device: str = "/dev/kvm"
    doorbell_port: int | None = DEFAULT_DOORBELL_PORT
    msr_exits: bool = True
    allowed_msrs: frozenset[int] = field(default_factory=frozenset)
    kick_signal: int = DEFAULT_KICK_SIGNAL


class KvmMachine:
    """A VM whose slot 0 is ``memory`` (the same host pages the handler reads)."""

    def __init__(
        self,
        memory: GuestPhysicalMemory,
        config: KvmConfig | None = None,
        system: KvmSystem | None = None,
    ) -> None:
        self.config = config or KvmConfig()
        ensure_kick_handler(self.config.kick_signal)
        self._own_system = system is None
        self.system = system or KvmSystem(self.config.device)
        self.memory = memory
        self.vm: KvmVm = self.system.create_vm()
        try:
            self.supported_cpuid: list[CpuidEntry] = self.system.supported_cpuid()
            self.sync_regs = self.system.check_extension(abi.KVM_CAP_SYNC_REGS)
            if self.system.check_extension(abi.KVM_CAP_SET_TSS_ADDR):
                self.vm.set_tss_addr(TSS_ADDRESS)
            self.vm.set_user_memory_region(0, 0, memory.size, memory.address)
            self.slots = MemorySlots(self.vm, memory)  # cut by EPT (``ept``)
            if self.config.msr_exits:
                self._filter_all_msrs()
        except BaseException:
            self.close()
            raise

    def _filter_all_msrs(self) -> None:
        if not (
            self.system.check_extension(abi.KVM_CAP_X86_USER_SPACE_MSR)
            and self.system.check_extension(abi.KVM_CAP_X86_MSR_FILTER)
        ):
            raise RuntimeError("this KVM cannot send RDMSR/WRMSR to user space (no MSR filter)")
        self.vm.enable_cap(abi.KVM_CAP_X86_USER_SPACE_MSR, abi.KVM_MSR_EXIT_REASON_FILTER)
        self.vm.set_msr_filter(allow_ranges(self.config.allowed_msrs), default_deny=True)

    def close(self) -> None:
        self.vm.close()
        if self._own_system:
            self.system.close()


def allow_ranges(allowed: frozenset[int]) -> list[MsrFilterRange]:
    """Filter ranges letting ``allowed`` through; KVM rejects a default-deny filter with none."""
    if not allowed:
        return [MsrFilterRange(_RW, 0, bytes(1))]  # MSRs 0..7 denied: a range that allows nothing
    ranges = []
    for base in sorted({msr & ~0x7FF for msr in allowed}):  # one 2048-MSR window per block
        bitmap = bytearray(0x100)
        for msr in allowed:
            if msr & ~0x7FF == base:
                bitmap[(msr - base) // 8] |= 1 << ((msr - base) % 8)
        ranges.append(MsrFilterRange(_RW, base, bytes(bitmap)))
    if len(ranges) > abi.KVM_MSR_FILTER_MAX_RANGES:
        raise ValueError("allowed MSRs span more than 16 filter ranges")
    return ranges
