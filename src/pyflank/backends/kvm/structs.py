"""The KVM structures pyflank exchanges with the kernel, as ctypes layouts.

Transcribed once from the x86-64 UAPI headers (``linux/kvm.h``,
``asm/kvm.h``); ``tests/kvm/test_kvm_abi.py`` compares every size and offset
with what the system C compiler computes from the installed headers.
Flexible-array structures (``kvm_cpuid2``, ``kvm_msrs``, ``kvm_msr_list``)
have a zero-length header type here and a sized variant built on demand.
"""

from __future__ import annotations

import ctypes
from ctypes import (
    Structure,
    Union,
    c_char,
    c_uint8,
    c_uint16,
    c_uint32,
    c_uint64,
    c_void_p,
)
from functools import cache

KVM_NR_INTERRUPTS = 256
SYNC_REGS_SIZE_BYTES = 2048


class KvmRegs(Structure):
    _fields_ = [
        (name, c_uint64)
        for name in (
            "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
            "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15",
            "rip", "rflags",
        )
    ]  # fmt: skip


class KvmSegment(Structure):
    _fields_ = [
        ("base", c_uint64),
        ("limit", c_uint32),
        ("selector", c_uint16),
        ("type", c_uint8),
        ("present", c_uint8),
        ("dpl", c_uint8),
        ("db", c_uint8),
        ("s", c_uint8),
        ("l", c_uint8),
        ("g", c_uint8),
        ("avl", c_uint8),
        ("unusable", c_uint8),
        ("padding", c_uint8),
    ]


class KvmDtable(Structure):
    _fields_ = [("base", c_uint64), ("limit", c_uint16), ("padding", c_uint16 * 3)]


SEGMENT_NAMES = ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt")


