"""A KVM vCPU playing the processor in VMX non-root operation for pyflank's exit handler.

The loop: KVM_RUN; translate the KVM exit into the VMX exit it stands for
(exit reason, qualification, instruction length, GUEST_RIP at the
instruction); ``dispatch()``; load the handler's StateSave/VMCS back; resume.
Events the VMCS controls do not make exits (I/O without I/O exiting, HLT
without HLT exiting) are "hardware" behaviour: platform devices, a halted vCPU.

KVM finishes some instructions itself on the *next* KVM_RUN (IN data, MMIO
reads, MSR exits, and an OUT it did not emulate): it skips the instruction
after loading the registers user space marked dirty.  ``_resume`` either lets
that completion produce exactly the handler's result, or completes first
(KVM_RUN with ``immediate_exit``) and then imposes the handler's state, so an
instruction is never skipped twice and a RIP the handler chose is honoured.

KVM does not check guest state the way VMX does, so the VM-entry checks run here,
in software, before guest state the handler changed is loaded (and before the
first entry): a violation is a VM exit for a VM-entry failure, as on VMX.
"""

from __future__ import annotations

import errno
import logging
import threading

from pyflank.backends.kvm.cpu import KvmHostCpu, cpuid_table
from pyflank.backends.kvm.device import KvmError
from pyflank.backends.kvm.exits import ExitTranslator
from pyflank.backends.kvm.guest_state import (
    SREGS_FIELDS,
    regs_to_state,
    sregs_to_vmcs,
    state_to_regs,
    vmcs_to_sregs,
)
from pyflank.backends.kvm.injection import inject_pending_event
from pyflank.backends.kvm.kick import Kicker
from pyflank.backends.kvm.machine import KvmMachine
from pyflank.backends.kvm.msr_state import MSR_FIELDS, load_msr_fields, push_msr_fields
from pyflank.backends.kvm.policy import CONTROL_FIELDS, unsupported
from pyflank.backends.kvm.ports import NoDevices, PortIo
from pyflank.backends.kvm.regs import VcpuRegisters
from pyflank.backends.kvm.result import KvmRunResult, StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import checks, exit_reasons
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.fields import FieldType, field_type
from pyflank.intel_x64.vmcs import VmcsState
from pyflank.platform.hypervisor_cpuid import HypervisorFeatures, hypervisor_leaves

log = logging.getLogger("pyflank.backends.kvm")
_LAUNCHED = VmcsState.LAUNCHED
_RFLAGS_FIXED = 1 << 1
_ENTRY_EVENT = f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD
_MAX_ENTRY_FAILURES = 64  # consecutive failed entries the handler resumed into: give up
_STATE_SAVE_FIELDS = frozenset({f.GUEST_RIP, f.GUEST_RSP})  # StateSave supersedes these
_TRIPLE_FAULT = int(ExitReason.TRIPLE_FAULT)


def _checked(dirty: set[int]) -> bool:
    """Whether the handler changed guest state a VM entry checks (RIP/RSP come from StateSave)."""
    return any(field_type(e) is FieldType.GUEST_STATE for e in dirty if e not in _STATE_SAVE_FIELDS)


