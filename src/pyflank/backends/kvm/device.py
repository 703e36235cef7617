"""Thin, typed wrappers of the three KVM file descriptors: system, VM and vCPU.

Each method is one ioctl.  The calls go through libc's ``ioctl`` with ctypes,
KVM_RUN through ``fcntl.ioctl`` (cheaper per call); both drop the GIL for the
call: a vCPU thread blocked in KVM_RUN never stalls the rest of the VMM.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import mmap
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from pyflank.backends.kvm import abi
from pyflank.backends.kvm import structs as s

_MAX_CPUID_ENTRIES = 256
_MAX_MSR_INDICES = 1024


class KvmError(OSError):
    """A KVM ioctl failed; ``errno`` and the ioctl's name say which and why."""


def _load_ioctl() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    fn = libc.ioctl
    fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
    fn.restype = ctypes.c_int
    return fn


def _load_mmap() -> tuple[Any, Any]:
    libc = ctypes.CDLL(None, use_errno=True)
    mmap_fn, munmap_fn = libc.mmap, libc.munmap
    mmap_fn.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
    ]  # fmt: skip
    mmap_fn.restype = ctypes.c_void_p
    munmap_fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    munmap_fn.restype = ctypes.c_int
    return mmap_fn, munmap_fn


_IOCTL = _load_ioctl()
_MMAP, _MUNMAP = _load_mmap()
_MAP_FAILED = ctypes.c_void_p(-1).value
_IOCTL_NAMES = {
    value: name
    for name, value in vars(abi).items()
    if name.startswith("KVM_") and isinstance(value, int) and value > 0xFFFF
}


# KVM_RUN, the one ioctl of the exit path, goes through ``fcntl.ioctl``: with no
# argument it is a direct C call that releases the GIL, about a microsecond per
# exit cheaper on a nested KVM than ctypes (argument conversion, libffi, errno
# swapping).  A failure raises OSError, EINTR as InterruptedError (no retry).
run_ioctl = fcntl.ioctl


def run_failed(exc: OSError) -> bool:
    """After KVM_RUN raised ``exc``: False for EINTR/EAGAIN, else raise ``KvmError``."""
    code = exc.errno or errno.EIO
    if code in (errno.EINTR, errno.EAGAIN):
        return False
    raise KvmError(code, f"KVM_RUN: {os.strerror(code)}") from exc


def ioctl(fd: int, request: int, arg: Any = None) -> int:
    """One ioctl; a failure raises ``KvmError`` naming the request."""
    result: int = _IOCTL(fd, request, arg)
    if result < 0:
        code = ctypes.get_errno()
        name = _IOCTL_NAMES.get(request, hex(request))
        raise KvmError(code, f"{name}: {os.strerror(code)}")
    return result


@dataclass(frozen=True, slots=True)
class CpuidEntry:
    """One ``kvm_cpuid_entry2``: the registers CPUID returns for (function, index)."""

    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int

    @property
    def significant_index(self) -> bool:
        return bool(self.flags & abi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX)

    @property
    def registers(self) -> tuple[int, int, int, int]:
        return (self.eax, self.ebx, self.ecx, self.edx)


@dataclass(frozen=True, slots=True)
class MsrFilterRange:
    """MSRs ``[base, base + 8 * len(bitmap))``: a 1 bit allows the ``flags`` accesses."""

    flags: int
    base: int
    bitmap: bytes


def _cpuid_entries(entries: Iterable[CpuidEntry]) -> ctypes.Structure:
    items = list(entries)
    buf = s.cpuid2_type(len(items))()
    buf.nent = len(items)
    for slot, e in zip(buf.entries, items, strict=True):
        slot.function, slot.index, slot.flags = e.function, e.index, e.flags
        slot.eax, slot.ebx, slot.ecx, slot.edx = e.eax, e.ebx, e.ecx, e.edx
    return buf


def _read_cpuid(buf: Any) -> list[CpuidEntry]:
    return [
        CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
        for e in buf.entries[: buf.nent]
    ]


