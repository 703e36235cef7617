"""KVM exits, each translated into the VMX exit it stands for (or into platform behaviour)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from typing import TYPE_CHECKING

from iced_x86 import Instruction

# The VMX instruction-information encoding is architecture, shared with the software CPU.
from pyflank.backends.emu import decode as vmx_decode
from pyflank.backends.kvm import abi
from pyflank.backends.kvm.decode import (
    GuestCode,
    instruction_length_at,
    memory_access_ending_at,
)
from pyflank.backends.kvm.guest_state import SREGS_FIELDS
from pyflank.backends.kvm.io_exits import IoExits
from pyflank.backends.kvm.ports import PortIo
from pyflank.backends.kvm.result import KvmRunResult, StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Primary
from pyflank.intel_x64.exit_reasons import VM_ENTRY_FAILURE, ExitReason
from pyflank.intel_x64.qualifications import EptViolation

if TYPE_CHECKING:
    from pyflank.backends.kvm.vcpu import KvmVcpu

Outcome = KvmRunResult | None
_MAX_INSN = 15
_VMCALL_LENGTH = 3  # 0F 01 C1
_MSR_LENGTH = 2  # 0F 32 / 0F 30
_HLT_LENGTH = 1  # F4
# Plain ints: IntFlag/IntEnum arithmetic costs microseconds on the exit path.
_HLT_EXITING = int(Primary.HLT_EXITING)
_PRIMARY = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
_ENTRY_FAILURE = int(ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE) | VM_ENTRY_FAILURE


class ExitTranslator:
    """Turns the ``kvm_run`` exit of one vCPU into a dispatch, a device access or a stop."""

    def __init__(self, vcpu: KvmVcpu, ports: PortIo) -> None:
        self.vcpu = vcpu
        self.code = GuestCode(vcpu.machine.memory)
        self.io = IoExits(vcpu, ports, self.code)
        run = vcpu.run_page
        self._run = run
        # Views into the shared kvm_run page, made once: each access would build new ones.
        self._mmio_exit = run.exit.mmio
        self._msr_exit = run.exit.msr
        self._table: dict[int, Callable[[], Outcome]] = {
            abi.KVM_EXIT_IO: self.io.exit,
            abi.KVM_EXIT_HLT: self._hlt,
            abi.KVM_EXIT_MMIO: self._mmio,
            abi.KVM_EXIT_X86_RDMSR: self._rdmsr,
            abi.KVM_EXIT_X86_WRMSR: self._wrmsr,
            abi.KVM_EXIT_SHUTDOWN: self._shutdown,
            abi.KVM_EXIT_HYPERCALL: self._hypercall,
            abi.KVM_EXIT_FAIL_ENTRY: self._fail_entry,
            abi.KVM_EXIT_INTERNAL_ERROR: self._internal_error,
            abi.KVM_EXIT_SYSTEM_EVENT: self._system_event,
        }

    def translate(self, kvm_reason: int) -> Outcome:
        handler = self._table.get(kvm_reason)
        if handler is None:
            name = abi.EXIT_NAMES.get(kvm_reason, str(kvm_reason))
            return self._stop(StopReason.ERROR, f"unexpected KVM exit {name}")
        self.vcpu.registers.fetch()
        return handler()

    def forget_sites(self) -> None:
        self.io.sites.clear()

    # -- other exits -----------------------------------------------------------------
    def _hlt(self) -> Outcome:
        vcpu = self.vcpu
        rip = vcpu.registers.regs.rip  # KVM has already stepped over the HLT
        if not int(vcpu.handler.m_vmcs.read(_PRIMARY)) & _HLT_EXITING:
            return self._stop(StopReason.GUEST_HLT, f"the guest executed HLT at {rip - 1:#x}")
        vcpu.dispatch(ExitReason.HLT, rip - _HLT_LENGTH, _HLT_LENGTH)
        return vcpu.resume(complete=False)

    def _mmio(self) -> Outcome:
        """An access to guest-physical memory that is not RAM: an EPT violation on VMX."""
        vcpu, mmio = self.vcpu, self._mmio_exit
        regs, sregs = vcpu.registers.regs, vcpu.registers.sregs
        rip, write, gpa = regs.rip, bool(mmio.is_write), mmio.phys_addr
        paging = {"cr0": sregs.cr0, "cr3": sregs.cr3, "efer": sregs.efer}
        if write:  # KVM's emulator has written back RIP already
            before = self.code.read_before(rip, _MAX_INSN, **paging)
            length = memory_access_ending_at(before, rip, mmio.len)
            start = rip - length
        else:
            start, length = (
                rip,
                instruction_length_at(self.code.read(rip, _MAX_INSN, **paging), rip),
            )
            ctypes.memset(ctypes.addressof(mmio.data), 0xFF, 8)  # an empty bus reads all ones
        qualification = EptViolation(data_read=not write, data_write=write).encode()
        vcpu.handler.m_vmcs.processor_write(f.GUEST_PHYSICAL_ADDRESS, gpa)
        vcpu.dispatch(ExitReason.EPT_VIOLATION, start, length, qualification)
        return vcpu.resume(complete=True)

    def _rdmsr(self) -> Outcome:
        return self._msr(ExitReason.RDMSR)

    def _wrmsr(self) -> Outcome:
        return self._msr(ExitReason.WRMSR)

    def _msr(self, reason: ExitReason) -> Outcome:
        vcpu, msr = self.vcpu, self._msr_exit
        start = vcpu.registers.regs.rip  # KVM completes (and skips) MSR accesses on re-entry
        vcpu.dispatch(reason, start, _MSR_LENGTH)
        state, vmcs = vcpu.handler.m_state_save, vcpu.handler.m_vmcs
        msr.error = 0
        value = (state.rdx << 32) | state.rax
        plain = (
            state.rip == start + _MSR_LENGTH
            and (reason == ExitReason.WRMSR or (state.rdx | state.rax) >> 32 == 0)
            and not vmcs.read(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD) >> 31
        )
        if plain:  # KVM's completion does exactly what the handler did: let it
            msr.data = value & 0xFFFF_FFFF_FFFF_FFFF
            return vcpu.resume(complete=False, rip=start)
        return vcpu.resume(complete=True)

    def _shutdown(self) -> Outcome:
        vcpu = self.vcpu
        vcpu.dispatch(ExitReason.TRIPLE_FAULT, vcpu.registers.regs.rip, 0)
        return vcpu.resume(complete=False)

    def _hypercall(self) -> Outcome:
        vcpu = self.vcpu
        vcpu.dispatch(ExitReason.VMCALL, vcpu.registers.regs.rip, _VMCALL_LENGTH)
        return vcpu.resume(complete=True)

    def _fail_entry(self) -> Outcome:
        reason = self._run.exit.fail_entry.hardware_entry_failure_reason
        return self.entry_failure(f"KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}")

    def entry_failure(self, why: str) -> Outcome:
        """VM entry failed on guest state: exit reason 33 with bit 31, as VMX reports it.

        The VMCS keeps the state that failed (KVM never took it), so the seed's
        ``unimplemented_handler`` runs the VM-entry checks on exactly that state.
        """
        vcpu = self.vcpu
        handler = vcpu.handler
        vmcs = handler.m_vmcs
        handler.log(f"VM entry failed: {why}")
        vmcs.processor_write(f.VM_EXIT_REASON, _ENTRY_FAILURE)
        vmcs.processor_write(f.EXIT_QUALIFICATION, 0)
        vmcs.processor_write(f.VM_EXIT_INSTRUCTION_LENGTH, 0)
        vcpu.vmcs_written()
        vcpu.dispatched += 1
        if vcpu.trace is not None:
            vcpu.trace.append((_ENTRY_FAILURE & 0xFFFF, handler.m_state_save.rip))
        handler.dispatch()
        vmcs.dirty.update(SREGS_FIELDS)  # whatever the handler fixed, enter all of it again
        return vcpu.resume(complete=False)

    def _internal_error(self) -> Outcome:
        failure = self._run.exit.emulation_failure
        rip = self.vcpu.registers.regs.rip
        if failure.suberror == abi.KVM_INTERNAL_ERROR_EMULATION:
            vmx = self._vmx_instruction(rip)
            if vmx is not None:
                return self._vmx_exit(vmx, rip)
            if failure.flags & abi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES:
                code = bytes(failure.insn_bytes[: failure.insn_size])
            else:
                sregs = self.vcpu.registers.sregs
                code = self.code.read(rip, _MAX_INSN, cr0=sregs.cr0, cr3=sregs.cr3, efer=sregs.efer)
            ins = vmx_decode.decode(code, rip)
            text = f"KVM could not emulate the instruction at {rip:#x}: " + (
                f"{ins} (bytes {code[: ins.len].hex(' ')})"
                if not ins.is_invalid
                else f"undecodable bytes {code.hex(' ') or '(none readable)'}"
            )
            return self._stop(StopReason.EMULATION_FAILURE, text)
        return self._stop(StopReason.ERROR, f"KVM internal error {failure.suberror} at {rip:#x}")

    def _vmx_instruction(self, rip: int) -> Instruction | None:
        """The VMX instruction at ``rip``, if that is what KVM's emulator gave up on.

        In VMX non-root operation these exit unconditionally, before any fault, so
        the exit is exact.  VMFUNC is left out: without VM functions it is #UD.
        """
        sregs = self.vcpu.registers.sregs
        code = self.code.read(rip, _MAX_INSN, cr0=sregs.cr0, cr3=sregs.cr3, efer=sregs.efer)
        ins = vmx_decode.decode(code, rip)
        reason = None if ins.is_invalid else vmx_decode.VMX_EXITS.get(ins.mnemonic)
        return None if reason is None or reason == ExitReason.VMFUNC else ins

    def _vmx_exit(self, ins: Instruction, rip: int) -> Outcome:
        vcpu = self.vcpu
        qualification, information = vmx_decode.vmx_instruction_information(ins)
        reason = vmx_decode.VMX_EXITS[ins.mnemonic]
        vcpu.dispatch(reason, rip, ins.len, qualification, information=information)
        return vcpu.resume(complete=False)

    def _system_event(self) -> Outcome:
        event = self._run.exit.system_event.type
        return self._stop(StopReason.ERROR, f"KVM system event {event}")

    # -- stopping ------------------------------------------------------------------------
    def interrupted(self, *, timed_out: bool) -> KvmRunResult:
        if not timed_out:
            return self._stop(StopReason.STOPPED, "stopped")
        text = "timed out"
        hint = self._vmcall_hint()
        return self._stop(StopReason.TIMEOUT, f"{text}; {hint}" if hint else text)

    def _vmcall_hint(self) -> str:
        """A guest stuck in VMCALL (it never returns from KVM_RUN on some KVMs) says so."""
        try:
            regs = self.vcpu.registers
            regs.fetch_by_ioctl()
            sregs = regs.sregs
            code = self.code.read(regs.regs.rip, 3, cr0=sregs.cr0, cr3=sregs.cr3, efer=sregs.efer)
        except OSError:
            return ""
        if code in (b"\x0f\x01\xc1", b"\x0f\x01\xd9"):
            return (
                f"the guest is in VMCALL/VMMCALL at {regs.regs.rip:#x}, which this KVM does "
                "not return to user space: use the I/O-port doorbell (CPUID 0x40000001)"
            )
        return ""

    def _stop(self, reason: StopReason, message: str) -> KvmRunResult:
        return self.vcpu.stopped(reason, message)
