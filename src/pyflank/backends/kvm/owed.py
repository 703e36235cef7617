"""What KVM still owes the instruction behind an exit, which decides how the entry resumes.

KVM finishes some instructions itself on the *next* KVM_RUN (IN data, MMIO reads, MSR
exits, and an OUT it did not emulate): it skips the instruction after loading the
registers user space marked dirty.  The entry either lets that completion produce
exactly the handler's result, or completes first (KVM_RUN with ``immediate_exit``) and
then imposes the plan, so an instruction is never skipped twice and a RIP the handler
chose is honoured.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pyflank.backends.kvm.ept import PendingAccess

NOTHING: Final = 0  # the instruction is done (or never ran): load the plan as it is
COMPLETION: Final = 1  # KVM must finish it first
UNLESS_MOVED: Final = 2  # KVM skips it on the next run: finish first unless RIP moved on
MSR: Final = 3  # an RDMSR/WRMSR: KVM's own completion may do exactly what the handler did
ACCESS: Final = 4  # an EPT-hooked access (``ept``): against RAM if the EPT now allows it


class Owed:
    """The debt of the last exit: ``kind`` (one of the above) and the instruction's RIP."""

    __slots__ = ("access", "at", "kind", "regs", "write")

    def __init__(self) -> None:
        self.kind = NOTHING
        self.at = 0
        self.write = False  # for MSR: a WRMSR
        self.access: PendingAccess | None = None  # for ACCESS: what, and the registers then
        self.regs: tuple[int, ...] = ()

    def set(self, kind: int, at: int = 0) -> None:
        self.kind, self.at = kind, at