class KvmSystem:
    """``/dev/kvm``: the system ioctls, and the factory of VMs."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)

    def api_version(self) -> int:
        return ioctl(self.fd, abi.KVM_GET_API_VERSION)

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, abi.KVM_CHECK_EXTENSION, cap)

    def vcpu_mmap_size(self) -> int:
        return ioctl(self.fd, abi.KVM_GET_VCPU_MMAP_SIZE)

    def supported_cpuid(self) -> list[CpuidEntry]:
        buf = s.cpuid2_type(_MAX_CPUID_ENTRIES)()
        buf.nent = _MAX_CPUID_ENTRIES
        ioctl(self.fd, abi.KVM_GET_SUPPORTED_CPUID, ctypes.byref(buf))
        return _read_cpuid(buf)

    def msr_index_list(self) -> list[int]:
        buf = s.msr_list_type(_MAX_MSR_INDICES)()
        buf.nmsrs = _MAX_MSR_INDICES
        ioctl(self.fd, abi.KVM_GET_MSR_INDEX_LIST, ctypes.byref(buf))
        return list(buf.indices[: buf.nmsrs])

    def create_vm(self) -> KvmVm:
        return KvmVm(self, ioctl(self.fd, abi.KVM_CREATE_VM, 0))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class KvmVm:
    """A VM file descriptor: memory slots, in-kernel devices, MSR filter, vCPUs."""

    def __init__(self, system: KvmSystem, fd: int) -> None:
        self.system = system
        self.fd = fd

    def check_extension(self, cap: int) -> int:
        return ioctl(self.fd, abi.KVM_CHECK_EXTENSION, cap)

    def set_user_memory_region(
        self, slot: int, guest_phys_addr: int, size: int, host_address: int, flags: int = 0
    ) -> None:
        region = s.KvmUserspaceMemoryRegion(slot, flags, guest_phys_addr, size, host_address)
        ioctl(self.fd, abi.KVM_SET_USER_MEMORY_REGION, ctypes.byref(region))

    def set_tss_addr(self, address: int) -> None:
        ioctl(self.fd, abi.KVM_SET_TSS_ADDR, address)

    def set_identity_map_addr(self, address: int) -> None:
        value = ctypes.c_uint64(address)
        ioctl(self.fd, abi.KVM_SET_IDENTITY_MAP_ADDR, ctypes.byref(value))

    def create_irqchip(self) -> None:
        ioctl(self.fd, abi.KVM_CREATE_IRQCHIP)

    def create_pit2(self, flags: int = 0) -> None:
        config = s.KvmPitConfig(flags=flags)
        ioctl(self.fd, abi.KVM_CREATE_PIT2, ctypes.byref(config))

    def enable_cap(self, cap: int, *args: int, flags: int = 0) -> None:
        request = s.KvmEnableCap(cap=cap, flags=flags)
        for i, value in enumerate(args):
            request.args[i] = value
        ioctl(self.fd, abi.KVM_ENABLE_CAP, ctypes.byref(request))

    def set_msr_filter(self, ranges: Iterable[MsrFilterRange], *, default_deny: bool) -> None:
        items = list(ranges)
        if len(items) > abi.KVM_MSR_FILTER_MAX_RANGES:
            raise ValueError(f"at most {abi.KVM_MSR_FILTER_MAX_RANGES} MSR filter ranges")
        request = s.KvmMsrFilter()
        request.flags = abi.KVM_MSR_FILTER_DEFAULT_DENY if default_deny else 0
        bitmaps = []  # the kernel copies them during the ioctl; keep them alive until then
        for slot, item in zip(request.ranges, items, strict=False):
            bitmap = ctypes.create_string_buffer(item.bitmap, len(item.bitmap))
            bitmaps.append(bitmap)
            slot.flags, slot.base, slot.nmsrs = item.flags, item.base, 8 * len(item.bitmap)
            slot.bitmap = ctypes.cast(bitmap, ctypes.c_void_p)
        ioctl(self.fd, abi.KVM_X86_SET_MSR_FILTER, ctypes.byref(request))

    def create_vcpu(self, vcpu_id: int) -> KvmVcpuFd:
        fd = ioctl(self.fd, abi.KVM_CREATE_VCPU, vcpu_id)
        try:
            return KvmVcpuFd(fd, self.system.vcpu_mmap_size())
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class KvmVcpuFd:
    """A vCPU file descriptor and its shared ``kvm_run`` page."""

    def __init__(self, fd: int, mmap_size: int) -> None:
        self.fd = fd
        self.mmap_size = mmap_size
        address = _MMAP(None, mmap_size, mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_SHARED, fd, 0)
        if address in (None, _MAP_FAILED):
            code = ctypes.get_errno()
            raise KvmError(code, f"mmap of kvm_run: {os.strerror(code)}")
        self._address: int = address
        self.run_page = s.KvmRun.from_address(address)

    def run(self) -> bool:
        """KVM_RUN; False when a signal or ``immediate_exit`` interrupted it (EINTR)."""
        try:
            run_ioctl(self.fd, abi.KVM_RUN)
        except OSError as exc:
            return run_failed(exc)
        return True

    def get_regs(self, regs: s.KvmRegs | None = None) -> s.KvmRegs:
        regs = s.KvmRegs() if regs is None else regs
        ioctl(self.fd, abi.KVM_GET_REGS, ctypes.byref(regs))
        return regs

    def set_regs(self, regs: s.KvmRegs) -> None:
        ioctl(self.fd, abi.KVM_SET_REGS, ctypes.byref(regs))

    def get_sregs(self, sregs: s.KvmSregs | None = None) -> s.KvmSregs:
        sregs = s.KvmSregs() if sregs is None else sregs
        ioctl(self.fd, abi.KVM_GET_SREGS, ctypes.byref(sregs))
        return sregs

    def set_sregs(self, sregs: s.KvmSregs) -> None:
        ioctl(self.fd, abi.KVM_SET_SREGS, ctypes.byref(sregs))

    def get_vcpu_events(self) -> s.KvmVcpuEvents:
        events = s.KvmVcpuEvents()
        ioctl(self.fd, abi.KVM_GET_VCPU_EVENTS, ctypes.byref(events))
        return events

    def set_vcpu_events(self, events: s.KvmVcpuEvents) -> None:
        ioctl(self.fd, abi.KVM_SET_VCPU_EVENTS, ctypes.byref(events))

    def get_msrs(self, indices: Iterable[int]) -> dict[int, int]:
        """The MSRs KVM could read; an index it does not know is left out."""
        wanted = list(indices)
        buf = s.msrs_type(len(wanted))()
        buf.nmsrs = len(wanted)
        for entry, index in zip(buf.entries, wanted, strict=True):
            entry.index = index
        done = ioctl(self.fd, abi.KVM_GET_MSRS, ctypes.byref(buf))
        return {e.index: e.data for e in buf.entries[:done]}

    def set_msrs(self, values: Mapping[int, int]) -> int:
        """Write MSRs in order; returns how many KVM accepted (it stops at the first refusal)."""
        buf = s.msrs_type(len(values))()
        buf.nmsrs = len(values)
        for entry, (index, data) in zip(buf.entries, values.items(), strict=True):
            entry.index, entry.data = index, data
        return ioctl(self.fd, abi.KVM_SET_MSRS, ctypes.byref(buf))

    def set_cpuid2(self, entries: Iterable[CpuidEntry]) -> None:
        buf = _cpuid_entries(entries)
        ioctl(self.fd, abi.KVM_SET_CPUID2, ctypes.byref(buf))

    def get_cpuid2(self) -> list[CpuidEntry]:
        buf = s.cpuid2_type(_MAX_CPUID_ENTRIES)()
        buf.nent = _MAX_CPUID_ENTRIES
        ioctl(self.fd, abi.KVM_GET_CPUID2, ctypes.byref(buf))
        return _read_cpuid(buf)

    def interrupt(self, irq: int) -> None:
        """Queue an external interrupt (only without an in-kernel irqchip)."""
        request = s.KvmInterrupt(irq)
        ioctl(self.fd, abi.KVM_INTERRUPT, ctypes.byref(request))

    def close(self) -> None:
        if self._address:
            del self.run_page
            _MUNMAP(self._address, self.mmap_size)
            self._address = 0
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
