"""What a VM exit saves, read from unicorn: the registers, and the guest state that moved.

Guest-state fields a guest can change without exiting (control registers, selectors,
GDTR/IDTR/LDTR/TR, FS/GS bases, DR7) are checked at every exit; the hidden part of a
segment register comes from the descriptor its selector names.  CR4.VMXE is reported set
(VMX operation keeps it) and reads as 0 in the guest, as with a guest/host mask on it.

Checking is cheap: the register file is copied out in place (``register_file``) and its
bytes after the general registers compared with those of the last capture.  Equal,
nothing moved; else only what did is read again: RFLAGS from the copy where the
condition codes allow and through the API otherwise, and the system registers through
the API, reported only if they differ from what was reported last.  A capture whose
report does not reach the processor (an exception delivered without an exit, an entry
that loads new state) is followed by ``forget``: the next capture then reports it all.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import x86_const as x86

from pyflank.backends.emu import cpu_msrs
from pyflank.backends.emu.engine import RegisterBatch
from pyflank.backends.emu.guest_state import save_segments, save_system_segment
from pyflank.backends.emu.register_file import CC_AT, HEAD_VALUES, NEVER_SEEN
from pyflank.backends.emu.register_probe import register_file
from pyflank.backends.emu.stop_gate import GateState
from pyflank.backends.emu.svm import EFER_SVME
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.msrs import IA32_EFER
from pyflank.intel_x64.paging import guest_linear
from pyflank.intel_x64.registers import CR4_VMXE
from pyflank.processor import ExitInformation, ExitRecord

if TYPE_CHECKING:
    import ctypes
    from collections.abc import Callable

    from pyflank.backends.emu.engine import Engine
    from pyflank.backends.emu.register_file import RawHead, RegisterFile
    from pyflank.memory import GuestPhysicalMemory

_unpack_head = HEAD_VALUES.unpack_from
Captured = tuple[tuple[int, ...], int, "dict[int, int] | None"]  # regs, RFLAGS, moved fields
NO_EXIT = ExitInformation(-1)  # the information of a record that stands for no exit


class StateCapture:
    """The guest state of one engine, as the next exit record reports it."""

    __slots__ = (
        "_known",
        "_rflags_batch",
        "_seen_flags",
        "_seen_system",
        "cr0_owned",
        "dr7",
        "engine",
        "head",
        "memory",
        "noted",
        "progress",
        "registers",
        "rflags",
        "seen",
        "seen_regs",
        "system",
        "write_gprs",
    )  # fmt: skip

    def __init__(
        self, engine: Engine, memory: GuestPhysicalMemory, registers: RegisterFile | None = None
    ) -> None:
        self.engine = engine
        self.memory = memory
        self.registers = registers or register_file(engine.uc, engine.handle)
        self.head: RawHead = self.registers.head
        self.dr7: ctypes.c_uint64 = self.registers.dr7
        self.write_gprs: Callable[..., None] = self.registers.write_gprs  # QEMU's order
        self._rflags_batch = RegisterBatch(engine.handle, (x86.UC_X86_REG_RFLAGS,))
        # CR0 CR3 CR4 DR7, ES CS SS DS FS GS, FS/GS base: as last read (current while
        # nothing moved, for the exits that compute addresses from them).
        self.system: tuple[int, ...] = (0,) * 12
        self.rflags = 0  # exact, as of the last capture
        # Fields the engine changed itself (a WRMSR let through); always this one dict,
        # emptied in place (native exits look at its size).
        self.noted: dict[int, int] = {}
        self.cr0_owned = (0, 0)  # (CR0 guest/host mask, the real CR0's bits under it)
        self.progress = GateState(0, 0, 0)  # the engine's progress count (the vCPU's gate)
        self._known: tuple[tuple[int, ...], bytes] | None = None  # system state reported
        # Of the last capture: the head's compared bytes; RIP, RSP, eflags and DR7; the
        # system part and the rest of the flags' inputs.
        self.seen = NEVER_SEEN
        self.seen_regs = (-1, -1, -1, -1)
        self._seen_system = self._seen_flags = b""

    def capture(self) -> Captured:
        """The registers (``ExitRecord.regs`` order), exact RFLAGS, and what moved."""
        raw = self.head.raw
        v: tuple[int, ...] = _unpack_head(raw)
        guest = None
        if (v[16], v[4], v[17], self.dr7.value) != self.seen_regs or not raw.endswith(self.seen):
            guest = self.moved(raw, v)
        if self.noted:
            guest = self.take_noted(guest)
        return v, self.rflags, guest

    def record(self, info: ExitInformation, rip: int | None = None) -> ExitRecord:
        """An exit record of the current state; ``rip``: where the exit is, if not RIP."""
        v, rflags, guest = self.capture()
        rip = v[16] if rip is None else rip
        return ExitRecord(info, v, rip, rflags, guest, "", self.progress.executed)

    def snapshot(self) -> ExitRecord:
        """The current state, for a stop between exits."""
        return self.record(NO_EXIT)

    def pause_state(self, rip: int | None = None) -> ExitRecord:
        """The current state at a pause, with the interrupt shadow (interruptibility);
        ``rip`` past a HLT, whose execution ended any shadow (``sti; hlt`` waits)."""
        record = self.record(NO_EXIT, rip)
        blocked = int(rip is None and self.registers.interrupt_shadow(self.head.raw))
        guest = {**(record.guest or {}), f.GUEST_INTERRUPTIBILITY_STATE: blocked}
        return record._replace(guest=guest)

    def take_noted(self, guest: dict[int, int] | None) -> dict[int, int]:
        noted = dict(self.noted)
        self.noted.clear()
        if guest:
            noted.update(guest)
        return noted

    def forget(self) -> None:
        """The state changed behind the last report: the next capture reports everything."""
        self.seen = NEVER_SEEN
        self._known = None

    def moved(self, raw: bytes, v: tuple[int, ...]) -> dict[int, int] | None:
        """Bring ``rflags``/``system`` up to date after the head changed; the system fields
        that changed since the last report, or None (``raw``: the head, ``v``: its values).
        """
        regs = self.registers
        rip, rsp, eflags = v[16], v[4], v[17]
        dr7 = self.dr7.value
        system_at = regs.system_at
        seen_regs = self.seen_regs
        guest = None
        if (
            self.seen is NEVER_SEEN
            or self._known is None
            or dr7 != seen_regs[3]
            or not raw.endswith(self._seen_system)
        ):
            guest = self._through_api()
        elif eflags != seen_regs[2] or raw[CC_AT:system_at] != self._seen_flags:
            computed = regs.rflags(raw)
            self.rflags = self._rflags_batch.read()[0] if computed is None else computed
        self.seen_regs = (rip, rsp, eflags, dr7)
        self.seen = raw[regs.compared_from(raw) :]
        self._seen_system = raw[system_at:]
        self._seen_flags = raw[CC_AT:system_at]
        return guest

    def _through_api(self) -> dict[int, int] | None:
        """RFLAGS and the system registers, read with one batch; the fields that changed."""
        saved = self.engine.saved
        values = saved.read()
        self.rflags = values[17]
        system = values[18:]
        self.system = system
        mmrs = saved.mmr_bytes()
        known = self._known
        if known is not None and known[0] == system and known[1] == mmrs:
            return None
        guest: dict[int, int] = {}
        self._system_fields(guest.__setitem__, system, saved.mmr_tuples(), known)
        self._known = (system, mmrs)
        return guest

    def _system_fields(
        self,
        write: Callable[[int, int], None],
        system: tuple[int, ...],
        mmrs: tuple[tuple[int, int, int, int], ...],
        known: tuple[tuple[int, ...], bytes] | None,
    ) -> None:
        cr0, cr3, cr4, dr7, *selectors = system[:10]
        fs_base, gs_base = system[10:12]
        mask, owned = self.cr0_owned
        write(f.GUEST_CR0, cr0 & ~mask | owned)  # the engine holds the CR0 the guest sees
        write(f.GUEST_CR3, cr3)
        write(f.GUEST_CR4, cr4 | CR4_VMXE)
        write(f.GUEST_DR7, dr7)
        write(f.GUEST_FS_BASE, fs_base)
        write(f.GUEST_GS_BASE, gs_base)
        gdtr, idtr, ldtr, tr = mmrs
        write(f.GUEST_GDTR_BASE, gdtr[1])
        write(f.GUEST_GDTR_LIMIT, gdtr[2])
        write(f.GUEST_IDTR_BASE, idtr[1])
        write(f.GUEST_IDTR_LIMIT, idtr[2])
        save_system_segment(write, "LDTR", ldtr)
        save_system_segment(write, "TR", tr)
        efer = cpu_msrs.read_msr(self.engine, IA32_EFER)
        write(f.GUEST_IA32_EFER, efer & ~EFER_SVME)  # LMA follows CR0.PG outside long mode
        save_segments(
            write,
            guest_linear(self.memory, cr0=cr0, cr3=cr3, efer=efer),
            selectors,
            known[0][4:10] if known else None,
            gdt_base=gdtr[1],
            gdt_limit=gdtr[2],
        )

    def full_state(self) -> dict[int, int]:
        """Every guest-state field the guest can change without exiting, read afresh."""
        saved = self.engine.saved
        values = saved.read()
        fields: dict[int, int] = {f.GUEST_RFLAGS: values[17]}
        self._system_fields(fields.__setitem__, values[18:], saved.mmr_tuples(), None)
        return fields
