"""KVM exits, each translated into the VMX exit it stands for (or into a stop)."""

from __future__ import annotations

import ctypes
from collections.abc import Callable

from iced_x86 import Instruction

from pyflank.backends.kvm import abi
from pyflank.backends.kvm import owed as debt
from pyflank.backends.kvm.decode import guest_code, instruction_length_at, memory_access_ending_at
from pyflank.backends.kvm.ept import PendingAccess, mmio_exit
from pyflank.backends.kvm.exit_record import ExitRecords
from pyflank.backends.kvm.io_exits import IoExits
from pyflank.backends.kvm.owed import Owed
from pyflank.backends.kvm.regs import VcpuRegisters
from pyflank.backends.kvm.structs import KvmRun
from pyflank.intel_x64 import decode as vmx_decode
from pyflank.intel_x64.exit_reasons import VM_ENTRY_FAILURE, ExitReason
from pyflank.intel_x64.qualifications import EptViolation
from pyflank.memory import GuestPhysicalMemory
from pyflank.processor import ExitInformation, ExitRecord, Stop, StopReason
from pyflank.processor.ept import EptView

Outcome = ExitRecord | Stop | None
_MAX_INSN = 15
_VMCALL_LENGTH = 3  # 0F 01 C1
_MSR_LENGTH = 2  # 0F 32 / 0F 30
_HLT_LENGTH = 1  # F4
_HLT = ExitInformation(int(ExitReason.HLT), 0, _HLT_LENGTH)
_TRIPLE_FAULT = ExitInformation(int(ExitReason.TRIPLE_FAULT))
_HYPERCALL = ExitInformation(int(ExitReason.VMCALL), 0, _VMCALL_LENGTH)
_RDMSR = ExitInformation(int(ExitReason.RDMSR), 0, _MSR_LENGTH)
_WRMSR = ExitInformation(int(ExitReason.WRMSR), 0, _MSR_LENGTH)
ENTRY_FAILURE = ExitInformation(
    int(ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE) | VM_ENTRY_FAILURE
)


