"""Running exactly one guest instruction on the software CPU: for the monitor trap flag, and
for an instruction the EPT allows that the nested page table stopped (``nested``).

The step is the processor's own single-step trap: RFLAGS.TF set behind the guest's back.
QEMU then translates a block of that one instruction and raises #DB after it, which the
SVM exception intercept brings to the hooks before anything else runs.  The guest never
sees the flag: it is taken away before anything reads the guest's RFLAGS (an exit's
record, an exception frame or SYSCALL's R11, both written by pyflank), PUSHF's copy on
the stack is mended, and DR6 gets back the value the trap changed.  An instruction that
loads RFLAGS itself (POPF, IRET, SYSRET) keeps the TF it loaded; a guest that was
single-stepping itself gets its own #DB after the step.

A step ends at the trap (the instruction completed), or earlier when the instruction
exits, faults, or the engine stops for another reason: ``interrupted`` then puts the
guest's flag back without touching memory.  QEMU checks TF again after SYSRET (and
SYSCALL), so SYSRET to a guest whose R11 clears TF raises no trap: the stop gate (which
stops the engine at a block start) is set to stop at the block after the stepped one,
which then ends the step all the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iced_x86 import Mnemonic
from unicorn import x86_const as x86

from pyflank.backends.emu import cpu_msrs
from pyflank.intel_x64 import decode as dec
from pyflank.intel_x64.msrs import IA32_EFER
from pyflank.intel_x64.paging import guest_linear
from pyflank.intel_x64.registers import RFLAGS_TF
from pyflank.memory import GuestMemoryError, PageFault

if TYPE_CHECKING:
    from pyflank.backends.emu.engine import Engine
    from pyflank.backends.emu.nested import NestedPaging
    from pyflank.backends.emu.stop_gate import GateState
    from pyflank.memory import GuestPhysicalMemory
    from pyflank.processor import ExitRecord

_DR6_BS = 1 << 14
_PUSHF = {Mnemonic.PUSHF: 2, Mnemonic.PUSHFD: 4, Mnemonic.PUSHFQ: 8}
_LOADS_FLAGS = frozenset(
    {
        Mnemonic.POPF, Mnemonic.POPFD, Mnemonic.POPFQ, Mnemonic.IRET, Mnemonic.IRETD,
        Mnemonic.IRETQ, Mnemonic.SYSRET, Mnemonic.SYSRETQ,
    }
)  # fmt: skip


class Stepper:
    """The single step of one engine: ``arm`` it, and end it with ``finished`` (the trap
    came) or ``interrupted`` (anything else)."""

    __slots__ = (
        "_dr6", "_end_at", "_saved_end", "armed", "engine", "gate", "guest_tf", "memory",
        "monitor_trap", "nested", "rip",
    )  # fmt: skip

    def __init__(
        self, engine: Engine, memory: GuestPhysicalMemory, nested: NestedPaging, gate: GateState
    ) -> None:
        self.engine = engine
        self.memory = memory
        self.nested = nested
        self.gate = gate  # the stop gate's progress count and budget
        self._saved_end = self._end_at = 0
        self.armed = False
        self.monitor_trap = False  # the step ends in an MTF exit (else it is the engine's own)
        self.guest_tf = 0  # the guest's RFLAGS.TF under ours
        self.rip = 0  # the instruction being stepped
        self._dr6 = 0

    def arm(
        self, rip: int, guest_tf: int, *, monitor_trap: bool, set_flag: bool, skip: int = 0
    ) -> None:
        """Step the instruction at ``rip``; ``set_flag``: write TF into the engine now
        (else the entry that runs next loads it); ``skip``: bytes of the engine's own code
        (the entry stub) that run first."""
        e = self.engine
        if set_flag:
            e.write(x86.UC_X86_REG_RFLAGS, e.read(x86.UC_X86_REG_RFLAGS) | RFLAGS_TF)
        self.armed, self.monitor_trap, self.guest_tf, self.rip = True, monitor_trap, guest_tf, rip
        self._dr6 = e.read(x86.UC_X86_REG_DR6)
        gate = self.gate
        self._saved_end, self._end_at = gate.budget_end, gate.executed + skip + 1
        gate.budget_end = min(self._saved_end, self._end_at)

    def gate_stopped(self) -> bool:
        """The stop gate stopped the engine at the block after the stepped one."""
        return bool(self.gate.executed >= self._end_at)

    def extend(self, *, monitor_trap: bool) -> None:
        """Another reason to stop after the instruction already being stepped."""
        self.monitor_trap = self.monitor_trap or monitor_trap

    def hide(self, rflags: int) -> int:
        """``rflags`` as the guest has them (without the step's TF)."""
        return rflags & ~RFLAGS_TF | self.guest_tf

    def interrupted(self) -> None:
        """The instruction did not complete (it exited, faulted, or never started): the
        guest's own flag back, the NPT back to what the EPT says."""
        if not self.armed:
            return
        e = self.engine
        e.write(x86.UC_X86_REG_RFLAGS, self.hide(e.read(x86.UC_X86_REG_RFLAGS)))
        e.write(x86.UC_X86_REG_DR6, self._dr6)
        self._end()

    def finished(self) -> bool:
        """The trap came: the instruction completed.  True if the guest was single-stepping
        itself (its own #DB is due now)."""
        e = self.engine
        # The instruction is decoded now, in the guest's paging (at arming time the engine
        # may be about to enter through the stub, on its own page tables).
        ins = dec.decode(e.fetch(self.rip), self.rip)
        rflags = e.read(x86.UC_X86_REG_RFLAGS)
        if ins.mnemonic not in _LOADS_FLAGS:
            rflags = self.hide(rflags)
        e.write(x86.UC_X86_REG_RFLAGS, rflags)
        own_trap = bool(self.guest_tf)
        if not own_trap:
            e.write(x86.UC_X86_REG_DR6, self._dr6)
        pushed = _PUSHF.get(ins.mnemonic, 0)
        if pushed:
            self._mend_pushed_flags(pushed)
        self._end()
        return own_trap

    def record(self, record: ExitRecord) -> ExitRecord:
        """An exit record taken during the step, with the guest's RFLAGS."""
        return record._replace(rflags=self.hide(record.rflags))

    def _end(self) -> None:
        self.armed = False
        self.gate.budget_end = self._saved_end
        self.nested.restore()

    def _mend_pushed_flags(self, size: int) -> None:
        """PUSHF pushed our TF: the copy on the guest's stack gets the guest's."""
        e = self.engine
        cr0, cr3 = e.read(x86.UC_X86_REG_CR0), e.read(x86.UC_X86_REG_CR3)
        efer = cpu_msrs.read_msr(e, IA32_EFER)
        linear = guest_linear(self.memory, cr0=cr0, cr3=cr3, efer=efer)
        rsp = e.read(x86.UC_X86_REG_RSP)
        try:
            pushed = int.from_bytes(linear.read(rsp, size), "little")
            mended = pushed & ~RFLAGS_TF | self.guest_tf
            linear.write(rsp, mended.to_bytes(size, "little"))
        except (PageFault, GuestMemoryError):
            pass  # the push itself would have faulted: nothing was pushed
