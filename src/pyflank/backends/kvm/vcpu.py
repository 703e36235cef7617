"""A KVM vCPU as an engine: ``run(plan)`` loads the entry plan into KVM and runs KVM_RUN;
what the guest does that is a VMX exit becomes an exit record, decided in place.

Events the exit controls do not make exits (I/O without I/O exiting) are "hardware"
behaviour, handled here without leaving the loop: the platform's devices.  What KVM
still owes the exiting instruction (``owed``) decides how the next plan is loaded.

Every exit costs microseconds of Python on a nested KVM, where a bare loop around
KVM_RUN already costs more than a C VMM's whole exit, so the common path is kept short:
KVM_RUN called in the loop, port I/O straight to ``IoExits``, registers moved by one
``struct`` call each way, and a plan with only registers loaded without a frame more.
"""

from __future__ import annotations

import ctypes
import errno
from collections.abc import Mapping
from operator import itemgetter
from typing import Any

from pyflank.backends.base import Decide, PortIo
from pyflank.backends.kvm import abi
from pyflank.backends.kvm import owed as debt
from pyflank.backends.kvm.cpu import KvmHostCpu
from pyflank.backends.kvm.device import CpuidEntry, KvmError, run_failed, run_ioctl
from pyflank.backends.kvm.exit_record import NO_EXIT, ExitRecords
from pyflank.backends.kvm.exits import ENTRY_FAILURE, ExitTranslator
from pyflank.backends.kvm.guest_state import (
    GPRS_TO_RIP,
    KVM_ORDER,
    RFLAGS_FIXED,
    SREGS_FIELDS,
    fields_to_sregs,
)
from pyflank.backends.kvm.injection import inject
from pyflank.backends.kvm.io_exits import IoExits
from pyflank.backends.kvm.kick import Kicker
from pyflank.backends.kvm.machine import KvmMachine
from pyflank.backends.kvm.msr_state import MSR_FIELDS, launch_msr_fields, push_msr_fields
from pyflank.backends.kvm.native_loop import native_loop
from pyflank.backends.kvm.owed import Owed
from pyflank.backends.kvm.ports import NoDevices
from pyflank.backends.kvm.regs import VcpuRegisters
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.cpu import CpuidRegisters
from pyflank.processor import EntryPlan, ExitPolicy, ExitRecord, Stop, StopReason

_SYNC_REGS = abi.KVM_SYNC_X86_REGS
_NOTHING, _COMPLETION, _UNLESS_MOVED, _MSR, _ACCESS = (
    debt.NOTHING,
    debt.COMPLETION,
    debt.UNLESS_MOVED,
    debt.MSR,
    debt.ACCESS,
)
_KVM_EXIT_IO = abi.KVM_EXIT_IO
_KVM_RUN = abi.KVM_RUN
_MASK64 = 0xFFFF_FFFF_FFFF_FFFF
_HYPERVISOR_LEAVES = range(0x4000_0000, 0x5000_0000)
# What the guest reaches the VMM through (CPUID 0x40000000/1): answered by the handler.
_OWN_LEAVES = ((0x4000_0000, 0), (0x4000_0001, 0))
_MSR_SREGS_OR_FLAGS = SREGS_FIELDS | set(MSR_FIELDS) | {f.GUEST_RFLAGS}


