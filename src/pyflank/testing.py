"""Drive an exit handler through a software VMCS, without a backend.

Bareflank's unit tests drove the exit handler through a fake VMCS; this is the
same for pyflank users: build an ``ExitHarness`` around your handler class,
put values in guest registers and memory, call ``exit(...)`` and look at what
the guest would see.
"""

from __future__ import annotations

from collections.abc import Callable

from pyflank.exit_handler import ExitHandlerIntelX64, StateSave
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.cpu import ModelCpu
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.memory import GuestPhysicalMemory, PageTableBuilder

MIB = 1 << 20
CR0_PE, CR0_NE, CR0_WP, CR0_PG = 1 << 0, 1 << 5, 1 << 16, 1 << 31
CR4_PAE = 1 << 5
EFER_LME, EFER_LMA, EFER_NXE = 1 << 8, 1 << 10, 1 << 11

HARNESS_TABLES = (0x10000, 0x40000)  # page-table area [base, limit)
HARNESS_RIP = 0x100000
HARNESS_RSP = 0x200000


class ExitHarness:
    """One vCPU's VMCS, StateSave, CPU model and long-mode guest memory."""

    def __init__(
        self,
        handler: Callable[[], ExitHandlerIntelX64] = ExitHandlerIntelX64,
        memory_size: int = 4 * MIB,
    ) -> None:
        self.memory = GuestPhysicalMemory(memory_size)
        self.page_tables = PageTableBuilder(self.memory, *HARNESS_TABLES)
        self.page_tables.identity_map(0, memory_size)
        self.vmcs = Vmcs()
        self.state = StateSave()
        self.cpu = ModelCpu()
        self.handler = handler()
        self.handler.set_vmcs(self.vmcs)
        self.handler.set_state_save(self.state)
        self.handler.set_cpu(self.cpu)
        self.handler.set_memory(self.memory)
        vmcs = self.vmcs
        vmcs.write(f.GUEST_CR0, CR0_PE | CR0_NE | CR0_WP | CR0_PG)
        vmcs.write(f.GUEST_CR3, self.page_tables.cr3)
        vmcs.write(f.GUEST_CR4, CR4_PAE)
        vmcs.write(f.GUEST_IA32_EFER, EFER_LME | EFER_LMA | EFER_NXE)
        vmcs.write(f.GUEST_IA32_PAT, self.cpu.rdmsr(0x277))
        self.state.rip, self.state.rsp = HARNESS_RIP, HARNESS_RSP
        vmcs.load()
        vmcs.launch()
        vmcs.dirty.clear()

    def exit(
        self,
        reason: int,
        *,
        length: int = 0,
        qualification: int = 0,
        **registers: int,
    ) -> None:
        """Exit to the handler as the processor would, then dispatch."""
        vmcs, state = self.vmcs, self.state
        state.update(registers)
        vmcs.processor_write(f.VM_EXIT_REASON, reason)
        vmcs.processor_write(f.VM_EXIT_INSTRUCTION_LENGTH, length)
        vmcs.processor_write(f.EXIT_QUALIFICATION, qualification)
        vmcs.processor_write(f.GUEST_RIP, state.rip)
        vmcs.processor_write(f.GUEST_RSP, state.rsp)
        self.handler.dispatch()

    @property
    def debug_ring(self) -> str:
        return self.handler.m_debug_ring.read()
