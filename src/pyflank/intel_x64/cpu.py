"""The physical CPU the VMM sees: CPUID, RDMSR/WRMSR, WBINVD.

``ModelCpu`` is a fixed, deterministic Skylake-class processor so that runs on
the software CPU are reproducible; the KVM backend substitutes what the kernel
reports.  Anything not modelled faults like hardware does (#GP on an MSR).
"""

from __future__ import annotations

from typing import Protocol

from pyflank.intel_x64 import msrs

CpuidRegisters = tuple[int, int, int, int]
_MASK64 = (1 << 64) - 1


class MsrFault(Exception):
    """RDMSR/WRMSR the processor refuses with #GP(0): an MSR it does not implement
    (or cannot write), or a value the MSR does not accept."""

    def __init__(self, msr: int, *, write: bool, reason: str | None = None) -> None:
        verb = "WRMSR to" if write else "RDMSR of"
        super().__init__(reason or f"{verb} unimplemented or read-only MSR {msr:#x}")
        self.msr = msr
        self.write = write


class PhysicalCpu(Protocol):
    def cpuid(self, leaf: int, subleaf: int) -> CpuidRegisters: ...
    def rdmsr(self, msr: int) -> int: ...
    def wrmsr(self, msr: int, value: int) -> None: ...
    def wbinvd(self) -> None: ...


def canonical(address: int, width: int) -> bool:
    """Bits 63:width-1 all equal: a linear address the processor can form."""
    top = (address & _MASK64) >> (width - 1)
    return top == 0 or top == (1 << (65 - width)) - 1


def address_widths(cpu: PhysicalCpu) -> tuple[int, int]:
    """(physical, linear) address bits, from CPUID 80000008H (36 and 32 without the leaf)."""
    if cpu.cpuid(0x80000000, 0)[0] < 0x80000008:
        return 36, 32
    eax = cpu.cpuid(0x80000008, 0)[0]
    return eax & 0xFF, (eax >> 8) & 0xFF


def perf_global_ctrl_defined(cpu: PhysicalCpu) -> int:
    """IA32_PERF_GLOBAL_CTRL bits that enable a counter CPUID leaf 0AH enumerates."""
    if cpu.cpuid(0, 0)[0] < 0xA:
        return 0
    eax, _, _, edx = cpu.cpuid(0xA, 0)
    general = (1 << ((eax >> 8) & 0xFF)) - 1
    fixed = ((1 << (edx & 0x1F)) - 1) << 32
    return general | fixed


def wrmsr_fault(cpu: PhysicalCpu, msr: int, value: int) -> MsrFault | None:
    """The #GP(0) a WRMSR of ``value`` to ``msr`` raises on this processor, if any
    (the rules of ``msrs.WRMSR_RULES``; MSRs without a rule accept any value)."""
    rule = msrs.WRMSR_RULES.get(msr)
    if rule is None:
        return None
    problem = None
    if rule.canonical and not canonical(value, address_widths(cpu)[1]):
        problem = "a non-canonical address"
    elif value & ~rule.defined:
        problem = f"reserved bits {value & ~rule.defined:#x}"
    elif rule.memory_types and msrs.pat_bad_entries(value):
        problem = f"no memory type in entries {msrs.pat_bad_entries(value)}"
    elif rule.counters and value & ~perf_global_ctrl_defined(cpu):
        problem = f"bits {value & ~perf_global_ctrl_defined(cpu):#x} of absent counters"
    if problem is None:
        return None
    name = msrs.msr_name(msr)
    return MsrFault(msr, write=True, reason=f"WRMSR of {value:#x} to {name} ({msr:#x}): {problem}")


