"""A KVM vCPU playing the processor in VMX non-root operation for pyflank's exit handler.

The loop: KVM_RUN; translate the KVM exit into the VMX exit it stands for
(exit reason, qualification, instruction length, GUEST_RIP at the
instruction); ``dispatch()``; load the handler's StateSave/VMCS back; resume.
Events the VMCS controls do not make exits (I/O without I/O exiting, HLT
without HLT exiting) are "hardware" behaviour: platform devices, a halted vCPU.

KVM finishes some instructions itself on the *next* KVM_RUN (IN data, MMIO
reads, MSR exits, and an OUT it did not emulate): it skips the instruction
after loading the registers user space marked dirty.  ``resume`` either lets
that completion produce exactly the handler's result, or completes first
(KVM_RUN with ``immediate_exit``) and then imposes the handler's state, so an
instruction is never skipped twice and a RIP the handler chose is honoured
(``reentry``).

Every exit costs microseconds of Python on a nested KVM, where a bare loop
around KVM_RUN already costs more than a C VMM's whole exit, so the common
path is kept short: KVM_RUN called in the loop, port I/O straight to
``IoExits``, registers moved by one ``struct`` call each way, VMCS fields
stored only when their value changed, and a resume that touches the VMCS
only when the handler wrote it (``Vmcs.dirty``).

KVM does not check guest state the way VMX does, so the VM-entry checks run here,
in software, before guest state the handler changed is loaded (and before the
first entry): a violation is a VM exit for a VM-entry failure, as on VMX.
"""

from __future__ import annotations

import errno
import logging
import threading

from pyflank.backends.kvm import abi
from pyflank.backends.kvm.cpu import KvmHostCpu, cpuid_table
from pyflank.backends.kvm.device import KvmError, run_failed, run_ioctl
from pyflank.backends.kvm.exits import ExitTranslator
from pyflank.backends.kvm.guest_state import (
    RFLAGS_FIXED,
    regs_to_state,
    sregs_to_vmcs,
    state_to_regs,
    vmcs_to_sregs,
)
from pyflank.backends.kvm.kick import Kicker
from pyflank.backends.kvm.machine import KvmMachine
from pyflank.backends.kvm.msr_state import load_msr_fields
from pyflank.backends.kvm.ports import NoDevices, PortIo
from pyflank.backends.kvm.reentry import resume_carefully
from pyflank.backends.kvm.regs import VcpuRegisters
from pyflank.backends.kvm.result import KvmRunResult, StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import checks, exit_reasons
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import Vmcs, VmcsState
from pyflank.platform.hypervisor_cpuid import HypervisorFeatures, hypervisor_leaves