class KvmSregs(Structure):
    _fields_ = [
        *((name, KvmSegment) for name in SEGMENT_NAMES),
        ("gdt", KvmDtable),
        ("idt", KvmDtable),
        ("cr0", c_uint64),
        ("cr2", c_uint64),
        ("cr3", c_uint64),
        ("cr4", c_uint64),
        ("cr8", c_uint64),
        ("efer", c_uint64),
        ("apic_base", c_uint64),
        ("interrupt_bitmap", c_uint64 * ((KVM_NR_INTERRUPTS + 63) // 64)),
    ]


class KvmVcpuEventsException(Structure):
    _fields_ = [
        ("injected", c_uint8),
        ("nr", c_uint8),
        ("has_error_code", c_uint8),
        ("pending", c_uint8),
        ("error_code", c_uint32),
    ]


class KvmVcpuEventsInterrupt(Structure):
    _fields_ = [("injected", c_uint8), ("nr", c_uint8), ("soft", c_uint8), ("shadow", c_uint8)]


class KvmVcpuEventsNmi(Structure):
    _fields_ = [("injected", c_uint8), ("pending", c_uint8), ("masked", c_uint8), ("pad", c_uint8)]


class KvmVcpuEventsSmi(Structure):
    _fields_ = [
        ("smm", c_uint8),
        ("pending", c_uint8),
        ("smm_inside_nmi", c_uint8),
        ("latched_init", c_uint8),
    ]


class KvmVcpuEvents(Structure):
    _fields_ = [
        ("exception", KvmVcpuEventsException),
        ("interrupt", KvmVcpuEventsInterrupt),
        ("nmi", KvmVcpuEventsNmi),
        ("sipi_vector", c_uint32),
        ("flags", c_uint32),
        ("smi", KvmVcpuEventsSmi),
        ("triple_fault_pending", c_uint8),
        ("reserved", c_uint8 * 26),
        ("exception_has_payload", c_uint8),
        ("exception_payload", c_uint64),
    ]


class KvmSyncRegs(Structure):
    _fields_ = [("regs", KvmRegs), ("sregs", KvmSregs), ("events", KvmVcpuEvents)]


# -- kvm_run and its exit union -------------------------------------------------------


class ExitFailEntry(Structure):
    _fields_ = [("hardware_entry_failure_reason", c_uint64), ("cpu", c_uint32)]


class ExitException(Structure):
    _fields_ = [("exception", c_uint32), ("error_code", c_uint32)]


class ExitIo(Structure):
    _fields_ = [
        ("direction", c_uint8),
        ("size", c_uint8),
        ("port", c_uint16),
        ("count", c_uint32),
        ("data_offset", c_uint64),  # from the start of kvm_run
    ]


class ExitMmio(Structure):
    _fields_ = [
        ("phys_addr", c_uint64),
        ("data", c_uint8 * 8),
        ("len", c_uint32),
        ("is_write", c_uint8),
    ]


class ExitHypercall(Structure):
    _fields_ = [
        ("nr", c_uint64),
        ("args", c_uint64 * 6),
        ("ret", c_uint64),
        ("longmode", c_uint32),
        ("pad", c_uint32),
    ]


class ExitInternal(Structure):
    _fields_ = [("suberror", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class ExitEmulationFailure(Structure):
    """The ABI overlay of ``internal`` for KVM_INTERNAL_ERROR_EMULATION."""

    _fields_ = [
        ("suberror", c_uint32),
        ("ndata", c_uint32),
        ("flags", c_uint64),
        ("insn_size", c_uint8),
        ("insn_bytes", c_uint8 * 15),
    ]


class ExitSystemEvent(Structure):
    _fields_ = [("type", c_uint32), ("ndata", c_uint32), ("data", c_uint64 * 16)]


class ExitMsr(Structure):
    _fields_ = [
        ("error", c_uint8),  # user -> kernel: nonzero injects #GP
        ("pad", c_uint8 * 7),
        ("reason", c_uint32),  # kernel -> user: KVM_MSR_EXIT_REASON_*
        ("index", c_uint32),
        ("data", c_uint64),  # kernel <-> user
    ]


class KvmRunExit(Union):
    _fields_ = [
        ("hardware_exit_reason", c_uint64),
        ("fail_entry", ExitFailEntry),
        ("ex", ExitException),
        ("io", ExitIo),
        ("mmio", ExitMmio),
        ("hypercall", ExitHypercall),
        ("internal", ExitInternal),
        ("emulation_failure", ExitEmulationFailure),
        ("system_event", ExitSystemEvent),
        ("msr", ExitMsr),
        ("padding", c_char * 256),
    ]


class KvmRunSyncRegs(Union):
    _fields_ = [("regs", KvmSyncRegs), ("padding", c_char * SYNC_REGS_SIZE_BYTES)]


class KvmRun(Structure):
    """The page KVM shares with user space for each vCPU (``mmap`` of the vCPU fd)."""

    _fields_ = [
        ("request_interrupt_window", c_uint8),
        ("immediate_exit", c_uint8),
        ("padding1", c_uint8 * 6),
        ("exit_reason", c_uint32),
        ("ready_for_interrupt_injection", c_uint8),
        ("if_flag", c_uint8),
        ("flags", c_uint16),
        ("cr8", c_uint64),
        ("apic_base", c_uint64),
        ("exit", KvmRunExit),
        ("kvm_valid_regs", c_uint64),
        ("kvm_dirty_regs", c_uint64),
        ("s", KvmRunSyncRegs),
    ]


# -- VM setup -------------------------------------------------------------------------


class KvmUserspaceMemoryRegion(Structure):
    _fields_ = [
        ("slot", c_uint32),
        ("flags", c_uint32),
        ("guest_phys_addr", c_uint64),
        ("memory_size", c_uint64),
        ("userspace_addr", c_uint64),
    ]


class KvmEnableCap(Structure):
    _fields_ = [
        ("cap", c_uint32),
        ("flags", c_uint32),
        ("args", c_uint64 * 4),
        ("pad", c_uint8 * 64),
    ]


class KvmPitConfig(Structure):
    _fields_ = [("flags", c_uint32), ("pad", c_uint32 * 15)]


class KvmInterrupt(Structure):
    _fields_ = [("irq", c_uint32)]


class KvmMsrFilterRange(Structure):
    _fields_ = [
        ("flags", c_uint32),
        ("nmsrs", c_uint32),
        ("base", c_uint32),
        ("bitmap", c_void_p),  # one bit per MSR: 1 allows, 0 denies
    ]


class KvmMsrFilter(Structure):
    _fields_ = [("flags", c_uint32), ("ranges", KvmMsrFilterRange * 16)]


# -- flexible arrays --------------------------------------------------------------------


class KvmCpuidEntry2(Structure):
    _fields_ = [
        ("function", c_uint32),
        ("index", c_uint32),
        ("flags", c_uint32),
        ("eax", c_uint32),
        ("ebx", c_uint32),
        ("ecx", c_uint32),
        ("edx", c_uint32),
        ("padding", c_uint32 * 3),
    ]


class KvmCpuid2(Structure):
    _fields_ = [("nent", c_uint32), ("padding", c_uint32)]


class KvmMsrEntry(Structure):
    _fields_ = [("index", c_uint32), ("reserved", c_uint32), ("data", c_uint64)]


class KvmMsrs(Structure):
    _fields_ = [("nmsrs", c_uint32), ("pad", c_uint32)]


class KvmMsrList(Structure):
    _fields_ = [("nmsrs", c_uint32)]


@cache
def cpuid2_type(count: int) -> type[Structure]:
    """``struct kvm_cpuid2`` with room for ``count`` entries."""
    return type(
        f"KvmCpuid2_{count}",
        (Structure,),
        {"_fields_": [*KvmCpuid2._fields_, ("entries", KvmCpuidEntry2 * count)]},
    )


@cache
def msrs_type(count: int) -> type[Structure]:
    """``struct kvm_msrs`` with room for ``count`` entries."""
    return type(
        f"KvmMsrs_{count}",
        (Structure,),
        {"_fields_": [*KvmMsrs._fields_, ("entries", KvmMsrEntry * count)]},
    )


@cache
def msr_list_type(count: int) -> type[Structure]:
    """``struct kvm_msr_list`` with room for ``count`` indices."""
    return type(
        f"KvmMsrList_{count}",
        (Structure,),
        {"_fields_": [*KvmMsrList._fields_, ("indices", c_uint32 * count)]},
    )


def io_data(run: KvmRun, offset: int, length: int) -> ctypes.Array[c_uint8]:
    """The I/O data buffer of a KVM_EXIT_IO, which lives inside the kvm_run mapping."""
    return (c_uint8 * length).from_address(ctypes.addressof(run) + offset)
