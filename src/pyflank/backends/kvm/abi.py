"""Numbers of the KVM user-space ABI (``linux/kvm.h``, ``asm/kvm.h`` for x86).

Ioctl numbers are computed from their direction, type, number and argument
size exactly as the kernel's ``_IOC`` macros do, so each one is written once
with the structure it carries and cannot drift from the ctypes layout.
"""

from __future__ import annotations

import ctypes
from typing import Final

from pyflank.backends.kvm import structs as s

# asm-generic/ioctl.h: nr 8 bits, type 8 bits, size 14 bits, direction 2 bits.
_IOC_NRSHIFT, _IOC_TYPESHIFT, _IOC_SIZESHIFT, _IOC_DIRSHIFT = 0, 8, 16, 30
_IOC_NONE, _IOC_WRITE, _IOC_READ = 0, 1, 2
_IOC_SIZEMASK = (1 << 14) - 1

KVMIO: Final = 0xAE


def _ioc(direction: int, type_: int, nr: int, size: int) -> int:
    if not 0 <= size <= _IOC_SIZEMASK:
        raise ValueError(f"ioctl argument size {size} does not fit in 14 bits")
    return (
        direction << _IOC_DIRSHIFT
        | type_ << _IOC_TYPESHIFT
        | nr << _IOC_NRSHIFT
        | size << _IOC_SIZESHIFT
    )


def _size(arg: type[ctypes._CData] | int) -> int:
    return arg if isinstance(arg, int) else ctypes.sizeof(arg)


def io(nr: int) -> int:
    return _ioc(_IOC_NONE, KVMIO, nr, 0)


def ior(nr: int, arg: type[ctypes._CData] | int) -> int:
    return _ioc(_IOC_READ, KVMIO, nr, _size(arg))


def iow(nr: int, arg: type[ctypes._CData] | int) -> int:
    return _ioc(_IOC_WRITE, KVMIO, nr, _size(arg))


def iowr(nr: int, arg: type[ctypes._CData] | int) -> int:
    return _ioc(_IOC_READ | _IOC_WRITE, KVMIO, nr, _size(arg))


KVM_API_VERSION: Final = 12

# -- system ioctls (/dev/kvm) --------------------------------------------------------
KVM_GET_API_VERSION: Final = io(0x00)
KVM_CREATE_VM: Final = io(0x01)
KVM_GET_MSR_INDEX_LIST: Final = iowr(0x02, s.KvmMsrList)
KVM_CHECK_EXTENSION: Final = io(0x03)
KVM_GET_VCPU_MMAP_SIZE: Final = io(0x04)
KVM_GET_SUPPORTED_CPUID: Final = iowr(0x05, s.KvmCpuid2)
KVM_GET_EMULATED_CPUID: Final = iowr(0x09, s.KvmCpuid2)

# -- VM ioctls ------------------------------------------------------------------------
KVM_CREATE_VCPU: Final = io(0x41)
KVM_SET_USER_MEMORY_REGION: Final = iow(0x46, s.KvmUserspaceMemoryRegion)
KVM_SET_TSS_ADDR: Final = io(0x47)
KVM_SET_IDENTITY_MAP_ADDR: Final = iow(0x48, ctypes.c_uint64)
KVM_CREATE_IRQCHIP: Final = io(0x60)
KVM_CREATE_PIT2: Final = iow(0x77, s.KvmPitConfig)
KVM_ENABLE_CAP: Final = iow(0xA3, s.KvmEnableCap)
KVM_X86_SET_MSR_FILTER: Final = iow(0xC6, s.KvmMsrFilter)

# -- vCPU ioctls ----------------------------------------------------------------------
KVM_RUN: Final = io(0x80)
KVM_GET_REGS: Final = ior(0x81, s.KvmRegs)
KVM_SET_REGS: Final = iow(0x82, s.KvmRegs)
KVM_GET_SREGS: Final = ior(0x83, s.KvmSregs)
KVM_SET_SREGS: Final = iow(0x84, s.KvmSregs)
KVM_INTERRUPT: Final = iow(0x86, s.KvmInterrupt)
KVM_GET_MSRS: Final = iowr(0x88, s.KvmMsrs)
KVM_SET_MSRS: Final = iow(0x89, s.KvmMsrs)
KVM_SET_CPUID2: Final = iow(0x90, s.KvmCpuid2)
KVM_GET_CPUID2: Final = iowr(0x91, s.KvmCpuid2)
KVM_GET_VCPU_EVENTS: Final = ior(0x9F, s.KvmVcpuEvents)
KVM_SET_VCPU_EVENTS: Final = iow(0xA0, s.KvmVcpuEvents)

