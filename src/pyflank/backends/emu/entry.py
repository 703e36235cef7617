"""VM entry on the software CPU: an entry plan loaded, events delivered through the guest IDT.

A plan whose only changes are general registers and RIP writes them into the CPU.  Any
other guest-state change (and the launch, and new controls, whose intercepts live in the
VMCB) loads the whole guest state from the VMCS through the SVM stub (``svm``).  An
injected event, or an exception the guest raised that does not exit, is delivered through
the guest IDT (``processor.delivery``), since unicorn never delivers one; a fault doing
so with its exception-bitmap bit set, or a triple fault, becomes an exit record instead.
With the monitor trap flag set, an event delivered (at the entry, or raised by the
stepped instruction) is followed by the MTF exit before any instruction runs; the exit
is made from the delivery's landing, and the next entry loads the whole state.  New
controls also bring the EPT the entry enforces (the nested page table, ``nested``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Final

from unicorn import x86_const as x86

from pyflank.backends.emu import cpu_msrs, fast_calls, svm
from pyflank.backends.emu.engine import EngineError
from pyflank.backends.emu.guest_state import SEGMENT_FIELDS, save_segments
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.msrs import IA32_EFER
from pyflank.intel_x64.paging import guest_linear
from pyflank.intel_x64.registers import AR_DB, EFER_LMA, RFLAGS_TF
from pyflank.processor import EntryPlan, Event, ExitInformation, ExitRecord
from pyflank.processor.delivery import CpuView, Delivery, Landing, NestedExit, TripleFault

if TYPE_CHECKING:
    from pyflank.backends.emu.capture import StateCapture
    from pyflank.backends.emu.engine import Engine
    from pyflank.backends.emu.fast_calls import GuestSyscall
    from pyflank.backends.emu.hooks import ExitHooks, GuestEvent
    from pyflank.memory import GuestPhysicalMemory

_PAT, _DEBUGCTL = 0x277, 0x1D9
_VALID = 1 << 31
_EXCEPTION = int(ExitReason.EXCEPTION_OR_NMI)
_TRIPLE_FAULT = int(ExitReason.TRIPLE_FAULT)
_CS, _SS = SEGMENT_FIELDS[1][0], SEGMENT_FIELDS[2][0]
MONITOR_TRAP: Final = ExitInformation(int(ExitReason.MONITOR_TRAP_FLAG))


def _interruption(event: Event) -> int:
    return event.vector | event.type << 8 | (event.error_code is not None) << 11 | _VALID


class EntryLoader:
    """The VM entries of one engine; ``start_rip`` is where emulation goes on."""

    def __init__(
        self, engine: Engine, capture: StateCapture, hooks: ExitHooks, memory: GuestPhysicalMemory
    ) -> None:
        self.engine = engine
        self.capture = capture
        self.hooks = hooks
        self.memory = memory
        self.delivery = Delivery(memory)
        self.fields: Mapping[int, int] = {}  # the VMCS, as the launch plan showed it
        self.start_rip = 0
        self.stub_start = svm.STUB  # where the last full entry's stub began
        self.stub_bytes = svm.STUB_BLOCK_BYTES  # and its code run before the guest's
        self.in_guest_mode = False
        self._reload = False  # an entry returned an exit before loading: load it all next
        self.monitor_trap = False  # an event delivered is followed by the MTF exit
        self.trap = 0  # RFLAGS.TF the next entry adds, unseen by the guest (``stepping``)
        self.entered_rip = 0  # where the last entry put the guest, and its own TF
        self.entered_tf = 0
        self._vmcb: tuple[int, ...] = ()  # the controls in the VMCB of the last full entry

    # -- the plan -------------------------------------------------------------------------
    def enter(self, plan: EntryPlan) -> ExitRecord | None:
        """Load ``plan``; an exit record if delivering its event became a VM exit."""
        if plan.fields is not None:
            self.fields = plan.fields
        if plan.launch:
            self._host_state()
        if plan.policy is not None:
            self.hooks.set_policy(plan.policy)
            self.hooks.nested.apply(plan.policy.ept)
        fields = self.fields
        full = self._reload or plan.launch or bool(plan.changed)
        if plan.policy is not None and not full:
            full = self._controls() != self._vmcb  # new intercepts: a new VMCB
        rip, rsp, rflags = plan.rip, plan.regs[4], fields[f.GUEST_RFLAGS]
        overrides: dict[int, int] = {}
        if plan.event is not None:
            outcome = self._deliver(plan.event, self._plan_view(plan))
            if not isinstance(outcome, Landing):
                self._reload = True
                return ExitRecord(outcome, (*plan.regs, plan.rip, 0), plan.rip, rflags)
            rip, rsp, rflags = outcome.rip, outcome.rsp, outcome.rflags
            if outcome.cs != fields[_CS] or outcome.ss != fields[_SS]:
                overrides = self._segments(outcome, fields)
                full = True
            if self.monitor_trap:
                return self._trap_exit(plan.regs, rip, rsp, rflags, overrides)
        self.entered_rip, self.entered_tf = rip, rflags & RFLAGS_TF
        rflags |= self.trap
        if full:
            values = {**fields, **overrides}
            self.start_rip = self._full_entry(values, plan.regs, rip, rsp, rflags)
            self._reload = False
        else:
            regs = plan.regs
            self.engine.resume_at.write((*regs[:4], rsp, *regs[5:], rip))
            self.engine.write(x86.UC_X86_REG_RFLAGS, rflags)
            self.start_rip = rip
        return None

    # -- events the guest raised ------------------------------------------------------------
    def deliver_guest(self, pending: GuestEvent) -> ExitRecord | None:
        """Deliver an exception the guest raised, as the hardware would; an exit record if
        doing so became a VM exit."""
        view = self._engine_view(pending.rip)
        outcome = self._deliver(pending.event, view)
        if not isinstance(outcome, Landing):
            return self.capture.record(outcome, pending.rip)
        e = self.engine
        if self.monitor_trap:
            values = self._current_state()
            values.update(self._segments(outcome, values))
            gprs = e.resume_at.read()[:16]
            return self._trap_exit(gprs, outcome.rip, outcome.rsp, outcome.rflags, values)
        if outcome.cs == view.cs and outcome.ss == view.ss:
            e.write(x86.UC_X86_REG_RSP, outcome.rsp)
            e.write(x86.UC_X86_REG_RFLAGS, outcome.rflags)
            self.start_rip = outcome.rip
            return None
        # A privilege change: load all of the guest's current state, with the new CS/SS.
        values = self._current_state()
        values.update(self._segments(outcome, values))
        gprs = e.resume_at.read()[:16]
        self.start_rip = self._full_entry(values, gprs, outcome.rip, outcome.rsp, outcome.rflags)
        return None

    def fast_system_call(self, call: GuestSyscall) -> ExitRecord | None:
        """Carry out SYSCALL, SYSENTER or SYSEXIT (``fast_calls``): a full entry (or,
        with the monitor trap flag, the MTF exit after it)."""
        values = self._current_state()
        read = functools.partial(cpu_msrs.read_msr, self.engine)
        gprs = self.engine.resume_at.read()[:16]
        landing = fast_calls.land(call, read, gprs, values[f.GUEST_RFLAGS])
        values.update(landing.segments)
        if self.monitor_trap:
            return self._trap_exit(landing.gprs, landing.rip, landing.rsp, landing.rflags, values)
        self.start_rip = self._full_entry(
            values, landing.gprs, landing.rip, landing.rsp, landing.rflags
        )
        return None

    def _trap_exit(
        self, gprs: tuple[int, ...], rip: int, rsp: int, rflags: int, guest: dict[int, int]
    ) -> ExitRecord:
        """The MTF exit right after an event or a fast system call landed: the state is the
        landing's (nothing of it is loaded: the next entry loads it all)."""
        self._reload = True
        guest[f.GUEST_RFLAGS] = rflags
        regs = (*gprs[:4], rsp, *gprs[5:16], rip, rflags)
        return ExitRecord(MONITOR_TRAP, regs, rip, rflags, guest)

    def _current_state(self) -> dict[int, int]:
        """The guest state now, in VMCS fields: the last exit's, with what moved since."""
        return {**self.fields, **self.capture.full_state(), **self.capture.noted}

    def _deliver(self, event: Event, cpu: CpuView) -> Landing | ExitInformation:
        """Deliver ``event``: where it lands, or the exit it became."""
        if not cpu.efer & EFER_LMA:
            raise EngineError(f"vector {event.vector} to a guest outside long mode: the "
                              "software CPU delivers events through a 64-bit IDT only")  # fmt: skip
        assert self.hooks.policy is not None
        try:
            outcome = self.delivery.deliver_with_faults(
                cpu, event, self.hooks.policy.exception_bitmap
            )
        except TripleFault:
            return ExitInformation(_TRIPLE_FAULT)
        if isinstance(outcome, NestedExit):
            fault, original = outcome.fault, outcome.original
            return ExitInformation(
                _EXCEPTION,
                interruption_information=_interruption(fault),
                interruption_error_code=fault.error_code or 0,
                idt_vectoring_information=_interruption(original),
                idt_vectoring_error_code=original.error_code or 0,
            )
        if outcome.cr2 is not None:
            self.engine.write(x86.UC_X86_REG_CR2, outcome.cr2)
        return outcome

    def _plan_view(self, plan: EntryPlan) -> CpuView:
        """The processor state an injected event is delivered in: the plan's."""
        read = self.fields.__getitem__
        return CpuView(
            rip=plan.rip,
            rsp=plan.regs[4],
            rflags=read(f.GUEST_RFLAGS),
            cs=read(f.GUEST_CS_SELECTOR),
            ss=read(f.GUEST_SS_SELECTOR),
            cpl=(read(f.GUEST_SS_ACCESS_RIGHTS) >> 5) & 3,
            cr0=read(f.GUEST_CR0),
            cr3=read(f.GUEST_CR3),
            efer=read(f.GUEST_IA32_EFER),
            gdtr_base=read(f.GUEST_GDTR_BASE),
            gdtr_limit=read(f.GUEST_GDTR_LIMIT),
            idtr_base=read(f.GUEST_IDTR_BASE),
            idtr_limit=read(f.GUEST_IDTR_LIMIT),
            tr_base=read(f.GUEST_TR_BASE),
        )

    def _engine_view(self, rip: int) -> CpuView:
        """The processor state as the engine holds it (the guest raised the event)."""
        saved = self.engine.saved
        values = saved.read()
        rsp, rflags = values[16], values[17]
        cr0, cr3 = values[18], values[19]
        cs, ss = values[23], values[24]
        gdtr, idtr, _ldtr, tr = saved.mmr_tuples()
        efer = cpu_msrs.read_msr(self.engine, IA32_EFER) & ~svm.EFER_SVME
        return CpuView(
            rip=rip, rsp=rsp, rflags=rflags, cs=cs, ss=ss, cpl=cs & 3, cr0=cr0, cr3=cr3,
            efer=efer, gdtr_base=gdtr[1], gdtr_limit=gdtr[2], idtr_base=idtr[1],
            idtr_limit=idtr[2], tr_base=tr[1],
        )  # fmt: skip

    def _segments(self, landing: Landing, values: Mapping[int, int]) -> dict[int, int]:
        """The CS and SS fields an event that changes privilege loads."""
        loaded: dict[int, int] = {}
        old = [values[fields[0]] for fields in SEGMENT_FIELDS]
        new = [old[0], landing.cs, landing.ss, *old[3:]]
        linear = guest_linear(
            self.memory,
            cr0=values[f.GUEST_CR0],
            cr3=values[f.GUEST_CR3],
            efer=values[f.GUEST_IA32_EFER],
        )
        save_segments(
            loaded.__setitem__,
            linear,
            new,
            old,
            gdt_base=values[f.GUEST_GDTR_BASE],
            gdt_limit=values[f.GUEST_GDTR_LIMIT],
        )
        return loaded

    # -- loading the guest state ------------------------------------------------------------
    def _host_state(self) -> None:
        """VMXON's world: the stub runs at CPL 0 in 64-bit mode on its own tables."""
        e = self.engine
        e.write_mmr(x86.UC_X86_REG_GDTR, 0, svm.HOST_GDT, svm.HOST_GDT_LIMIT, 0)
        e.write(x86.UC_X86_REG_CR3, svm.HOST_PML4)
        e.write(x86.UC_X86_REG_CR4, svm.HOST_CR4)
        e.write_msr_raw(IA32_EFER, svm.HOST_EFER)
        e.write(x86.UC_X86_REG_CR0, svm.HOST_CR0)
        e.write_msr_raw(svm.MSR_VM_HSAVE_PA, svm.HSAVE)

    def _controls(self) -> tuple[int, ...]:
        policy = self.hooks.policy
        assert policy is not None
        cr3 = self.hooks.nested.cr3
        return svm.control_signature(self.fields, mov_dr_exiting=policy.mov_dr, nested_cr3=cr3)

    def _full_entry(
        self, values: dict[int, int], gprs: tuple[int, ...], rip: int, rsp: int, rflags: int
    ) -> int:
        """Load all guest state (``values``, by VMCS encoding) through the VMLOAD/VMRUN
        stub; where emulation starts."""
        e = self.engine
        values[f.GUEST_RFLAGS] = rflags
        # The MSRs VMLOAD loads that the VMCS does not hold keep the engine's values (the
        # guest's, or what the handler's CPU wrote before the launch).
        preserved = {off: cpu_msrs.read_msr(e, msr) for off, msr in svm.VMLOAD_ONLY_MSRS.items()}
        if self.in_guest_mode:
            dr6 = e.read(x86.UC_X86_REG_DR6)
            cr2 = e.read(x86.UC_X86_REG_CR2)
            efer = cpu_msrs.read_msr(e, IA32_EFER)
        else:
            dr6, cr2, efer = 0xFFFF_0FF0, 0, svm.HOST_EFER
        policy = self.hooks.policy
        assert policy is not None
        vmcb = svm.build_vmcb(
            values,
            rip=rip,
            rsp=rsp,
            rax=gprs[0],
            dr6=dr6,
            cr2=cr2,
            preserved_msrs=preserved,
            mov_dr_exiting=policy.mov_dr,
            nested_cr3=self.hooks.nested.cr3,
        )
        e.write_physical(svm.VMCB, vmcb)
        mask = values[f.CR0_GUEST_HOST_MASK]
        self.capture.cr0_owned = (mask, values[f.GUEST_CR0] & mask)
        self._vmcb = self._controls()
        cpu_msrs.write_msr(e, _PAT, values[f.GUEST_IA32_PAT])
        cpu_msrs.write_msr(e, _DEBUGCTL, values[f.GUEST_IA32_DEBUGCTL])
        # The stub runs on its own page tables, GDT, TSS and stack, and calls through its
        # gate into ring 0 (VMLOAD/VMRUN load the guest's TR, CR4 and RSP back).
        stub, self.stub_bytes = svm.STUB, svm.STUB_BLOCK_BYTES
        if not efer & EFER_LMA:  # (an unrestricted guest) see svm.COMPAT_STUB
            stub, self.stub_bytes = self._compat_stub(), svm.COMPAT_STUB_BLOCK_BYTES
            efer = svm.HOST_EFER
        self.stub_start = stub
        e.resume_at.write((*gprs[:4], svm.HOST_STACK_TOP, *gprs[5:16], stub))
        cpu_msrs.write_msr(e, IA32_EFER, efer | svm.EFER_SVME)
        e.write(x86.UC_X86_REG_CR3, svm.HOST_PML4)
        e.write(x86.UC_X86_REG_CR4, svm.HOST_CR4)  # no SMEP/SMAP/PKE of the guest's
        if stub != svm.STUB:
            e.write(x86.UC_X86_REG_CR0, svm.HOST_CR0)  # long mode: CS is compatibility mode
        e.write_mmr(x86.UC_X86_REG_GDTR, 0, svm.HOST_GDT, svm.HOST_GDT_LIMIT, 0)
        e.write_mmr(x86.UC_X86_REG_TR, 0, svm.HOST_TSS, svm.HOST_TSS_LIMIT, svm.TSS_BUSY_FLAGS)
        e.write(x86.UC_X86_REG_RFLAGS, 2)
        e.write(x86.UC_X86_REG_RAX, svm.VMCB)
        self.in_guest_mode = True
        self.capture.forget()  # VMRUN loaded new system state: report it afresh
        return stub

    def _compat_stub(self) -> int:
        """Where a guest stopped in 32-bit code starts the stub: its EIP (the code segment
        the guest last loaded keeps its base)."""
        access_rights, base = self.fields[f.GUEST_CS_ACCESS_RIGHTS], self.fields[f.GUEST_CS_BASE]
        if not access_rights & AR_DB:
            raise EngineError("a VM entry from 16-bit guest code: the software CPU enters "
                              "guests stopped in 32-bit or 64-bit code only")  # fmt: skip
        return (svm.COMPAT_STUB - base) & 0xFFFF_FFFF
