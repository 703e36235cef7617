"""A direct 64-bit boot: what firmware and a loader would leave for the first instruction.

Guest-physical layout (``BootLayout``): a GDT (null, 64-bit code 0x08, data 0x10, then a
64-bit TSS descriptor per vCPU from 0x18), one TSS per vCPU, page tables identity-mapping
all of RAM with 2 MiB pages (room left for more mappings), a stack per vCPU, and the
program at ``load_address``.  Each vCPU's VMCS gets a long-mode guest state that passes
the VM-entry checks, and the fewest controls the capability MSRs allow.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks.valid_state import (
    CODE_SELECTOR,
    DATA_SELECTOR,
    TSS_LIMIT,
    default_controls,
    long_mode_guest_state,
)
from pyflank.intel_x64.cpu import PhysicalCpu
from pyflank.intel_x64.registers import CR4_OSFXSR, CR4_OSXMMEXCPT
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.memory import PAGE_SIZE_2M, GuestPhysicalMemory, PageTableBuilder

CODE64_DESCRIPTOR = 0x00AF_9B00_0000_FFFF  # L, P, DPL 0, execute/read, accessed
DATA_DESCRIPTOR = 0x00CF_9300_0000_FFFF  # G, D/B, P, DPL 0, read/write, accessed
_TSS_BUSY = 0x8B  # P, 64-bit TSS (busy, as VM entry requires of TR)
_Q = struct.Struct("<Q")


@dataclass(frozen=True)
class BootLayout:
    gdt: int = 0x1000
    tss: int = 0x2000  # TSS n at tss + n * tss_stride
    tss_stride: int = 0x80
    page_tables: int = 0x10000
    page_tables_end: int = 0x40000
    stacks_end: int = 0x80000  # vCPU n's stack ends at stacks_end - n * stack_size
    stack_size: int = 0x4000
    load_address: int = 0x100000
    max_vcpus: int = 16

    def tss_selector(self, vcpuid: int) -> int:
        return 0x18 + 16 * vcpuid

    def tss_base(self, vcpuid: int) -> int:
        return self.tss + vcpuid * self.tss_stride

    def stack_top(self, vcpuid: int) -> int:
        return self.stacks_end - vcpuid * self.stack_size

    def gdt_limit(self, vcpus: int) -> int:
        return self.tss_selector(vcpus) - 1


def _tss_descriptor(base: int, limit: int) -> tuple[int, int]:
    low = (limit & 0xFFFF) | (base & 0xFF_FFFF) << 16 | _TSS_BUSY << 40
    low |= ((limit >> 16) & 0xF) << 48 | ((base >> 24) & 0xFF) << 56
    return low, base >> 32


def write_descriptor_tables(memory: GuestPhysicalMemory, layout: BootLayout, vcpus: int) -> None:
    """The GDT and the TSSs (RSP0 = the vCPU's stack, for interrupts taken in ring 3)."""
    if not 0 < vcpus <= layout.max_vcpus:
        raise ValueError(f"{vcpus} vCPUs: the boot layout has room for 1..{layout.max_vcpus}")
    entries = [0, CODE64_DESCRIPTOR, DATA_DESCRIPTOR]
    for vcpuid in range(vcpus):
        entries.extend(_tss_descriptor(layout.tss_base(vcpuid), TSS_LIMIT))
        memory.fill(layout.tss_base(vcpuid), layout.tss_stride)
        memory.write_u64(layout.tss_base(vcpuid) + 4, layout.stack_top(vcpuid))
    memory.write(layout.gdt, b"".join(_Q.pack(e) for e in entries))


def identity_page_tables(memory: GuestPhysicalMemory, layout: BootLayout) -> PageTableBuilder:
    """Tables mapping all of RAM gva == gpa, writable and executable."""
    tables = PageTableBuilder(memory, layout.page_tables, layout.page_tables_end)
    tables.identity_map(0, memory.size, PAGE_SIZE_2M)
    return tables


def boot_vcpu(
    vmcs: Vmcs,
    cpu: PhysicalCpu,
    layout: BootLayout,
    *,
    vcpuid: int,
    vcpus: int,
    cr3: int,
    entry: int,
) -> None:
    """Long-mode guest state and default controls for one vCPU, starting at ``entry``."""
    long_mode_guest_state(
        vmcs,
        cr3=cr3,
        rip=entry,
        rsp=layout.stack_top(vcpuid),
        gdt_base=layout.gdt,
        gdt_limit=layout.gdt_limit(vcpus),
        tr_base=layout.tss_base(vcpuid),
    )
    vmcs.write(f.GUEST_TR_SELECTOR, layout.tss_selector(vcpuid))
    # SSE is usable from the first instruction, as after a kernel's early setup.
    vmcs.write(f.GUEST_CR4, vmcs.read(f.GUEST_CR4) | CR4_OSFXSR | CR4_OSXMMEXCPT)
    default_controls(vmcs, cpu)
    assert vmcs.read(f.GUEST_CS_SELECTOR) == CODE_SELECTOR
    assert vmcs.read(f.GUEST_DS_SELECTOR) == DATA_SELECTOR
