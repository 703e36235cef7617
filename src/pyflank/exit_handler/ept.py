"""A vCPU's EPT as an extension builds it (``ExitHandlerIntelX64.ept``): real tables in SDM
format, in VMM memory the guest cannot reach, the EPTP pointing at them, and a small API
on top -- what a Bareflank or hvpp extension writes in C++.

    def setup(self, vmcs):
        self.ept.enable(vmcs)                       # guest RAM identity-mapped, rwx
        self.ept.protect(page, write=False)         # a write to the page: exit 48
    def handle_ept_violation(self):
        access = self.ept.violation()               # the qualification, GPA, GLA decoded

The processor walks the tables at the VM entry that loads the EPTP and after each
invalidation (INVEPT); ``protect`` and ``map`` invalidate for you, as hvpp's helpers do.
Tables edited by hand (``tables.entry_address``) need ``invalidate()``, as on hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.controls import SecondaryProcessorBasedControls as Proc2
from pyflank.intel_x64.qualifications import EptViolation
from pyflank.memory.ept import (
    EXECUTE,
    READ,
    RWX,
    WRITE,
    WRITE_BACK,
    EptTables,
    describe_permissions,
)
from pyflank.memory.physical import PAGE_SIZE

if TYPE_CHECKING:
    from pyflank.exit_handler.exit_handler_intel_x64 import ExitHandlerIntelX64
    from pyflank.intel_x64.vmcs import Vmcs

_PRIMARY = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
_SECONDARY = f.SECONDARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS


def permission_bits(*, read: bool, write: bool, execute: bool) -> int:
    return (READ if read else 0) | (WRITE if write else 0) | (EXECUTE if execute else 0)


@dataclass(frozen=True, slots=True)
class EptAccess:
    """An EPT violation, decoded: what was accessed, how, and what the EPT allowed."""

    qualification: EptViolation
    gpa: int
    gla: int | None  # None where the guest-linear-address field is invalid
    rip: int
    size: int = 0
    """The bytes the access covers on its page, where a ``MemoryHooks`` callback asks for
    them (an ``after`` callback); 0: not decoded."""

    @property
    def page(self) -> int:
        return self.gpa & ~(PAGE_SIZE - 1)

    @property
    def read(self) -> bool:
        return self.qualification.data_read

    @property
    def write(self) -> bool:
        return self.qualification.data_write

    @property
    def fetch(self) -> bool:
        return self.qualification.instruction_fetch

    def __str__(self) -> str:
        gla = "no linear address" if self.gla is None else f"gla {self.gla:#x}"
        return f"{self.qualification} at gpa {self.gpa:#x} ({gla}), rip {self.rip:#x}"


class Ept:
    """The EPT of one handler's vCPU: ``tables`` (``memory.ept.EptTables``) and the controls."""

    def __init__(self, handler: ExitHandlerIntelX64) -> None:
        self._handler = handler
        self.tables = EptTables(handler.host_memory(), memory_type=WRITE_BACK)

    @property
    def eptp(self) -> int:
        return self.tables.eptp

    @property
    def _vmcs(self) -> Vmcs:
        return self._handler.m_vmcs

    def enable(self, vmcs: Vmcs | None = None, *, identity: bool = True) -> None:
        """Turn EPT on: guest RAM identity-mapped with every permission (``identity``), the
        EPTP in the VMCS, "enable EPT" set (and the secondary controls activated)."""
        vmcs = vmcs or self._vmcs
        memory = self._handler.m_memory
        if identity:
            if memory is None:
                raise ValueError("no guest memory attached to this vCPU to identity-map")
            self.tables.identity_map(memory.size)
        vmcs.write(f.EPT_POINTER, self.eptp)
        vmcs.write(_PRIMARY, vmcs.read(_PRIMARY) | Proc.ACTIVATE_SECONDARY_CONTROLS)
        vmcs.write(_SECONDARY, vmcs.read(_SECONDARY) | Proc2.ENABLE_EPT)

    def use(self, eptp: int | None = None) -> None:
        """Run the guest under another EPT (tables of one's own, an EPT view) from the next
        entry on; None: back to ``tables``."""
        self._vmcs.write(f.EPT_POINTER, self.eptp if eptp is None else eptp)

    def disable(self, vmcs: Vmcs | None = None) -> None:
        """Turn EPT off (the tables stay as they are)."""
        vmcs = vmcs or self._vmcs
        vmcs.write(_SECONDARY, vmcs.read(_SECONDARY) & ~Proc2.ENABLE_EPT)

    def protect(
        self,
        gpa: int,
        size: int = 1,
        *,
        read: bool = True,
        write: bool = True,
        execute: bool = True,
    ) -> None:
        """Give the pages holding ``[gpa, gpa + size)`` (by default the one page ``gpa``
        is in) these permissions, and invalidate.  Write without read is an EPT
        misconfiguration."""
        first = gpa & ~(PAGE_SIZE - 1)
        end = -(-(gpa + size) // PAGE_SIZE) * PAGE_SIZE
        bits = permission_bits(read=read, write=write, execute=execute)
        self.tables.protect(first, end - first, bits)
        self.invalidate()

    def restore(self, gpa: int, size: int = 1) -> None:
        """Every permission back on the pages holding ``[gpa, gpa + size)``."""
        self.protect(gpa, size)

    def map(self, gpa: int, hpa: int, size: int, permissions: int = RWX) -> None:
        """Map guest-physical pages onto host-physical ones, and invalidate."""
        self.tables.map(gpa, hpa, size, permissions)
        self.invalidate()

    def permissions(self, gpa: int) -> str:
        """The permissions of ``gpa``'s page as ``rwx`` letters (``-`` for none)."""
        return describe_permissions(self.tables.permissions(gpa))

    def invalidate(self) -> None:
        """INVEPT: the next VM entry walks the tables again."""
        self._vmcs.invept()

    def violation(self) -> EptAccess:
        """The EPT violation of the current exit, decoded."""
        read = self._vmcs.read
        qualification = EptViolation.decode(read(f.EXIT_QUALIFICATION))
        gla = read(f.GUEST_LINEAR_ADDRESS) if qualification.guest_linear_address_valid else None
        return EptAccess(
            qualification, read(f.GUEST_PHYSICAL_ADDRESS), gla, self._handler.m_state_save.rip
        )