log = logging.getLogger("pyflank.backends.kvm")
_LAUNCHED = VmcsState.LAUNCHED
_MAX_ENTRY_FAILURES = 64  # consecutive failed entries the handler resumed into: give up
_TRIPLE_FAULT = int(ExitReason.TRIPLE_FAULT)
# What every exit stores besides RFLAGS, in this order (``_store_exit_information``).
_EXIT_FIELDS = (
    f.VM_EXIT_REASON,
    f.VM_EXIT_INSTRUCTION_LENGTH,
    f.EXIT_QUALIFICATION,
    f.VM_EXIT_INSTRUCTION_INFORMATION,
    f.GUEST_RIP,
    f.GUEST_RSP,
)
ExitInformation = tuple[int, int, int, int, int, int]
_GUEST_RFLAGS = f.GUEST_RFLAGS
_SYNC_REGS = abi.KVM_SYNC_X86_REGS
_KVM_EXIT_IO = abi.KVM_EXIT_IO
_KVM_RUN = abi.KVM_RUN


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
        self._failed_after = -1  # ``kvm_exits`` at the last failed entry
        # The _EXIT_FIELDS values (and RFLAGS) this path last stored in ``_stored_in``,
        # which nothing else has written since: a field keeping its value is not stored
        # again.  A loop's exits mostly repeat all but RFLAGS; each store is a call.
        self._stored: ExitInformation | None = None
        self._stored_rflags = -1
        self._stored_in: Vmcs | None = None

    # -- state in and out ------------------------------------------------------------
    def load(self) -> None:
        """Enter the guest state the VMCS guest-state area and StateSave describe."""
        vmcs, state, regs = self.handler.m_vmcs, self.handler.m_state_save, self.registers
        self.fd.get_sregs(regs.sregs)  # keeps cr8, apic_base, interrupt bitmap
        vmcs_to_sregs(vmcs, regs.sregs)
        state_to_regs(state, regs.regs)
        regs.regs.rflags = vmcs.read(f.GUEST_RFLAGS) | RFLAGS_FIXED
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
        self.vmcs_written()

    def snapshot(self) -> None:
        """Store the current guest state in the StateSave and VMCS (as an exit would)."""
        regs, vmcs = self.registers, self.handler.m_vmcs
        regs.fetch_by_ioctl()
        regs_to_state(regs.regs, self.handler.m_state_save)
        sregs_to_vmcs(regs.sregs, vmcs)
        vmcs.processor_write(f.GUEST_RIP, regs.regs.rip)
        vmcs.processor_write(f.GUEST_RSP, regs.regs.rsp)
        vmcs.processor_write(f.GUEST_RFLAGS, regs.regs.rflags)
        self.vmcs_written()

    # -- running -------------------------------------------------------------------------
    def run(self, timeout: float | None = None) -> KvmRunResult:
        """Run on the calling thread until the vCPU stops, ``stop()``, or ``timeout`` seconds."""
        kicker = self.kicker
        kicker.reset()
        self._timed_out = False
        self.vmcs_written()  # whoever held the VMCS since may have written it
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
        kicker, translate, run_page = self.kicker, self.exits.translate, self.run_page
        # KVM_RUN called right here, no wrapper frame per exit.
        ioctl, vcpu_fd = run_ioctl, self.fd.fd
        # Port I/O skips ``translate`` (a frame) when there are no registers to fetch.
        io_exit = self.exits.io.exit if self.registers.synced else None
        if self._refused:
            why, self._refused = self._refused, ""
            result = self.failed_entry(why)
            if result is not None:
                return result
        while True:
            if kicker.kicked:
                return self.exits.interrupted(timed_out=self._timed_out)
            try:
                ioctl(vcpu_fd, _KVM_RUN)
            except OSError as exc:
                result = self._not_entered(exc)
                if result is not None:
                    return result
                continue
            self.kvm_exits += 1
            reason = run_page.exit_reason
            if reason == _KVM_EXIT_IO and io_exit is not None:
                result = io_exit()
            else:
                result = translate(reason)
            if result is not None:
                return result

    def _not_entered(self, exc: OSError) -> KvmRunResult | None:
        """KVM_RUN failed: a kick (run on, the loop checks it), or a refused entry."""
        try:
            run_failed(exc)
        except KvmError as error:
            if error.errno != errno.EINVAL:
                raise
            return self.failed_entry(str(error))
        self.kicker.rearm()
        return None

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
        vmcs, state = handler.m_vmcs, handler.m_state_save
        # The exit stub's register save, spelled out: one struct call, no helper frame.
        (
            state.rax, state.rbx, state.rcx, state.rdx, state.rsi, state.rdi, rsp, state.rbp,
            state.r08, state.r09, state.r10, state.r11, state.r12, state.r13, state.r14, state.r15,
            _, rflags,
        ) = regs.read_gprs()  # fmt: skip
        state.rsp, state.rip = rsp, start
        if rdx is not None:
            state.rdx = rdx
        image = regs.sregs_image()
        if image != regs.sregs_seen:  # a memcmp: the guest rarely changes them between exits
            regs.sregs_seen = image
            sregs_to_vmcs(regs.sregs, vmcs)
        info = (reason, length, qualification, information, start, rsp)
        if info != self._stored or vmcs is not self._stored_in:
            self._store_exit_information(vmcs, info)
        if rflags != self._stored_rflags:
            vmcs.processor_write(_GUEST_RFLAGS, rflags)
            self._stored_rflags = rflags
        self.dispatched += 1
        if self.trace is not None:
            self.trace.append((reason & 0xFFFF, start))
        handler.dispatch()

    def _store_exit_information(self, vmcs: Vmcs, info: ExitInformation) -> None:
        write = vmcs.processor_write
        for encoding, value in zip(_EXIT_FIELDS, info, strict=True):
            write(encoding, value)
        self._stored, self._stored_in, self._stored_rflags = info, vmcs, -1

    def vmcs_written(self) -> None:
        """The VMCS may have been written outside the exit path: drop what it caches of it."""
        self._stored = self._stored_in = None
        self._stored_rflags = -1
        self.exits.io.controls_of = None

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
        handler = self.handler
        vmcs = handler.m_vmcs
        if vmcs.state is not _LAUNCHED:
            return self._stopped_by_handler()
        if complete or rip is not None or vmcs.dirty:
            return resume_carefully(self, complete=complete, rip=rip)
        # The common case: the handler changed registers in the StateSave only.
        state, regs = handler.m_state_save, self.registers
        regs.write_gprs(
            state.rax, state.rbx, state.rcx, state.rdx, state.rsi, state.rdi, state.rsp, state.rbp,
            state.r08, state.r09, state.r10, state.r11, state.r12, state.r13, state.r14, state.r15,
            state.rip,
        )  # fmt: skip
        if regs.synced:
            self.run_page.kvm_dirty_regs = _SYNC_REGS
            return None
        try:
            regs.push(sregs=False)
        except KvmError as exc:  # without sync regs, a refused state shows up here
            if exc.errno != errno.EINVAL:
                raise
            return self.failed_entry(str(exc))
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

    def failed_entry(self, why: str) -> KvmRunResult | None:
        """A VM entry failed: exit to the handler, unless it keeps failing."""
        if self._failed_after != self.kvm_exits:  # the guest ran since: not consecutive
            self._entry_failures, self._failed_after = 0, self.kvm_exits
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