class ExitTranslator:
    """Turns the ``kvm_run`` exit of one vCPU into an exit record, a stop, or nothing
    (a device took the access); what KVM still owes the instruction goes to ``owed``."""

    def __init__(
        self,
        run: KvmRun,
        registers: VcpuRegisters,
        records: ExitRecords,
        owed: Owed,
        io: IoExits,
        memory: GuestPhysicalMemory,
    ) -> None:
        self.registers = registers
        self.records = records
        self.owed = owed
        self.io = io
        self.memory = memory
        self.hlt_exits = False  # what the exit controls say about HLT
        self.ept_view: EptView | None = None  # the EPT the memory slots enforce
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
        self.registers.fetch()
        return handler()

    # -- the exits -----------------------------------------------------------------------
    def _hlt(self) -> Outcome:
        rip = self.registers.regs.rip  # KVM has already stepped over the HLT
        if not self.hlt_exits:
            return self._stop(StopReason.GUEST_HLT, f"the guest executed HLT at {rip - 1:#x}")
        self.owed.set(debt.NOTHING)
        return self.records.make(_HLT, rip - _HLT_LENGTH)

    def _mmio(self) -> Outcome:
        """An access to guest-physical memory that is not RAM, or that the EPT's memory
        slots stopped (``ept``): an EPT violation on VMX."""
        mmio = self._mmio_exit
        regs, sregs = self.registers.regs, self.registers.sregs
        rip, write, gpa = regs.rip, bool(mmio.is_write), mmio.phys_addr
        code = guest_code(self.memory, sregs)
        if write:  # KVM's emulator has written back RIP already
            before = code.read_before(rip, _MAX_INSN)
            length = memory_access_ending_at(before, rip, mmio.len)
            start = rip - length
        else:
            start, length = (
                rip,
                instruction_length_at(code.read_available(rip, _MAX_INSN), rip),
            )
            ctypes.memset(ctypes.addressof(mmio.data), 0xFF, 8)  # an empty bus reads all ones
        view = self.ept_view
        if view is None:
            qualification = EptViolation(data_read=not write, data_write=write).encode()
            info = ExitInformation(
                int(ExitReason.EPT_VIOLATION), qualification, length, guest_physical_address=gpa
            )
            self.owed.set(debt.COMPLETION)
            return self.records.make(info, start)
        record = self.records.make(ExitInformation(0), start)
        insn = code.read_available(start, _MAX_INSN)
        info = mmio_exit(view, self.memory, sregs, record.regs, insn, start, gpa, write)
        self.owed.set(debt.ACCESS, start)
        self.owed.access = PendingAccess(gpa, mmio.len, write)
        self.owed.regs = tuple(record.regs[:16])
        return record._replace(info=info)

    def _rdmsr(self) -> Outcome:
        return self._msr(_RDMSR, write=False)

    def _wrmsr(self) -> Outcome:
        return self._msr(_WRMSR, write=True)

    def _msr(self, info: ExitInformation, *, write: bool) -> Outcome:
        start = self.registers.regs.rip  # KVM completes (and skips) MSR accesses on re-entry
        self.owed.set(debt.MSR, start)
        self.owed.write = write
        return self.records.make(info, start)

    def _shutdown(self) -> Outcome:
        self.owed.set(debt.NOTHING)
        return self.records.make(_TRIPLE_FAULT, self.registers.regs.rip)

    def _hypercall(self) -> Outcome:
        self.owed.set(debt.COMPLETION)
        return self.records.make(_HYPERCALL, self.registers.regs.rip)

    def _fail_entry(self) -> Outcome:
        reason = self._run.exit.fail_entry.hardware_entry_failure_reason
        self.owed.set(debt.NOTHING)
        record = self.records.make(ENTRY_FAILURE, self.registers.regs.rip)
        return record._replace(detail=f"KVM_EXIT_FAIL_ENTRY, hardware reason {reason:#x}")

    def _internal_error(self) -> Outcome:
        failure = self._run.exit.emulation_failure
        rip = self.registers.regs.rip
        if failure.suberror == abi.KVM_INTERNAL_ERROR_EMULATION:
            vmx = self._vmx_instruction(rip)
            if vmx is not None:
                qualification, information = vmx_decode.vmx_instruction_information(vmx)
                reason = int(vmx_decode.VMX_EXITS[vmx.mnemonic])
                self.owed.set(debt.NOTHING)
                info = ExitInformation(reason, qualification, vmx.len, information)
                return self.records.make(info, rip)
            if failure.flags & abi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES:
                code = bytes(failure.insn_bytes[: failure.insn_size])
            else:
                code = guest_code(self.memory, self.registers.sregs).read_available(rip, _MAX_INSN)
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
        code = guest_code(self.memory, self.registers.sregs).read_available(rip, _MAX_INSN)
        ins = vmx_decode.decode(code, rip)
        reason = None if ins.is_invalid else vmx_decode.VMX_EXITS.get(ins.mnemonic)
        return None if reason is None or reason == ExitReason.VMFUNC else ins

    def _system_event(self) -> Outcome:
        event = self._run.exit.system_event.type
        return self._stop(StopReason.ERROR, f"KVM system event {event}")

    # -- stopping ------------------------------------------------------------------------
    def interrupted(self, reason: StopReason) -> Stop:
        """The vCPU was asked to stop (``reason``: why)."""
        if reason is not StopReason.TIMEOUT:
            return self._stop(reason, "stopped")
        hint = self._vmcall_hint()
        return self._stop(reason, f"timed out; {hint}" if hint else "timed out")

    def _vmcall_hint(self) -> str:
        """A guest stuck in VMCALL (it never returns from KVM_RUN on some KVMs) says so."""
        try:
            regs = self.registers
            regs.fetch_by_ioctl()
            code = guest_code(self.memory, regs.sregs).read_available(regs.regs.rip, 3)
        except OSError:
            return ""
        if code in (b"\x0f\x01\xc1", b"\x0f\x01\xd9"):
            return (
                f"the guest is in VMCALL/VMMCALL at {regs.regs.rip:#x}, which this KVM does "
                "not return to user space: use the I/O-port doorbell (CPUID 0x40000001)"
            )
        return ""

    def _stop(self, reason: StopReason, message: str) -> Stop:
        """A stop between exits: the guest state then goes with it (not after an error,
        where the last exit's state stands)."""
        if reason is StopReason.ERROR:
            return Stop(reason, message)
        try:
            return Stop(reason, message, self.records.snapshot())
        except OSError:
            return Stop(reason, message)