def _ascii_regs(text: str) -> tuple[int, ...]:
    raw = text.encode().ljust(4 * ((len(text) + 3) // 4), b"\0")
    return tuple(int.from_bytes(raw[i : i + 4], "little") for i in range(0, len(raw), 4))


def _vendor_leaf(max_leaf: int, vendor: str) -> CpuidRegisters:
    ebx, edx, ecx = _ascii_regs(vendor)
    return (max_leaf, ebx, ecx, edx)


def _brand_leaves(brand: str) -> dict[int | tuple[int, int], CpuidRegisters]:
    w = _ascii_regs(brand.ljust(48, "\0")[:48])
    return {0x80000002 + i: (w[4 * i], w[4 * i + 1], w[4 * i + 2], w[4 * i + 3]) for i in range(3)}


_LEAF1_EDX = sum(1 << b for b in (0, 3, 4, 5, 6, 8, 9, 11, 12, 13, 15, 16, 19, 23, 24, 25, 26))
_LEAF1_ECX = sum(1 << b for b in (0, 1, 9, 13, 19, 20, 23))
_EXT1_EDX = sum(1 << b for b in (11, 20, 26, 27, 29))

# The model's clocks: a 100 MHz crystal, TSC and core at TSC_MHZ.  Leaves 0x15 and 0x16 let
# a guest kernel read its TSC frequency instead of timing it against the PIT, which on
# a software CPU costs hundreds of thousands of port exits for no information.
CRYSTAL_HZ = 100_000_000
TSC_MHZ = 2600

# Leaves whose subleaf matters are keyed (leaf, subleaf); the rest by leaf.
DEFAULT_CPUID: dict[int | tuple[int, int], CpuidRegisters] = {
    0x0: _vendor_leaf(0x16, "GenuineIntel"),
    0x1: (0x000506E3, 0x00000800, _LEAF1_ECX, _LEAF1_EDX),
    (0x7, 0): (0, 0x00000001, 0, 0),
    0x15: (1, TSC_MHZ * 1_000_000 // CRYSTAL_HZ, CRYSTAL_HZ, 0),
    0x16: (TSC_MHZ, TSC_MHZ, 100, 0),
    0x80000000: (0x80000008, 0, 0, 0),
    0x80000001: (0, 0, 0x00000001, _EXT1_EDX),
    **_brand_leaves("pyflank model CPU"),
    0x80000008: (0x00003027, 0, 0, 0),
}
SUBLEAF_LEAVES = frozenset({0x4, 0x7, 0xB, 0xD, 0xF, 0x10, 0x12, 0x14, 0x17, 0x18, 0x1F})

# A Skylake-class VMX feature set; TRUE controls (bit 55 of IA32_VMX_BASIC) on.
DEFAULT_MSRS: dict[int, int] = {
    msrs.IA32_TIME_STAMP_COUNTER: 0,
    msrs.IA32_APIC_BASE: 0xFEE00900,
    msrs.IA32_FEATURE_CONTROL: 0x5,
    msrs.IA32_MISC_ENABLE: 0x1,
    msrs.IA32_SYSENTER_CS: 0,
    msrs.IA32_SYSENTER_ESP: 0,
    msrs.IA32_SYSENTER_EIP: 0,
    msrs.IA32_DEBUGCTL: 0,
    msrs.IA32_PAT: 0x0007040600070406,
    msrs.IA32_PERF_GLOBAL_CTRL: 0,
    msrs.IA32_EFER: 0,
    msrs.IA32_STAR: 0,
    msrs.IA32_LSTAR: 0,
    msrs.IA32_FMASK: 0,
    msrs.IA32_FS_BASE: 0,
    msrs.IA32_GS_BASE: 0,
    msrs.IA32_KERNEL_GS_BASE: 0,
    msrs.IA32_TSC_AUX: 0,
}
VMX_CAPABILITY_MSRS: dict[int, int] = {
    msrs.IA32_VMX_BASIC: 0x00DA0400_00000004,
    msrs.IA32_VMX_PINBASED_CTLS: 0x0000007F_00000016,
    msrs.IA32_VMX_PROCBASED_CTLS: 0xFFF9FFFE_0401E172,
    msrs.IA32_VMX_EXIT_CTLS: 0x01FFFFFF_00036DFF,
    msrs.IA32_VMX_ENTRY_CTLS: 0x0003FFFF_000011FF,
    msrs.IA32_VMX_MISC: 0x00000000_300481E5,
    msrs.IA32_VMX_CR0_FIXED0: 0x80000021,
    msrs.IA32_VMX_CR0_FIXED1: 0xFFFFFFFF,
    msrs.IA32_VMX_CR4_FIXED0: 0x00002000,
    msrs.IA32_VMX_CR4_FIXED1: 0x003727FF,
    msrs.IA32_VMX_VMCS_ENUM: 0x2E,
    msrs.IA32_VMX_PROCBASED_CTLS2: 0x005FFFFF_00000000,
    msrs.IA32_VMX_EPT_VPID_CAP: 0x00000F01_06734141,
    msrs.IA32_VMX_TRUE_PINBASED_CTLS: 0x0000007F_00000016,
    msrs.IA32_VMX_TRUE_PROCBASED_CTLS: 0xFFF9FFFE_04006172,
    msrs.IA32_VMX_TRUE_EXIT_CTLS: 0x01FFFFFF_00036DFB,
    msrs.IA32_VMX_TRUE_ENTRY_CTLS: 0x0003FFFF_000011FB,
    msrs.IA32_VMX_VMFUNC: 0x1,
}


class ModelCpu:
    """A deterministic processor model; tables can be replaced per instance."""

    def __init__(
        self,
        cpuid_table: dict[int | tuple[int, int], CpuidRegisters] | None = None,
        msr_values: dict[int, int] | None = None,
    ) -> None:
        self.cpuid_table = dict(DEFAULT_CPUID if cpuid_table is None else cpuid_table)
        self.msrs = dict(DEFAULT_MSRS if msr_values is None else msr_values)
        self.read_only_msrs = dict(VMX_CAPABILITY_MSRS)
        self.wbinvd_count = 0
        basic_max = self.cpuid_table.get(0, (0, 0, 0, 0))[0]
        self._basic_max = basic_max

    def cpuid(self, leaf: int, subleaf: int) -> CpuidRegisters:
        regs = self.cpuid_table.get(leaf)
        if regs is not None:  # the common case: a leaf without subleaves
            return regs
        leaf &= 0xFFFF_FFFF
        if leaf in SUBLEAF_LEAVES:
            regs = self.cpuid_table.get((leaf, subleaf & 0xFFFF_FFFF))
            if regs is not None:
                return regs
        ext_max = self.cpuid_table.get(0x80000000, (0, 0, 0, 0))[0]
        in_range = leaf <= self._basic_max or 0x80000000 <= leaf <= ext_max
        if in_range or 0x40000000 <= leaf < 0x50000000:
            return (0, 0, 0, 0)
        # SDM: an out-of-range leaf returns the data of the highest basic leaf.
        return self.cpuid(self._basic_max, subleaf)

    def rdmsr(self, msr: int) -> int:
        value = self.msrs.get(msr)
        if value is None:
            value = self.read_only_msrs.get(msr)
            if value is None:
                raise MsrFault(msr, write=False)
        return value

    def wrmsr(self, msr: int, value: int) -> None:
        if msr not in self.msrs:
            raise MsrFault(msr, write=True)
        self.msrs[msr] = self.accepted(msr, value)

    def accepted(self, msr: int, value: int) -> int:
        """``value`` as a WRMSR to ``msr`` stores it; ``MsrFault`` if the MSR refuses it."""
        value &= _MASK64
        fault = wrmsr_fault(self, msr, value)
        if fault is not None:
            raise fault
        return value

    def wbinvd(self) -> None:
        self.wbinvd_count += 1