# -- kvm_run.exit_reason --------------------------------------------------------------
KVM_EXIT_UNKNOWN: Final = 0
KVM_EXIT_EXCEPTION: Final = 1
KVM_EXIT_IO: Final = 2
KVM_EXIT_HYPERCALL: Final = 3
KVM_EXIT_DEBUG: Final = 4
KVM_EXIT_HLT: Final = 5
KVM_EXIT_MMIO: Final = 6
KVM_EXIT_IRQ_WINDOW_OPEN: Final = 7
KVM_EXIT_SHUTDOWN: Final = 8
KVM_EXIT_FAIL_ENTRY: Final = 9
KVM_EXIT_INTR: Final = 10
KVM_EXIT_INTERNAL_ERROR: Final = 17
KVM_EXIT_SYSTEM_EVENT: Final = 24
KVM_EXIT_X86_RDMSR: Final = 29
KVM_EXIT_X86_WRMSR: Final = 30

EXIT_NAMES: Final[dict[int, str]] = {
    value: name.removeprefix("KVM_EXIT_")
    for name, value in globals().items()
    if name.startswith("KVM_EXIT_") and isinstance(value, int)
}

KVM_EXIT_IO_IN: Final = 0
KVM_EXIT_IO_OUT: Final = 1

KVM_INTERNAL_ERROR_EMULATION: Final = 1
KVM_INTERNAL_ERROR_SIMUL_EX: Final = 2
KVM_INTERNAL_ERROR_DELIVERY_EV: Final = 3
KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON: Final = 4
KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES: Final = 1 << 0

KVM_SYSTEM_EVENT_SHUTDOWN: Final = 1
KVM_SYSTEM_EVENT_RESET: Final = 2
KVM_SYSTEM_EVENT_CRASH: Final = 3

# -- capabilities (KVM_CHECK_EXTENSION) ----------------------------------------------
KVM_CAP_IRQCHIP: Final = 0
KVM_CAP_HLT: Final = 1
KVM_CAP_USER_MEMORY: Final = 3
KVM_CAP_SET_TSS_ADDR: Final = 4
KVM_CAP_EXT_CPUID: Final = 7
KVM_CAP_NR_VCPUS: Final = 9
KVM_CAP_NR_MEMSLOTS: Final = 10
KVM_CAP_PIT2: Final = 33
KVM_CAP_SET_IDENTITY_MAP_ADDR: Final = 37
KVM_CAP_INTERNAL_ERROR_DATA: Final = 40
KVM_CAP_MAX_VCPUS: Final = 66
KVM_CAP_SYNC_REGS: Final = 74
KVM_CAP_IMMEDIATE_EXIT: Final = 136
KVM_CAP_X86_USER_SPACE_MSR: Final = 188
KVM_CAP_X86_MSR_FILTER: Final = 189
KVM_CAP_EXIT_HYPERCALL: Final = 201

# -- KVM_CAP_X86_USER_SPACE_MSR / KVM_X86_SET_MSR_FILTER ------------------------------
KVM_MSR_EXIT_REASON_INVAL: Final = 1 << 0
KVM_MSR_EXIT_REASON_UNKNOWN: Final = 1 << 1
KVM_MSR_EXIT_REASON_FILTER: Final = 1 << 2
KVM_MSR_FILTER_READ: Final = 1 << 0
KVM_MSR_FILTER_WRITE: Final = 1 << 1
KVM_MSR_FILTER_DEFAULT_ALLOW: Final = 0
KVM_MSR_FILTER_DEFAULT_DENY: Final = 1 << 0
KVM_MSR_FILTER_MAX_RANGES: Final = 16
# Largest bitmap one filter range may carry (KVM_MSR_FILTER_MAX_BITMAP_SIZE, bytes).
KVM_MSR_FILTER_MAX_BITMAP_SIZE: Final = 0x600

# -- kvm_run.kvm_valid_regs / kvm_dirty_regs (KVM_CAP_SYNC_REGS) ---------------------
KVM_SYNC_X86_REGS: Final = 1 << 0
KVM_SYNC_X86_SREGS: Final = 1 << 1
KVM_SYNC_X86_EVENTS: Final = 1 << 2

# -- kvm_cpuid_entry2.flags -----------------------------------------------------------
KVM_CPUID_FLAG_SIGNIFCANT_INDEX: Final = 1 << 0

# -- kvm_vcpu_events.flags ------------------------------------------------------------
KVM_VCPUEVENT_VALID_NMI_PENDING: Final = 1 << 0
KVM_VCPUEVENT_VALID_SIPI_VECTOR: Final = 1 << 1
KVM_VCPUEVENT_VALID_SHADOW: Final = 1 << 2