class KvmVcpu:
    """One vCPU of a ``KvmMachine``; ``cpu`` is what its handler's physical CPU is."""

    def __init__(self, machine: KvmMachine, vcpuid: int, ports: PortIo | None = None) -> None:
        self.machine = machine
        self.vcpuid = vcpuid
        self.fd = machine.vm.create_vcpu(vcpuid)
        self.run_page = self.fd.run_page
        self.registers = VcpuRegisters(self.fd, machine.sync_regs)
        self.kicker = Kicker(self.run_page, machine.config.kick_signal)
        self.cpu = KvmHostCpu(machine.supported_cpuid, self.fd)
        self.owed = Owed()
        self.records = ExitRecords(self.registers)
        self.io = IoExits(
            self.fd,
            self.registers,
            self.records,
            self.owed,
            ports or NoDevices(),
            machine.memory,
            doorbell_port=machine.config.doorbell_port,
            complete=self.complete_pending,
        )
        self.exits = ExitTranslator(
            self.run_page, self.registers, self.records, self.owed, self.io, machine.memory
        )
        self.kvm_exits = 0  # KVM_RUN returns with an exit, over the vCPU's life
        self.fields: Mapping[int, int] = {}  # the VMCS, as the launch plan showed it
        self._to_kvm = itemgetter(*KVM_ORDER)
        self._requested: StopReason | None = None
        self.cpuid: list[CpuidEntry] = []
        self.native: Any = native_loop(self)
        """The run loop in C (``native_loop``), or None: the Python one runs."""

    # -- CPUID: KVM answers it from a table -------------------------------------------------
    def cpuid_leaves(self) -> list[tuple[int, int]]:
        """Every (leaf, subleaf) the guest can ask KVM about, for the handler to answer."""
        supported = [
            e for e in self.machine.supported_cpuid if e.function not in _HYPERVISOR_LEAVES
        ]
        return [(e.function, e.index) for e in supported] + list(_OWN_LEAVES)

    def set_cpuid(self, answers: dict[tuple[int, int], CpuidRegisters | None]) -> None:
        """The handler's answers (None: KVM's own value) become the vCPU's CPUID table."""
        table = []
        for e in self.machine.supported_cpuid:
            if e.function in _HYPERVISOR_LEAVES:
                continue
            regs = answers.get((e.function, e.index)) or e.registers
            table.append(CpuidEntry(e.function, e.index, e.flags, *regs))
        for leaf, subleaf in _OWN_LEAVES:
            regs = answers.get((leaf, subleaf)) or (0, 0, 0, 0)
            table.append(CpuidEntry(leaf, subleaf, 0, *regs))
        self.cpuid = table
        self.fd.set_cpuid2(table)

    # -- running ---------------------------------------------------------------------------
    def run(self, plan: EntryPlan, decide: Decide) -> ExitRecord | EntryPlan | Stop:
        """Load ``plan`` and run the guest until it stops (on the vCPU's thread).

        Each exit is decided here, in place (``decide`` is the processor's exit routine):
        on a nested KVM returning to the caller per exit costs a tenth of the exit.
        """
        kicker = self.kicker
        kicker.attach()
        try:
            refused = self._launch(plan) if plan.launch else self._enter(plan)
            return self._loop(decide, refused)
        finally:
            kicker.detach()

    def count_instructions(self) -> None:
        return None  # GAPS["instruction_count"]

    def request_stop(self, reason: StopReason = StopReason.STOPPED) -> None:
        """Make ``run`` return soon with ``reason``; callable from any thread."""
        if self._requested is None:
            self._requested = reason
        self.kicker.kick()

    def _loop(self, decide: Decide, pending: ExitRecord | None) -> Stop:
        """Run to a stop; ``pending``: an exit to decide first (a refused entry)."""
        if self.native is not None:
            stop: Stop = self.native.run(decide, pending)
            return stop
        kicker, translate, run_page = self.kicker, self.exits.translate, self.run_page
        enter = self._enter
        # KVM_RUN called right here, no wrapper frame per exit.
        ioctl, vcpu_fd = run_ioctl, self.fd.fd
        # Port I/O skips ``translate`` (a frame) when there are no registers to fetch.
        io_exit = self.io.exit if self.registers.synced else None
        record = pending
        while True:
            while record is not None:
                plan = decide(record)
                if plan.__class__ is Stop:
                    return plan
                record = enter(plan)  # type: ignore[arg-type]
            if kicker.kicked:
                return self._interrupted()
            try:
                ioctl(vcpu_fd, _KVM_RUN)
            except OSError as exc:
                record = self._not_entered(exc)
                continue
            self.kvm_exits += 1
            reason = run_page.exit_reason
            result: ExitRecord | Stop | None
            if reason == _KVM_EXIT_IO and io_exit is not None:
                result = io_exit()
            else:
                result = translate(reason)
            if result.__class__ is Stop:
                return result
            record = result  # type: ignore[assignment]

    def _interrupted(self) -> Stop:
        return self.exits.interrupted(self._requested or StopReason.STOPPED)

    def _not_entered(self, exc: OSError) -> ExitRecord | None:
        """KVM_RUN failed: a kick (run on, the loop checks it), or a refused entry."""
        try:
            run_failed(exc)
        except KvmError as error:
            if error.errno != errno.EINVAL:
                raise
            self.owed.set(debt.NOTHING)
            return self.records.make(ENTRY_FAILURE, self.registers.regs.rip)._replace(
                detail=str(error)
            )
        self.kicker.rearm()
        return None

    # -- VM entry -----------------------------------------------------------------------
    def _launch(self, plan: EntryPlan) -> ExitRecord | None:
        """The first entry: everything the VMCS and the plan hold."""
        assert plan.fields is not None
        self.fields = fields = plan.fields
        regs = self.registers
        self.fd.get_sregs(regs.sregs)  # keeps cr8, apic_base, interrupt bitmap
        fields_to_sregs(fields, regs.sregs)
        GPRS_TO_RIP.pack_into(regs.regs, 0, *self._to_kvm(plan.regs), plan.rip)
        regs.regs.rflags = fields[f.GUEST_RFLAGS] | RFLAGS_FIXED
        self.records.noted.update(launch_msr_fields(self.fd, fields))
        self.io.sites.clear()
        self._set_policy(plan.policy)
        try:
            regs.push_now(sregs=True)
        except KvmError as exc:
            if exc.errno != errno.EINVAL:
                raise
            return self._refused(plan, str(exc))
        if plan.event is not None:
            inject(self.fd, plan.event)
        return None

    def _enter(self, plan: EntryPlan) -> ExitRecord | None:
        """Load the plan of an exit, paying what KVM still owes the instruction first."""
        owed = self.owed
        kind, complete, rip = owed.kind, False, None
        owed.kind = _NOTHING
        if kind == _UNLESS_MOVED:
            complete = plan.rip == owed.at
        elif kind == _COMPLETION:
            complete = True
        elif kind == _MSR:
            complete, rip = self._msr_completion(plan, owed)
        elif kind == _ACCESS:
            return self._complete_access(plan, owed)
        if plan.simple and not complete and rip is None:
            # The common case: the handler changed registers in the StateSave only.
            regs = self.registers
            regs.write_gprs(*self._to_kvm(plan.regs), plan.rip)
            if regs.synced:
                self.run_page.kvm_dirty_regs = _SYNC_REGS
                return None
            return self._push(plan, sregs=False)
        return self._enter_carefully(plan, complete, rip)

    def _msr_completion(self, plan: EntryPlan, owed: Owed) -> tuple[bool, int | None]:
        """(complete first, RIP for KVM): KVM's completion does what the handler did?"""
        msr = self.run_page.exit.msr
        msr.error = 0
        rax, rdx = plan.regs[0], plan.regs[2]
        if (
            plan.rip == owed.at + 2
            and (owed.write or (rdx | rax) >> 32 == 0)
            and plan.event is None
        ):
            msr.data = ((rdx << 32) | rax) & _MASK64
            return False, owed.at
        return True, None

    def _complete_access(self, plan: EntryPlan, owed: Owed) -> ExitRecord | None:
        """The entry after an EPT-hooked access (``ept``): against guest RAM where the EPT
        the handler left allows it; the guest then goes on after the instruction, unless
        the handler moved it."""
        access = owed.access
        assert access is not None
        self._set_policy(plan.policy)
        if access.allowed(self.exits.ept_view, self.machine.memory):
            data = ctypes.addressof(self.run_page.exit.mmio.data)
            access.back_with_ram(self.machine.memory, data)
            if plan.rip == owed.at and tuple(plan.regs) == owed.regs:
                self.complete_pending()  # the instruction ran once: KVM's state stands
                after = self.records.make(NO_EXIT, self.registers.regs.rip)
                plan = EntryPlan(
                    tuple(after.regs[:16]), after.rip, plan.changed, plan.fields, None,
                    plan.event, plan.launch,
                )  # fmt: skip
                return self._enter_carefully(plan, False, None)
        return self._enter_carefully(plan, True, None)

    def _enter_carefully(
        self, plan: EntryPlan, complete: bool, rip: int | None
    ) -> ExitRecord | None:
        changed = plan.changed
        if plan.fields is not None:
            self.fields = plan.fields
        fields = self.fields
        sregs = not changed.isdisjoint(SREGS_FIELDS)
        if rip is not None and changed:
            # Loading guest state makes KVM drop the emulator context its completion would
            # use, and a failed entry must not leave it pending: finish the instruction
            # first, then load everything.
            complete, rip = True, None
        if complete:
            self.complete_pending()
        regs = self.registers
        kregs = regs.regs
        GPRS_TO_RIP.pack_into(kregs, 0, *self._to_kvm(plan.regs), plan.rip)
        if rip is not None:
            kregs.rip = rip
        if not changed.isdisjoint(_MSR_SREGS_OR_FLAGS):
            if f.GUEST_RFLAGS in changed:
                kregs.rflags = fields[f.GUEST_RFLAGS] | RFLAGS_FIXED
            if sregs:
                fields_to_sregs(fields, regs.sregs)
            push_msr_fields(self.fd, fields, changed)
        self._set_policy(plan.policy)
        refused = self._push(plan, sregs=sregs)
        if refused is None and plan.event is not None:
            inject(self.fd, plan.event)
        return refused

    def _push(self, plan: EntryPlan, *, sregs: bool) -> ExitRecord | None:
        try:
            self.registers.push(sregs=sregs)
        except KvmError as exc:  # without sync regs, a refused state shows up here
            if exc.errno != errno.EINVAL:
                raise
            return self._refused(plan, str(exc))
        return None

    def _refused(self, plan: EntryPlan, why: str) -> ExitRecord:
        """KVM refused the guest state: a VM-entry failure, with the plan's registers."""
        self.owed.set(debt.NOTHING)
        rflags = self.fields.get(f.GUEST_RFLAGS, 2)
        return ExitRecord(ENTRY_FAILURE, (*plan.regs, plan.rip, 0), plan.rip, rflags, None, why)

    def _set_policy(self, policy: ExitPolicy | None) -> None:
        if policy is not None:
            self.io.set_policy(policy)
            self.exits.hlt_exits = policy.hlt
            if policy.ept != self.exits.ept_view:
                self.machine.slots.apply(policy.ept)
                self.exits.ept_view = policy.ept

    def complete_pending(self) -> None:
        """Let KVM finish the exiting instruction without running any further guest code."""
        run_page = self.run_page
        run_page.immediate_exit = 1
        try:
            entered = self.fd.run()
        finally:
            run_page.immediate_exit = 1 if self.kicker.kicked else 0
        if entered:
            raise KvmError(errno.EPROTO, "KVM wanted user space again while completing an exit")
        self.registers.fetch()

    def close(self) -> None:
        self.fd.close()
