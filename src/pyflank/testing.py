"""Drive an exit handler through a software VMCS, without a backend.

Bareflank's unit tests drove the exit handler through a fake VMCS; this is the
same for pyflank users: build an ``ExitHarness`` around your handler class,
put values in guest registers and memory, call ``exit(...)`` and look at what
the guest would see.
"""

from __future__ import annotations

from collections.abc import Callable

from pyflank import guests
from pyflank.abi import VMCALL_VERSION
from pyflank.abi.version import VERSION
from pyflank.exit_handler import ExitHandlerIntelX64, StateSave
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks.valid_state import default_controls, long_mode_guest_state
from pyflank.intel_x64.cpu import ModelCpu
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.memory import GuestPhysicalMemory, PageTableBuilder

MIB = 1 << 20
HARNESS_GDT = 0x8000
HARNESS_TSS = 0x9000

HARNESS_TABLES = (0x10000, 0x40000)  # page-table area [base, limit)
HARNESS_RIP = 0x100000
HARNESS_RSP = 0x200000


def versions_loop(calls: int, counts: int = 0x280000) -> str:
    """The guest SDK's VERSIONS loop (``versions_loop.s``): ``calls`` checked vmcalls;
    R12 counts them, R13 the wrong replies, vCPU n stores its count at ``counts + 8 n``."""
    constants = {
        "CALLS": calls,
        "COUNTS": counts,
        "PROTOCOL_MAJOR": VMCALL_VERSION,
        "PYFLANK_MAJOR": VERSION[0],
        "PYFLANK_MINOR": VERSION[1],
    }
    head = "".join(f".equ {name}, {value:#x}\n" for name, value in constants.items())
    return head + guests.read("versions_loop.s")


class ExitHarness:
    """One vCPU's VMCS, StateSave, CPU model and long-mode guest memory."""

    def __init__(
        self,
        handler: Callable[[], ExitHandlerIntelX64] = ExitHandlerIntelX64,
        memory_size: int = 4 * MIB,
    ) -> None:
        self.memory = GuestPhysicalMemory(memory_size)
        """Guest RAM, identity-mapped by ``page_tables``."""
        self.page_tables = PageTableBuilder(self.memory, *HARNESS_TABLES)
        """The guest's page tables; ``map`` adds mappings (DATA buffers, say)."""
        self.page_tables.identity_map(0, memory_size)
        self.vmcs = Vmcs()
        """A VMCS that passes every VM-entry check, launched."""
        self.state = StateSave()
        """The guest registers the handler sees and changes."""
        self.cpu = ModelCpu()
        """The CPU model behind CPUID and the MSRs."""
        self.handler = handler()
        """The handler under test, wired to all of the above."""
        self.handler.set_vmcs(self.vmcs)
        self.handler.set_state_save(self.state)
        self.handler.set_cpu(self.cpu)
        self.handler.set_memory(self.memory)
        vmcs = self.vmcs
        # A VMCS that passes every VM-entry check, as a real long-mode guest's would.
        default_controls(vmcs, self.cpu)
        long_mode_guest_state(
            vmcs, cr3=self.page_tables.cr3, rip=HARNESS_RIP, rsp=HARNESS_RSP,
            gdt_base=HARNESS_GDT, gdt_limit=0x1F, tr_base=HARNESS_TSS,
        )  # fmt: skip
        self.state.rip, self.state.rsp = HARNESS_RIP, HARNESS_RSP
        self.handler.setup(vmcs)  # the controls the handler chooses, as the VMM would
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
        """The handler's debug ring as text."""
        return self.handler.m_debug_ring.read()
