"""The state a VM exit saves: StateSave, and the guest-state area of the VMCS.

Guest-state fields a guest can change without exiting (control registers, selectors,
GDTR/IDTR/LDTR/TR, FS/GS bases, DR7) are checked at every exit; the hidden part of a
segment register comes from the descriptor its selector names.  MSR-backed fields change
only through WRMSR, which always reaches this backend.  CR4.VMXE is set in the VMCS and
reads as 0 in the guest (as with a guest/host mask on that bit).

Checking is cheap: the register file is copied out in place (``register_file``) and its
bytes after the general registers compared with those of the last exit that brought the
VMCS up to date.  Equal, nothing is stored; else only what moved is: RIP and RSP from the
copy, RFLAGS from it where the condition codes allow and through the API otherwise, and
the system registers through the API, rewritten only if they differ.  Anything else that
writes these fields (a VM entry, an event) sets ``_seen`` to ``NEVER_SEEN``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import x86_const as x86

from pyflank.backends.emu.engine import RegisterBatch
from pyflank.backends.emu.guest_state import CR4_VMXE, save_segments, save_system_segment
from pyflank.backends.emu.register_file import CC_AT, HEAD_VALUES, NEVER_SEEN
from pyflank.backends.emu.register_probe import register_file
from pyflank.intel_x64 import fields as f

if TYPE_CHECKING:
    import ctypes
    from collections.abc import Callable

    from pyflank.backends.emu.engine import Engine
    from pyflank.backends.emu.register_file import RawHead, RegisterFile
    from pyflank.exit_handler import StateSave
    from pyflank.intel_x64.vmcs import Vmcs
    from pyflank.memory import GuestPhysicalMemory

_unpack_head = HEAD_VALUES.unpack_from


class ExitSave:
    """The saving part of ``EmuVcpu``, which provides what is declared here."""

    engine: Engine
    state: StateSave
    vmcs: Vmcs
    memory: GuestPhysicalMemory

    def _attach(self, engine: Engine) -> None:
        """Find ``engine``'s register file (a fresh engine: the probe writes registers)."""
        self.registers: RegisterFile = register_file(engine.uc, engine.handle)
        self._head: RawHead = self.registers.head
        self._dr7: ctypes.c_uint64 = self.registers.dr7
        self._write_gprs: Callable[..., None] = self.registers.write_gprs
        self._rflags = RegisterBatch(engine.handle, (x86.UC_X86_REG_RFLAGS,))
        self._system: tuple[tuple[int, ...], bytes] | None = None
        self._flow = (-1, -1, -1)  # RIP, RSP, RFLAGS last stored in the VMCS
        # Of the last exit that brought the VMCS up to date: the head's compared bytes,
        # RIP, RSP, eflags and DR7, the system part and the rest of the flags' inputs.
        self._seen = NEVER_SEEN
        self._seen_regs = (-1, -1, -1, -1)
        self._seen_system = self._seen_flags = b""

    def _save(self) -> tuple[int, ...]:
        """Store guest state in StateSave and the VMCS as an exit does; the registers read.

        The registers come back in ``SAVED_IDS`` order (the rare exits index them so).
        """
        raw = self._head.raw
        v = _unpack_head(raw)
        s = self.state
        (
            s.rax, s.rcx, s.rdx, s.rbx, s.rsp, s.rbp, s.rsi, s.rdi,
            s.r08, s.r09, s.r10, s.r11, s.r12, s.r13, s.r14, s.r15, s.rip, eflags,
        ) = v  # fmt: skip
        if (v[16], v[4], eflags, self._dr7.value) != self._seen_regs or not raw.endswith(
            self._seen
        ):
            self._store_moved(raw, v)
        system = self._system
        assert system is not None  # _store_moved saw to it
        return (
            v[0], v[3], v[1], v[2], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12],
            v[13], v[14], v[15], v[16], v[4], self._flow[2], *system[0],
        )  # fmt: skip

    def _store_moved(self, raw: bytes, v: tuple[int, ...]) -> None:
        """Store in the VMCS what moved since the last exit (``raw``: the register head,
        ``v``: its values).

        RIP and RSP are exact in the head, and so is RFLAGS in the usual states of the
        condition codes; the system registers come through the API when their bytes moved.
        """
        regs = self.registers
        rip, rsp, eflags = v[16], v[4], v[17]
        dr7 = self._dr7.value
        system_at = regs.system_at
        seen_regs = self._seen_regs
        if (
            self._seen is NEVER_SEEN
            or self._system is None
            or dr7 != seen_regs[3]
            or not raw.endswith(self._seen_system)
        ):
            self._store_through_api()
        else:
            rflags = self._flow[2]
            if eflags != seen_regs[2] or raw[CC_AT:system_at] != self._seen_flags:
                computed = regs.rflags(raw)
                rflags = self._rflags.read()[0] if computed is None else computed
            flow = (rip, rsp, rflags)
            if flow != self._flow:
                write = self.vmcs.processor_write
                write(f.GUEST_RIP, rip)
                write(f.GUEST_RSP, rsp)
                write(f.GUEST_RFLAGS, rflags)
                self._flow = flow
        self._seen_regs = (rip, rsp, eflags, dr7)
        self._seen = raw[regs.compared_from(raw) :]
        self._seen_system = raw[system_at:]
        self._seen_flags = raw[CC_AT:system_at]

    def _store_through_api(self) -> None:
        """RIP, RSP, RFLAGS and the system registers, read with one batch and stored."""
        saved = self.engine.saved
        regs = saved.read()
        rip, rsp, rflags = regs[15:18]
        write = self.vmcs.processor_write
        write(f.GUEST_RIP, rip)
        write(f.GUEST_RSP, rsp)
        write(f.GUEST_RFLAGS, rflags)
        self._flow = (rip, rsp, rflags)
        system = regs[18:]
        mmrs = saved.mmr_bytes()
        known = self._system
        if known is None or known[0] != system or known[1] != mmrs:
            old = known[0] if known else None
            self._save_system(system, saved.mmr_tuples(), old)
            self._system = (system, mmrs)

    def _save_system(
        self,
        system: tuple[int, ...],
        mmrs: tuple[tuple[int, int, int, int], ...],
        old: tuple[int, ...] | None,
    ) -> None:
        cr0, cr3, cr4, dr7, *selectors = system[:10]
        fs_base, gs_base = system[10:12]
        write = self.vmcs.processor_write
        write(f.GUEST_CR0, cr0)
        write(f.GUEST_CR3, cr3)
        write(f.GUEST_CR4, cr4 | CR4_VMXE)  # VMX operation keeps CR4.VMXE; the guest reads 0
        write(f.GUEST_DR7, dr7)
        write(f.GUEST_FS_BASE, fs_base)
        write(f.GUEST_GS_BASE, gs_base)
        gdtr, idtr, ldtr, tr = mmrs
        write(f.GUEST_GDTR_BASE, gdtr[1])
        write(f.GUEST_GDTR_LIMIT, gdtr[2])
        write(f.GUEST_IDTR_BASE, idtr[1])
        write(f.GUEST_IDTR_LIMIT, idtr[2])
        save_system_segment(self.vmcs, "LDTR", ldtr)
        save_system_segment(self.vmcs, "TR", tr)
        save_segments(
            self.vmcs,
            self.memory,
            selectors,
            old[4:10] if old else None,
            cr3=cr3,
            gdt_base=gdtr[1],
            gdt_limit=gdtr[2],
        )
