"""What this host's KVM can do for pyflank, asked of the kernel and measured with tiny guests.

``probe_kvm()`` never raises for an unusable KVM: it returns capabilities with
``usable=False`` and the reason, so callers (tests, ``bfm``, ``--backend auto``)
can report why KVM is not used.  The measured part runs one throw-away VM per
question; each guest is a few instructions and every run has a timeout, so a
guest that never leaves KVM_RUN (VMCALL under a page-table-based KVM) costs
the timeout, not a hang.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import keystone

from pyflank.backends.kvm import abi
from pyflank.backends.kvm.device import CpuidEntry, KvmError, KvmSystem, MsrFilterRange
from pyflank.backends.kvm.probe_cpuid import CpuidCheck, check_cpuid
from pyflank.backends.kvm.tiny import TinyGuest

KVM_MODULES = ("kvm_intel", "kvm_amd", "kvm_pvm")
_KVM_ENOSYS = 1000  # what KVM answers an unknown hypercall with (as -KVM_ENOSYS in RAX)
_PROBE_PORT = 0x80


@dataclass(frozen=True)
class KvmCapabilities:
    """The facts the KVM backend adapts to; ``describe()`` prints them for people."""

    usable: bool
    reason: str = ""
    device: str = "/dev/kvm"
    api_version: int = 0
    module: str = "unknown"
    vendor: str = ""
    host_is_guest: bool = False
    page_table_based: bool = False
    sync_regs: int = 0
    immediate_exit: bool = False
    irqchip: bool = False
    pit2: bool = False
    user_space_msr: bool = False
    msr_filter: bool = False
    exit_hypercall_mask: int = 0
    nr_memslots: int = 0
    max_vcpus: int = 0
    # Measured with guests (empty / None when not measured).
    exits: dict[str, bool] = field(default_factory=dict)
    vmcall: str = "not measured"
    cpl0_emulated: bool | None = None
    out_rip_after_exit: bool | None = None
    cpuid_cpl0: CpuidCheck | None = None
    cpuid_cpl3: CpuidCheck | None = None

    @property
    def vmcall_reaches_user_space(self) -> bool:
        return self.vmcall == "user-space"

    @property
    def cpuid_fully_honoured(self) -> bool | None:
        checks = [c for c in (self.cpuid_cpl0, self.cpuid_cpl3) if c is not None]
        return all(c.honoured for c in checks) if checks else None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def describe(self) -> str:
        if not self.usable:
            return f"KVM ({self.device}): not usable: {self.reason}"
        lines = [
            f"KVM ({self.device}): API {self.api_version}, module {self.module}, "
            f"vendor {self.vendor or '?'}",
            f"- host is itself a guest (nested): {self.host_is_guest}; "
            f"page-table-based (PVM): {self.page_table_based}",
            f"- sync regs {self.sync_regs:#x}, immediate_exit {self.immediate_exit}, "
            f"irqchip {self.irqchip}, PIT2 {self.pit2}",
            f"- user-space MSR exits {self.user_space_msr}, MSR filter {self.msr_filter}, "
            f"exit-hypercall mask {self.exit_hypercall_mask:#x}",
        ]
        if self.exits:
            seen = ", ".join(f"{name} {'yes' if ok else 'NO'}" for name, ok in self.exits.items())
            lines.append(f"- exits reaching user space: {seen}")
        lines.append(f"- guest VMCALL: {self.vmcall}")
        if self.cpl0_emulated is not None:
            lines.append(
                f"- ring-0 guest code run by KVM's instruction emulator: {self.cpl0_emulated}"
            )
        if self.out_rip_after_exit is not None:
            lines.append(f"- RIP already past OUT at its exit: {self.out_rip_after_exit}")
        for ring, check in (("0", self.cpuid_cpl0), ("3", self.cpuid_cpl3)):
            if check is not None:
                lines.append(f"- KVM_SET_CPUID2 at CPL{ring}: {check.describe()}")
        return "\n".join(lines)


def loaded_kvm_module(sys_module: Path = Path("/sys/module")) -> str:
    for name in KVM_MODULES:
        if (sys_module / name).exists():
            return name
    return "unknown"


def host_is_guest(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return "hypervisor" in line.split()
    return False


def _vendor(entries: list[CpuidEntry]) -> str:
    for e in entries:
        if e.function == 0:
            raw = b"".join(r.to_bytes(4, "little") for r in (e.ebx, e.edx, e.ecx))
            return raw.decode("ascii", "replace")
    return ""


def probe_kvm(
    path: str = "/dev/kvm", *, measure: bool = True, timeout: float = 0.3
) -> KvmCapabilities:
    """Ask ``path`` what it supports; with ``measure``, run the tiny guests too."""
    if not os.path.exists(path):
        return KvmCapabilities(False, f"{path} does not exist (no KVM module loaded?)", path)
    try:
        system = KvmSystem(path)
    except OSError as exc:
        return KvmCapabilities(False, f"cannot open {path}: {exc.strerror}", path)
    try:
        return _probe(system, path, measure=measure, timeout=timeout)
    except (KvmError, OSError) as exc:
        return KvmCapabilities(False, f"KVM setup failed: {exc}", path)
    finally:
        system.close()


def _probe(system: KvmSystem, path: str, *, measure: bool, timeout: float) -> KvmCapabilities:
    version = system.api_version()
    if version != abi.KVM_API_VERSION:
        return KvmCapabilities(False, f"KVM API version {version}, pyflank needs 12", path)
    cap = system.check_extension
    if not cap(abi.KVM_CAP_USER_MEMORY) or not cap(abi.KVM_CAP_IMMEDIATE_EXIT):
        return KvmCapabilities(False, "KVM lacks user memory or immediate_exit", path, version)
    module = loaded_kvm_module()
    supported = system.supported_cpuid()
    base: dict[str, Any] = {
        "usable": True,
        "device": path,
        "api_version": version,
        "module": module,
        "vendor": _vendor(supported),
        "host_is_guest": host_is_guest(),
        "page_table_based": module == "kvm_pvm",
        "sync_regs": cap(abi.KVM_CAP_SYNC_REGS),
        "immediate_exit": True,
        "irqchip": bool(cap(abi.KVM_CAP_IRQCHIP)),
        "pit2": bool(cap(abi.KVM_CAP_PIT2)),
        "user_space_msr": bool(cap(abi.KVM_CAP_X86_USER_SPACE_MSR)),
        "msr_filter": bool(cap(abi.KVM_CAP_X86_MSR_FILTER)),
        "exit_hypercall_mask": cap(abi.KVM_CAP_EXIT_HYPERCALL),
        "nr_memslots": cap(abi.KVM_CAP_NR_MEMSLOTS),
        "max_vcpus": cap(abi.KVM_CAP_MAX_VCPUS),
    }
    if measure:
        base.update(_measure(system, supported, timeout, msr=base["msr_filter"]))
    return KvmCapabilities(**base)


def _assemble(source: str, address: int) -> bytes:
    encoding, _ = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64).asm(source, address)
    return bytes(encoding or b"")


def _exit_of(
    system: KvmSystem,
    source: str,
    timeout: float,
    setup: Callable[[TinyGuest], None] | None = None,
) -> tuple[int | None, TinyGuest]:
    guest = TinyGuest(system, _assemble(source, 0x10000))
    if setup is not None:
        setup(guest)
    return guest.run(timeout), guest


def _enable_msr_exits(guest: TinyGuest) -> None:
    guest.vm.enable_cap(abi.KVM_CAP_X86_USER_SPACE_MSR, abi.KVM_MSR_EXIT_REASON_FILTER)
    rw = abi.KVM_MSR_FILTER_READ | abi.KVM_MSR_FILTER_WRITE
    guest.vm.set_msr_filter([MsrFilterRange(rw, 0, bytes(1))], default_deny=True)


def _measure(
    system: KvmSystem, supported: list[CpuidEntry], timeout: float, *, msr: bool
) -> dict[str, Any]:
    exits: dict[str, bool] = {}
    found: dict[str, Any] = {"exits": exits}

    reason, guest = _exit_of(
        system, f"mov dx, {_PROBE_PORT}; mov al, 0x5a; out dx, al; hlt", timeout
    )
    with guest:
        exits["out"] = reason == abi.KVM_EXIT_IO
        if exits["out"]:
            # mov dx (4 bytes) + mov al (2) + out dx, al (1): is RIP at the OUT or past it?
            found["out_rip_after_exit"] = guest.regs().rip == guest.layout.code + 7
        exits["hlt"] = guest.run(timeout) == abi.KVM_EXIT_HLT
    reason, guest = _exit_of(system, f"mov dx, {_PROBE_PORT}; in al, dx; hlt", timeout)
    with guest:
        exits["in"] = reason == abi.KVM_EXIT_IO
    reason, guest = _exit_of(system, "mov rbx, 0x40000000; mov eax, dword ptr [rbx]; hlt", timeout)
    with guest:
        exits["mmio"] = reason == abi.KVM_EXIT_MMIO
    reason, guest = _exit_of(system, "mov rax, [0x7fff00000000]; hlt", timeout)
    with guest:
        exits["shutdown"] = reason == abi.KVM_EXIT_SHUTDOWN
    if msr:
        source = "mov ecx, 0xc0000080; rdmsr; mov ecx, 0x10; wrmsr; hlt"
        reason, guest = _exit_of(system, source, timeout, _enable_msr_exits)
        with guest:
            exits["rdmsr"] = reason == abi.KVM_EXIT_X86_RDMSR
            exits["wrmsr"] = exits["rdmsr"] and guest.run(timeout) == abi.KVM_EXIT_X86_WRMSR
    # Instructions VMX makes exit but KVM completes itself: the OUT after them exits first.
    for name, instruction in (("cpuid", "cpuid"), ("invd", "invd"), ("rdtsc", "rdtsc")):
        source = f"{instruction}; mov dx, {_PROBE_PORT}; out dx, al; hlt"
        reason, guest = _exit_of(system, source, timeout)
        with guest:
            exits[name] = reason not in (None, abi.KVM_EXIT_IO, abi.KVM_EXIT_INTERNAL_ERROR)
    reason, guest = _exit_of(system, "fwait; hlt", timeout)
    with guest:
        found["cpl0_emulated"] = reason == abi.KVM_EXIT_INTERNAL_ERROR
    found["vmcall"] = _measure_vmcall(system, timeout)
    found["cpuid_cpl0"] = check_cpuid(system, supported, user=False, timeout=timeout)
    found["cpuid_cpl3"] = check_cpuid(system, supported, user=True, timeout=timeout)
    return found


def _measure_vmcall(system: KvmSystem, timeout: float) -> str:
    source = f"mov rax, 0x7fffff01; vmcall; mov dx, {_PROBE_PORT}; out dx, al; hlt"
    reason, guest = _exit_of(system, source, timeout)
    with guest:
        if reason is None:
            return f"hangs (no return from KVM_RUN within {timeout:g} s): not usable"
        if reason == abi.KVM_EXIT_HYPERCALL:
            return "user-space"
        if reason == abi.KVM_EXIT_IO:
            rax = guest.regs().rax
            if rax == (-_KVM_ENOSYS) & 0xFFFF_FFFF_FFFF_FFFF:
                return "kernel (KVM answers it as a KVM hypercall, -KVM_ENOSYS): not usable"
            return f"kernel (KVM answered RAX={rax:#x}): not usable"
        name = abi.EXIT_NAMES.get(reason, str(reason))
        return f"exit {name}: not usable"