class KvmVcpu:
    """One vCPU of a ``KvmMachine``, driven by ``handler`` (its VMCS and StateSave)."""

    def __init__(
        self,
        machine: KvmMachine,
        vcpuid: int,
        handler: ExitHandlerIntelX64,
        ports: PortIo | None = None,
        *,
        trace: bool = False,
    ) -> None:
        self.machine = machine
        self.handler = handler
        self.vcpuid = vcpuid
        self.fd = machine.vm.create_vcpu(vcpuid)
        self.run_page = self.fd.run_page
        self.registers = VcpuRegisters(self.fd, machine.sync_regs)
        self.kicker = Kicker(self.run_page, machine.config.kick_signal)
        self.cpu = KvmHostCpu(machine.supported_cpuid, self.fd)
        handler.set_cpu(self.cpu)
        handler.set_memory(machine.memory)
        if machine.config.doorbell_port is not None:
            handler.hypervisor_leaves = hypervisor_leaves(
                HypervisorFeatures.IO_PORT_DOORBELL, machine.config.doorbell_port
            )
        self.cpuid = cpuid_table(handler, machine.supported_cpuid, vcpuid)
        self.fd.set_cpuid2(self.cpuid)
        self.exits = ExitTranslator(self, ports or NoDevices())
        self.dispatched = 0
        self.kvm_exits = 0
        self.trace: list[tuple[int, int]] | None = [] if trace else None
        self._timed_out = False
        self._refused = ""
        self._entry_failures = 0

    # -- state in and out ------------------------------------------------------------
    def load(self) -> None:
        """Enter the guest state the VMCS guest-state area and StateSave describe."""
        vmcs, state, regs = self.handler.m_vmcs, self.handler.m_state_save, self.registers
        self.fd.get_sregs(regs.sregs)  # keeps cr8, apic_base, interrupt bitmap
        vmcs_to_sregs(vmcs, regs.sregs)
        state_to_regs(state, regs.regs)
        regs.regs.rflags = vmcs.read(f.GUEST_RFLAGS) | _RFLAGS_FIXED
        self._refused = self.entry_problems()  # the first run reports it as an entry failure
        if not self._refused:
            try:
                regs.push_now(sregs=True)
            except KvmError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self._refused = str(exc)
        load_msr_fields(self.fd, vmcs)
        self.exits.forget_sites()
        if vmcs.state is VmcsState.CLEAR:
            vmcs.load()
            vmcs.launch()
        vmcs.dirty.clear()

    def snapshot(self) -> None:
        """Store the current guest state in the StateSave and VMCS (as an exit would)."""
        regs, vmcs = self.registers, self.handler.m_vmcs
        regs.fetch_by_ioctl()
        regs_to_state(regs.regs, self.handler.m_state_save)
        sregs_to_vmcs(regs.sregs, vmcs)
        vmcs.processor_write(f.GUEST_RIP, regs.regs.rip)
        vmcs.processor_write(f.GUEST_RSP, regs.regs.rsp)
        vmcs.processor_write(f.GUEST_RFLAGS, regs.regs.rflags)

    # -- running -------------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> KvmRunResult:
        """Run on the calling thread until the vCPU stops, ``stop()``, or ``timeout`` seconds."""
        kicker = self.kicker
        kicker.reset()
        self._timed_out = False
        kicker.attach()
        timer = None
        if timeout is not None:
            timer = threading.Timer(timeout, self._expire)
            timer.daemon = True
            timer.start()
        try:
            return self._loop()
        finally:
            if timer is not None:
                timer.cancel()
            kicker.detach()

    def stop(self, *, timed_out: bool = False) -> None:
        """Make ``run`` return soon (STOPPED, or TIMEOUT); callable from any thread."""
        if timed_out:
            self._timed_out = True
        self.kicker.kick()

    def _expire(self) -> None:
        self._timed_out = True
        self.kicker.kick()

    def _loop(self) -> KvmRunResult:
        kicker, fd, translate = self.kicker, self.fd, self.exits.translate
        if self._refused:
            why, self._refused = self._refused, ""
            result = self._failed_entry(why)
            if result is not None:
                return result
        while True:
            if kicker.kicked:
                return self.exits.interrupted(timed_out=self._timed_out)
            try:
                entered = fd.run()
            except KvmError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                result = self._failed_entry(str(exc))
                if result is not None:
                    return result
                continue
            if not entered:
                kicker.rearm()
                continue
            self.kvm_exits += 1
            self._entry_failures = 0  # the guest ran: failures are no longer consecutive
            result = translate(self.run_page.exit_reason)
            if result is not None:
                return result

    # -- the exit path --------------------------------------------------------------------
    def dispatch(
        self,
        reason: int,
        start: int,
        length: int,
        qualification: int = 0,
        *,
        rdx: int | None = None,
        information: int = 0,
    ) -> None:
        """Fill the exit-information and guest-state fields and call the handler.

        ``rdx``: what the handler sees in RDX (the doorbell carries it in RDI).
        """
        handler, regs = self.handler, self.registers
        vmcs, kregs, state = handler.m_vmcs, regs.regs, handler.m_state_save
        regs_to_state(kregs, state)
        state.rip = start
        if rdx is not None:
            state.rdx = rdx
        if regs.sregs_changed():
            sregs_to_vmcs(regs.sregs, vmcs)
        write = vmcs.processor_write
        write(f.VM_EXIT_REASON, reason)
        write(f.VM_EXIT_INSTRUCTION_LENGTH, length)
        write(f.EXIT_QUALIFICATION, qualification)
        write(f.VM_EXIT_INSTRUCTION_INFORMATION, information)
        write(f.GUEST_RIP, start)
        write(f.GUEST_RSP, kregs.rsp)
        write(f.GUEST_RFLAGS, kregs.rflags)
        self.dispatched += 1
        if self.trace is not None:
            self.trace.append((reason & 0xFFFF, start))
        handler.dispatch()

    def entry_problems(self) -> str:
        """Why the VMCS guest state fails the VM-entry checks (SDM 26.3.1), or ''."""
        violations = checks.check_guest_state(self.handler.m_vmcs, self.handler.m_cpu)
        if not violations:
            return ""
        return "guest state fails the VM-entry checks: " + "; ".join(map(str, violations))

    def resume(self, *, complete: bool, rip: int | None = None) -> KvmRunResult | None:
        """Load the handler's state for the next KVM_RUN, or say why the vCPU stopped.

        ``complete``: finish KVM's pending instruction first (immediate-exit KVM_RUN).
        ``rip``: the RIP to hand KVM instead of the StateSave's, when KVM's own
        completion will move it to where the handler put it.
        """
        vmcs = self.handler.m_vmcs
        if vmcs.state is not _LAUNCHED:
            return self._stopped_by_handler()
        dirty = vmcs.dirty
        sregs = bool(dirty) and not dirty.isdisjoint(SREGS_FIELDS)
        check = bool(dirty) and _checked(dirty)
        if rip is not None and (sregs or check):
            # Loading sregs makes KVM drop the emulator context its completion would
            # use, and a failed entry must not leave it pending: finish the
            # instruction first, then load everything.
            complete, rip = True, None
        if complete:
            self.complete_pending()
        if dirty and not dirty.isdisjoint(CONTROL_FIELDS):
            problems = unsupported(vmcs)
            if problems:
                return self.stopped(StopReason.ERROR, "unsupported on KVM: " + "; ".join(problems))
        if check:
            why = self.entry_problems()
            if why:
                return self._failed_entry(why)
        kregs = self.registers.regs
        state_to_regs(self.handler.m_state_save, kregs)
        if rip is not None:
            kregs.rip = rip
        if dirty:
            if f.GUEST_RFLAGS in dirty:
                kregs.rflags = vmcs.read(f.GUEST_RFLAGS) | _RFLAGS_FIXED
            if sregs:
                vmcs_to_sregs(vmcs, self.registers.sregs)
            if not dirty.isdisjoint(MSR_FIELDS):
                push_msr_fields(self.fd, vmcs, dirty)
            if _ENTRY_EVENT in dirty:
                inject_pending_event(self.fd, vmcs)
            dirty.clear()
        try:
            self.registers.push(sregs=sregs)
        except KvmError as exc:  # without sync regs, a refused state shows up here
            if exc.errno != errno.EINVAL:
                raise
            return self._failed_entry(str(exc))
        return None

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

    def _failed_entry(self, why: str) -> KvmRunResult | None:
        self._entry_failures += 1
        if self._entry_failures > _MAX_ENTRY_FAILURES:
            return self.stopped(StopReason.ERROR, f"VM entry kept failing: {why}")
        return self.exits.entry_failure(why)

    def _stopped_by_handler(self) -> KvmRunResult:
        vmcs = self.handler.m_vmcs
        reason = vmcs.read(f.VM_EXIT_REASON)
        what = exit_reasons.description(reason)
        if vmcs.state is VmcsState.PROMOTED:
            return self.result(StopReason.PROMOTED, f"promoted at exit: {what}")
        if reason & 0xFFFF == _TRIPLE_FAULT:  # the handler did not resume: the CPU shuts down
            return self.result(StopReason.SHUTDOWN, "triple fault, not resumed by the handler")
        return self.result(StopReason.HALTED, f"the exit handler halted the vCPU at: {what}")

    def stopped(self, reason: StopReason, message: str) -> KvmRunResult:
        """Stop for a reason of the backend's own, written to the debug ring too."""
        self.handler.log(f"vcpu stopped ({reason.value}): {message}")
        return self.result(reason, message)

    def result(self, reason: StopReason, message: str) -> KvmRunResult:
        return KvmRunResult(reason, message, self.dispatched, self.kvm_exits)

    def close(self) -> None:
        self.fd.close()
