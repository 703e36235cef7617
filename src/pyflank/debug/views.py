"""A stopped vCPU's registers and memory, as a debugger reads and writes them.

Where the guest stopped decides where its state is.  In the engine, between two
instructions (a breakpoint, a step, a stop asked for), the engine holds all of it
(``EngineView``).  At a VM exit, and while halted waiting for an interrupt, the
processor has saved the guest: the general registers and RIP in StateSave, RFLAGS, the
selectors, the FS/GS bases, CR0/CR3/CR4 and EFER in the VMCS (``ExitView``); what an exit
does not save (the x87 and SSE state, CR2, CR8) is still the engine's.  Either way guest
memory is read through the guest's own paging at that moment (``linear``), or as guest-
physical addresses.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.paging import guest_linear
from pyflank.intel_x64.register_set import BY_NAME
from pyflank.memory import GuestLinear, GuestPhysicalMemory, PageFault
from pyflank.memory.physical import GuestMemoryError

if TYPE_CHECKING:
    from pyflank.backends.emu.debug import EngineDebug
    from pyflank.exit_handler import StateSave
    from pyflank.intel_x64.vmcs import Vmcs
    from pyflank.processor import VmxProcessor

EXIT_WRITABLE = frozenset({"eflags", "fs_base", "gs_base"})
"""The VMCS-held registers a debugger may write at an exit (the entry loads and checks
them); the general registers and RIP are StateSave's and always writable."""


class RegisterView(Protocol):
    memory: GuestPhysicalMemory

    def read(self, name: str) -> int:
        """The register ``name`` (``intel_x64.register_set``)."""
        ...

    def write(self, name: str, value: int) -> None:
        """Set ``name``; ``PermissionError`` where it cannot be written here."""
        ...

    def linear(self) -> GuestLinear:
        """Guest memory through the guest's paging now."""
        ...


class EngineView:
    """The guest stopped in the engine, between two instructions."""

    def __init__(self, debug: EngineDebug, memory: GuestPhysicalMemory) -> None:
        self.debug = debug
        self.memory = memory

    def read(self, name: str) -> int:
        return self.debug.read_register(name)

    def write(self, name: str, value: int) -> None:
        self.debug.write_register(name, value)

    def linear(self) -> GuestLinear:
        return self.debug.linear()


class SavedGuest(Protocol):
    """Where a vCPU's guest is saved (``debug.parking.Parking`` is one)."""

    state: StateSave
    vmcs: Vmcs
    processor: VmxProcessor | None
    debug: EngineDebug
    memory: GuestPhysicalMemory


class ExitView:
    """The guest as the processor saved it (at an exit, or halted)."""

    def __init__(self, saved: SavedGuest) -> None:
        assert saved.processor is not None, "the processor exists while the vCPU runs"
        self.state = saved.state
        self.vmcs = saved.vmcs
        self.processor = saved.processor
        self.debug = saved.debug
        self.memory = saved.memory

    def read(self, name: str) -> int:
        register = BY_NAME[name]
        if register.state_save is not None:
            value: int = getattr(self.state, register.state_save)
            return value
        if register.vmcs is not None:
            return self.vmcs.read(register.vmcs)
        return self.debug.read_register(name)

    def write(self, name: str, value: int) -> None:
        register = BY_NAME[name]
        if register.state_save is not None:
            setattr(self.state, register.state_save, value & (1 << 64) - 1)
        elif register.vmcs is not None and name in EXIT_WRITABLE:
            self.vmcs.write(register.vmcs, value)  # dirty: the next entry loads it
            self.processor.vmcs_written()
        else:
            raise PermissionError(f"{name} cannot be written at a VM exit")

    def linear(self) -> GuestLinear:
        read = self.vmcs.read
        return guest_linear(
            self.memory, cr0=read(f.GUEST_CR0), cr3=read(f.GUEST_CR3),
            efer=read(f.GUEST_IA32_EFER),
        )  # fmt: skip


def read_memory(view: RegisterView, address: int, length: int, *, physical: bool) -> bytes:
    """Up to ``length`` bytes at ``address`` (guest-linear, or guest-physical): fewer where
    the mapping or RAM ends, none if the first byte cannot be read."""
    if physical:
        end = min(address + length, view.memory.size)
        return view.memory.read(address, end - address) if address < end else b""
    try:
        linear = view.linear()
    except ValueError:  # a paging mode pyflank does not walk
        return b""
    return linear.read_available(address, length, execute=False)


def write_memory(view: RegisterView, address: int, data: bytes, *, physical: bool) -> bool:
    """Write ``data`` at ``address``; False (nothing written) if any byte cannot be."""
    try:
        if physical:
            view.memory.write(address, data)
        else:
            view.linear().write(address, data)
    except (PageFault, GuestMemoryError, ValueError):
        return False
    return True
