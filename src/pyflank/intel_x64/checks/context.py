"""One VM entry's view of the VMCS and the processor, shared by every check.

The VMCS is read once into a dict and the conditions most rules depend on
(IA-32e mode guest, unrestricted guest, virtual-8086, ...) are computed once;
capability MSRs and CPUID are read only when a check first needs them.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cached_property

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64 import msrs
from pyflank.intel_x64.checks import bits as b
from pyflank.intel_x64.checks.registry import Problem
from pyflank.intel_x64.cpu import (
    MsrFault,
    PhysicalCpu,
    address_widths,
    canonical,
    perf_global_ctrl_defined,
)
from pyflank.intel_x64.fields import FIELD_BY_ENCODING
from pyflank.intel_x64.vmcs import Vmcs

_NAMES = {encoding: field.name for encoding, field in FIELD_BY_ENCODING.items()}


def upper_bits_identical(address: int, width: int) -> bool:
    """Bits 63:width all equal: the weaker form the SDM asks of guest RIP."""
    top = (address & b.MASK64) >> width
    return top == 0 or top == (1 << (64 - width)) - 1


def disallowed_bits(value: int, capability: int) -> int:
    """Control bits that break an allowed-0/allowed-1 capability MSR (SDM A.3)."""
    must_be_one = capability & b.MASK32
    may_be_one = capability >> 32
    return (must_be_one & ~value | value & ~may_be_one) & b.MASK32


class EntryContext:
    """The VMCS values and processor facts a VM entry checks against."""

    def __init__(self, vmcs: Vmcs, cpu: PhysicalCpu, *, host_in_ia32e_mode: bool = True) -> None:
        self.cpu = cpu
        # pyflank's VMM is 64-bit code, so a VM entry starts in IA-32e mode unless
        # a caller models a 32-bit VMM (SDM 26.2.4 depends on it).
        self.host_in_ia32e_mode = host_in_ia32e_mode
        self.values = v = vmcs.fields()
        self.pin = v[f.PIN_BASED_VM_EXECUTION_CONTROLS]
        self.proc = proc = v[f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS]
        # With "activate secondary controls" 0 the processor acts as if they were 0.
        secondary = v[f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS]
        self.proc2 = secondary if proc & b.PROC_SECONDARY else 0
        # Likewise the tertiary and the secondary VM-exit controls.
        tertiary = v[f.TERTIARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS]
        self.proc3 = tertiary if proc & b.PROC_TERTIARY else 0
        self.exit = exit_ = v[f.VM_EXIT_CONTROLS]
        secondary_exit = v[f.SECONDARY_VM_EXIT_CONTROLS]
        self.exit2 = secondary_exit if exit_ & b.EXIT_SECONDARY else 0
        self.entry = entry = v[f.VM_ENTRY_CONTROLS]
        self.ia32e_guest = bool(entry & b.ENTRY_IA32E)
        self.unrestricted = bool(self.proc2 & b.PROC2_UNRESTRICTED)
        self.cr0 = v[f.GUEST_CR0]
        self.cr4 = v[f.GUEST_CR4]
        self.rflags = v[f.GUEST_RFLAGS]
        self.v8086 = bool(self.rflags & b.RFLAGS_VM)
        # The guest will use FRED transitions: IA-32e mode with CR4.FRED set.
        self.fred_guest = self.ia32e_guest and bool(self.cr4 & b.CR4_FRED)
        self.event = event = v[f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD]
        self.event_valid = bool(event & b.EVENT_VALID)
        self.event_type = (event >> 8) & 0x7
        self.event_vector = event & 0xFF
        self._msrs: dict[int, int] = {}

    # -- field access -------------------------------------------------------
    def __getitem__(self, encoding: int) -> int:
        return self.values[encoding]

    def named(self, *encodings: int) -> dict[str, int]:
        """Field name -> value, for a violation's report."""
        return {_NAMES[e]: self.values[e] for e in encodings}

    # -- capability MSRs (SDM Vol. 3D, Appendix A) ----------------------------
    def msr(self, index: int) -> int:
        """An MSR's value; one the processor lacks reads as 0 (no feature allowed)."""
        value = self._msrs.get(index)
        if value is None:
            try:
                value = self.cpu.rdmsr(index)
            except MsrFault:
                value = 0
            self._msrs[index] = value
        return value

    @cached_property
    def true_controls(self) -> bool:
        return bool(self.msr(msrs.IA32_VMX_BASIC) & msrs.VMX_BASIC_TRUE_CONTROLS)

    def control_capability(self, plain: int, true: int) -> tuple[str, int]:
        """The capability MSR VM entry consults: the TRUE one when BASIC bit 55 says so."""
        index = true if self.true_controls else plain
        return msrs.msr_name(index), self.msr(index)

    @cached_property
    def address_width(self) -> int:
        """Bits a VMX structure's physical address may use."""
        if self.msr(msrs.IA32_VMX_BASIC) & b.BASIC_32BIT_ADDRESSES:
            return min(32, self.physical_width)
        return self.physical_width

    # -- CPUID -------------------------------------------------------------
    @cached_property
    def _address_sizes(self) -> tuple[int, int]:
        return address_widths(self.cpu)

    @cached_property
    def physical_width(self) -> int:
        return self._address_sizes[0]

    @cached_property
    def linear_width(self) -> int:
        return self._address_sizes[1]

    @cached_property
    def sgx(self) -> bool:
        """CPUID.(EAX=07H,ECX=0):EBX[2]: the processor supports SGX."""
        if self.cpu.cpuid(0, 0)[0] < 7:
            return False
        return bool(self.cpu.cpuid(7, 0)[1] & 1 << 2)

    @cached_property
    def perf_global_ctrl_defined(self) -> int:
        """IA32_PERF_GLOBAL_CTRL bits that enable a counter this processor has."""
        return perf_global_ctrl_defined(self.cpu)

    # -- helpers the rules share ----------------------------------------------
    def is_canonical(self, address: int) -> bool:
        return canonical(address, self.linear_width)

    def beyond_width(self, address: int) -> bool:
        return address >> self.address_width != 0

    def misaligned_or_wide(self, address: int, alignment_bits: int = 12) -> bool:
        """Low bits set, or bits beyond the physical-address width."""
        return bool(address & ((1 << alignment_bits) - 1)) or self.beyond_width(address)


def physical_address(
    ctx: EntryContext, encoding: int, what: str, alignment: int = 12
) -> Iterator[Problem]:
    """The problem with a VMX structure's address: misaligned or too wide."""
    if ctx.misaligned_or_wide(ctx[encoding], alignment):
        yield (
            f"{what} must be {1 << alignment}-byte aligned and within the "
            f"{ctx.address_width}-bit physical-address width",
            ctx.named(encoding),
        )


def reserved_controls(ctx: EntryContext, encoding: int, plain: int, true: int) -> Iterator[Problem]:
    """The problem with a 32-bit control field against its (TRUE) capability MSR."""
    msr_name, capability = ctx.control_capability(plain, true)
    bad = disallowed_bits(ctx[encoding], capability)
    if bad:
        fields = ctx.named(encoding) | {msr_name: capability}
        yield f"bits {bad:#x} are set against {msr_name} (or clear though required)", fields
