"""Bareflank's ``exit_handler_intel_x64``, member for member.

The bare minimum exit handler for a 64-bit guest with the TRUE controls:
CPUID, INVD, VMCALL, VMXOFF, RDMSR and WRMSR are handled; any other exit is
dumped and halts the vCPU.  Subclass it and override the handlers you need.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import pyflank
from pyflank.exit_handler.debug_ring import DebugRing
from pyflank.exit_handler.fault import halt_on_fault
from pyflank.exit_handler.state_save import GENERAL_REGISTERS, StateSave
from pyflank.intel_x64 import checks, dump, exit_reasons, qualifications
from pyflank.intel_x64 import fields as vmcs_fields
from pyflank.intel_x64.cpu import CpuidRegisters, ModelCpu, MsrFault, PhysicalCpu
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.msrs import (
    IA32_DEBUGCTL,
    IA32_EFER,
    IA32_FS_BASE,
    IA32_GS_BASE,
    IA32_PAT,
    IA32_PERF_GLOBAL_CTRL,
    IA32_SYSENTER_CS,
    IA32_SYSENTER_EIP,
    IA32_SYSENTER_ESP,
)
from pyflank.intel_x64.vmcs import Vmcs, VmcsState
from pyflank.memory import GuestPhysicalMemory, GuestVirtualRange, map_guest_virtual
from pyflank.platform.hypervisor_cpuid import CPUID_1_ECX_HYPERVISOR, hypervisor_leaves
from pyflank.vmcall import (
    BF_VMCALL_FAILURE,
    BF_VMCALL_SUCCESS,
    VMCALL_IN_BUFFER_SIZE,
    VMCALL_MAGIC_NUMBER,
    VMCALL_OUT_BUFFER_SIZE,
    VMCALL_VERSION,
    VmcallDataType,
    VmcallOpcode,
    VmcallRegisters,
    VmcallVersionIndex,
)

log = logging.getLogger("pyflank.exit_handler")

MASK64 = 0xFFFF_FFFF_FFFF_FFFF
MASK32 = 0xFFFF_FFFF

# MSRs whose guest value lives in the VMCS guest-state area (SDM 25.4.2, 27.3.1).
VMCS_BACKED_MSRS: dict[int, int] = {
    IA32_DEBUGCTL: vmcs_fields.GUEST_IA32_DEBUGCTL,
    IA32_PAT: vmcs_fields.GUEST_IA32_PAT,
    IA32_EFER: vmcs_fields.GUEST_IA32_EFER,
    IA32_PERF_GLOBAL_CTRL: vmcs_fields.GUEST_IA32_PERF_GLOBAL_CTRL,
    IA32_SYSENTER_CS: vmcs_fields.GUEST_IA32_SYSENTER_CS,
    IA32_SYSENTER_ESP: vmcs_fields.GUEST_IA32_SYSENTER_ESP,
    IA32_SYSENTER_EIP: vmcs_fields.GUEST_IA32_SYSENTER_EIP,
    IA32_FS_BASE: vmcs_fields.GUEST_FS_BASE,
    IA32_GS_BASE: vmcs_fields.GUEST_GS_BASE,
}
# Bareflank 1.1 answered these with 0: platform MSRs that fault on some
# processors when a guest OS probes them (SMM monitor, BIOS sign, ...).
ZERO_READ_MSRS = frozenset({0x31, 0x39, 0x1AE, 0x1AF, 0x602})

# Exit-information fields the unimplemented handler reports, in Bareflank's order.
EXIT_INFORMATION_REPORT = (
    ("exit qualification", vmcs_fields.EXIT_QUALIFICATION),
    ("exit interruption information", vmcs_fields.VM_EXIT_INTERRUPTION_INFORMATION),
    ("instruction length", vmcs_fields.VM_EXIT_INSTRUCTION_LENGTH),
    ("instruction information", vmcs_fields.VM_EXIT_INSTRUCTION_INFORMATION),
    ("guest linear address", vmcs_fields.GUEST_LINEAR_ADDRESS),
    ("guest physical address", vmcs_fields.GUEST_PHYSICAL_ADDRESS),
)

_LAUNCHED = VmcsState.LAUNCHED
_EVENT = int(VmcallOpcode.EVENT)
_EXIT_REASON = vmcs_fields.VM_EXIT_REASON
_INSTRUCTION_LENGTH = vmcs_fields.VM_EXIT_INSTRUCTION_LENGTH
_VECTOR_GP = 13
_DATA_TYPES = frozenset(t for t in VmcallDataType if t is not VmcallDataType.NONE)
_CR0_WP = 1 << 16
_CR0_PG = 1 << 31
_EFER_NXE = 1 << 11

UnittestFn = Callable[["ExitHandlerIntelX64", VmcallRegisters], None]
F = TypeVar("F", bound=Callable[..., None])


class VmcallError(Exception):
    """A vmcall the handler refuses; the guest gets BF_VMCALL_FAILURE."""


def vmm_unittest(index: int) -> Callable[[F], F]:
    """Register a method as the in-VMM self-test that ``UNITTEST index`` runs."""

    def mark(fn: F) -> F:
        fn._vmm_unittest_index = index  # type: ignore[attr-defined]
        return fn

    return mark


class ExitHandlerIntelX64:
    ret_type = int

    # Basic exit reason -> handler method, the switch of Bareflank's handle_exit.
    EXIT_HANDLERS: ClassVar[dict[int, str]] = {
        ExitReason.CPUID: "handle_cpuid",
        ExitReason.INVD: "handle_invd",
        ExitReason.VMCALL: "handle_vmcall",
        ExitReason.VMXOFF: "handle_vmxoff",
        ExitReason.RDMSR: "handle_rdmsr",
        ExitReason.WRMSR: "handle_wrmsr",
    }
    VMCALL_HANDLERS: ClassVar[dict[int, str]] = {
        VmcallOpcode.VERSIONS: "handle_vmcall_versions",
        VmcallOpcode.REGISTERS: "handle_vmcall_registers",
        VmcallOpcode.DATA: "handle_vmcall_data",
        VmcallOpcode.EVENT: "handle_vmcall_event",
        VmcallOpcode.START: "handle_vmcall_start",
        VmcallOpcode.STOP: "handle_vmcall_stop",
        VmcallOpcode.UNITTEST: "handle_vmcall_unittest",
    }
    # (major, minor, patch) answered for VERSIONS index USER; set it in a subclass.
    USER_VERSION: ClassVar[tuple[int, int, int]] = (0, 0, 0)
    VMM_UNITTESTS: ClassVar[dict[int, str]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        tests = dict(cls.VMM_UNITTESTS)
        for name, member in vars(cls).items():
            index = getattr(member, "_vmm_unittest_index", None)
            if index is not None:
                tests[index] = name
        cls.VMM_UNITTESTS = tests

    def __init__(self) -> None:
        self.m_vmcs: Vmcs = Vmcs()
        self.m_state_save: StateSave = StateSave()
        self.m_cpu: PhysicalCpu = ModelCpu()
        self.m_memory: GuestPhysicalMemory | None = None
        self.m_debug_ring: DebugRing = DebugRing()
        self.hypervisor_leaves: dict[int, CpuidRegisters] = hypervisor_leaves()
        self._exit_table: dict[int, Callable[[], None]] = {
            reason: getattr(self, name) for reason, name in self.EXIT_HANDLERS.items()
        }
        self._vmcall_table: dict[int, Callable[[VmcallRegisters], None]] = {
            int(opcode): getattr(self, name) for opcode, name in self.VMCALL_HANDLERS.items()
        }

    # -- wiring (Bareflank's set_vmcs / set_state_save, and the VMM's others) --
    def set_vmcs(self, vmcs: Vmcs) -> None:
        self.m_vmcs = vmcs

    def set_state_save(self, state_save: StateSave) -> None:
        self.m_state_save = state_save

    def set_cpu(self, cpu: PhysicalCpu) -> None:
        self.m_cpu = cpu

    def set_memory(self, memory: GuestPhysicalMemory) -> None:
        self.m_memory = memory

    def set_debug_ring(self, ring: DebugRing) -> None:
        self.m_debug_ring = ring

    def log(self, text: str, level: int = logging.INFO) -> None:
        """Write to this vCPU's debug ring and to Python logging."""
        self.m_debug_ring.write(text)
        if log.isEnabledFor(level):
            log.log(level, "[vcpu %d] %s", self.m_state_save.vcpuid, text)

    # -- public members of the seed -----------------------------------------
    def dispatch(self) -> None:
        """Decode the exit reason, run its handler, then resume the guest.

        A handler that raises (anything, ``SystemExit`` included) halts the vCPU with a
        report of the exception and its frame: the guest can never crash the VMM.
        """
        vmcs = self.m_vmcs
        try:
            self.handle_exit(vmcs.read(_EXIT_REASON) & 0xFFFF)
        except BaseException as exc:  # noqa: BLE001 - a handler bug stops only this vCPU
            halt_on_fault(self, exc)
        if vmcs.state is _LAUNCHED:
            vmcs.resume()

    def halt(self) -> None:
        state = self.m_state_save
        lines = [f"halting vcpu: {state.vcpuid}"]
        lines += [f"- {name}: {getattr(state, name):#018x}" for name in GENERAL_REGISTERS]
        lines += [f"- rip: {state.rip:#018x}", f"- rsp: {state.rsp:#018x}"]
        self.log("\n".join(lines), logging.ERROR)
        self.m_vmcs.halt()

    def complete_vmcall(self, ret: int, regs: VmcallRegisters) -> None:
        # Spelled out rather than looped over INTEL_X64_REGISTER_MAP: this is
        # the vmcall exit path (tests check the two agree).
        state = self.m_state_save
        if regs.r00 == _EVENT:
            state.rcx = regs.r02 & MASK64
        else:
            state.rax = regs.r00 & MASK64
            state.rcx = regs.r02 & MASK64
            state.rbx = regs.r03 & MASK64
            state.rsi = regs.r04 & MASK64
            state.r08 = regs.r05 & MASK64
            state.r09 = regs.r06 & MASK64
            state.r10 = regs.r07 & MASK64
            state.r11 = regs.r08 & MASK64
            state.r12 = regs.r09 & MASK64
            state.r13 = regs.r10 & MASK64
            state.r14 = regs.r11 & MASK64
            state.r15 = regs.r12 & MASK64
        state.rdx = ret & MASK64
        self.advance_rip()

    # -- protected members of the seed ----------------------------------------
    def handle_exit(self, reason: int) -> None:
        handler = self._exit_table.get(reason)
        if handler is None:
            self.unimplemented_handler()
        else:
            handler()

    def handle_cpuid(self) -> None:
        state = self.m_state_save
        leaf = state.rax & MASK32
        regs = self.hypervisor_leaves.get(leaf)
        if regs is None:
            regs = self.m_cpu.cpuid(leaf, state.rcx & MASK32)
            if leaf == 1:
                regs = (regs[0], regs[1], regs[2] | CPUID_1_ECX_HYPERVISOR, regs[3])
        state.rax, state.rbx, state.rcx, state.rdx = regs
        self.advance_rip()

    def handle_invd(self) -> None:
        # INVD would drop dirty lines the guest does not own: write back instead.
        self.m_cpu.wbinvd()
        self.advance_rip()

    def handle_vmcall(self) -> None:
        state = self.m_state_save
        regs = VmcallRegisters(
            state.rax, state.rdx, state.rcx, state.rbx, state.rsi,
            state.r08, state.r09, state.r10, state.r11, state.r12,
            state.r13, state.r14, state.r15,
        )  # fmt: skip
        ret = BF_VMCALL_SUCCESS
        try:
            if regs.r01 != VMCALL_MAGIC_NUMBER:
                raise VmcallError(f"vmcall magic number incorrect: {regs.r01:#x}")
            handler = self._vmcall_table.get(regs.r00)
            if handler is None:
                raise VmcallError(f"unknown vmcall opcode: {regs.r00:#x}")
            handler(regs)
        except Exception as exc:  # noqa: BLE001 - Bareflank's guard_exceptions
            self.log(f"vmcall failed: {type(exc).__name__}: {exc}", logging.WARNING)
            ret = BF_VMCALL_FAILURE
        self.complete_vmcall(ret, regs)

    def handle_vmxoff(self) -> None:
        self.advance_rip()
        self.m_vmcs.promote()

    def handle_rdmsr(self) -> None:
        state = self.m_state_save
        msr = state.rcx & MASK32
        field = VMCS_BACKED_MSRS.get(msr)
        if field is not None:
            value = self.m_vmcs.read(field)
        elif msr in ZERO_READ_MSRS:
            value = 0
        else:
            try:
                value = self.m_cpu.rdmsr(msr)
            except MsrFault as fault:
                self._inject_general_protection(fault)
                return
        state.rax = value & MASK32
        state.rdx = (value >> 32) & MASK32
        self.advance_rip()

    def handle_wrmsr(self) -> None:
        state = self.m_state_save
        msr = state.rcx & MASK32
        value = ((state.rdx & MASK32) << 32) | (state.rax & MASK32)
        field = VMCS_BACKED_MSRS.get(msr)
        if field is not None:
            self.m_vmcs.write(field, value)
        elif msr not in ZERO_READ_MSRS:
            try:
                self.m_cpu.wrmsr(msr, value)
            except MsrFault as fault:
                self._inject_general_protection(fault)
                return
        self.advance_rip()

    def advance_rip(self) -> None:
        state = self.m_state_save
        state.rip = (state.rip + self.m_vmcs.read(_INSTRUCTION_LENGTH)) & MASK64

    def unimplemented_handler(self) -> None:
        vmcs = self.m_vmcs
        reason = vmcs.read(vmcs_fields.VM_EXIT_REASON)
        lines = [
            f"unimplemented exit reason: {exit_reasons.description(reason)}",
            f"- exit reason: {reason:#018x}",
            f"- exit reason string: {exit_reasons.description(reason)}",
        ]
        lines += [f"- {label}: {vmcs.read(enc):#018x}" for label, enc in EXIT_INFORMATION_REPORT]
        info = vmcs.read(vmcs_fields.VM_EXIT_INTERRUPTION_INFORMATION)
        if info & (1 << 31):
            lines.append(f"- interruption: {qualifications.InterruptionInformation.decode(info)}")
        self.log("\n".join(lines), logging.ERROR)
        if reason & exit_reasons.VM_ENTRY_FAILURE:
            self._report_vm_entry_failure()
        self.halt()

    def _report_vm_entry_failure(self) -> None:
        violations = checks.check_all(self.m_vmcs, self.m_cpu)
        self.log(f"VM-entry checks: {len(violations)} violation(s)", logging.ERROR)
        for violation in violations:
            self.log(f"- {violation}", logging.ERROR)
        self.log(dump.dump(self.m_vmcs), logging.ERROR)

    # -- vmcall opcodes ---------------------------------------------------------
    def handle_vmcall_versions(self, regs: VmcallRegisters) -> None:
        if regs.r02 == VmcallVersionIndex.PROTOCOL:
            version = (VMCALL_VERSION, 0, 0)
        elif regs.r02 == VmcallVersionIndex.BAREFLANK:
            version = (pyflank.VERSION_MAJOR, pyflank.VERSION_MINOR, pyflank.VERSION_PATCH)
        elif regs.r02 == VmcallVersionIndex.USER:
            version = self.USER_VERSION
        else:
            raise VmcallError(f"unknown vmcall version index: {regs.r02:#x}")
        regs.r03, regs.r04, regs.r05 = version

    def handle_vmcall_registers(self, regs: VmcallRegisters) -> None:
        values = regs.as_tuple()
        self.log("\n".join(f"r{i:02d}: {values[i]:#018x}" for i in range(2, 13)))

    def handle_vmcall_event(self, regs: VmcallRegisters) -> None:
        self.log(f"event: {regs.r02:#x}")

    def handle_vmcall_start(self, regs: VmcallRegisters) -> None:
        pass

    def handle_vmcall_stop(self, regs: VmcallRegisters) -> None:
        pass

    def handle_vmcall_unittest(self, regs: VmcallRegisters) -> None:
        name = self.VMM_UNITTESTS.get(regs.r02)
        if name is None:
            raise VmcallError(f"unknown vmm unittest index: {regs.r02:#x}")
        getattr(self, name)(regs)
        self.log(f"vmm unittest {regs.r02} ({name}): passed")

    def handle_vmcall_data(self, regs: VmcallRegisters) -> None:
        in_type, in_addr, in_size = regs.r04, regs.r05, regs.r06
        out_addr, out_size = regs.r08, regs.r09
        if not in_addr or not out_addr:
            raise VmcallError("vmcall data: null buffer address")
        if not in_size or not out_size:
            raise VmcallError("vmcall data: zero buffer size")
        if out_size < in_size:
            raise VmcallError("vmcall data: output buffer smaller than input")
        if in_size > VMCALL_IN_BUFFER_SIZE or out_size > VMCALL_OUT_BUFFER_SIZE:
            raise VmcallError("vmcall data: buffer larger than 32 pages")
        if in_type not in _DATA_TYPES:
            raise VmcallError(f"vmcall data: unknown data type {in_type:#x}")
        imap = self.map_guest_buffer(in_addr, in_size, writable=False)
        omap = self.map_guest_buffer(out_addr, out_size, writable=True)

        if in_type == VmcallDataType.STRING_UNFORMATTED:
            istr = imap.read().decode("utf-8", "surrogateescape")
            self.reply_with_string(regs, self.handle_vmcall_data_string_unformatted(istr), omap)
        elif in_type == VmcallDataType.STRING_JSON:
            ijson = json.loads(imap.read().decode("utf-8", "surrogateescape"))
            self.reply_with_json(regs, self.handle_vmcall_data_string_json(ijson), omap)
        else:
            self.handle_vmcall_data_binary_unformatted(imap, omap)
            regs.r07 = VmcallDataType.BINARY_UNFORMATTED
            regs.r09 = in_size

    def handle_vmcall_data_string_unformatted(self, istr: str) -> str:
        """Return the reply (the C++ ``ostr`` out-parameter); default: echo."""
        self.log(f"received in vmm: {istr}")
        return istr

    def handle_vmcall_data_string_json(self, ijson: Any) -> Any:
        """Return the reply (the C++ ``ojson`` out-parameter); default: echo."""
        self.log(f"received in vmm: {json.dumps(ijson)}")
        return ijson

    def handle_vmcall_data_binary_unformatted(
        self, imap: GuestVirtualRange, omap: GuestVirtualRange
    ) -> None:
        omap.write(imap.read())

    def reply_with_string(self, regs: VmcallRegisters, text: str, omap: GuestVirtualRange) -> None:
        self._reply(regs, VmcallDataType.STRING_UNFORMATTED, text, omap)

    def reply_with_json(self, regs: VmcallRegisters, value: Any, omap: GuestVirtualRange) -> None:
        # Standard JSON (no NaN/Infinity), UTF-8 kept as UTF-8; a lone surrogate, which
        # only a string can hold, becomes its JSON escape.
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
        self._reply(regs, VmcallDataType.STRING_JSON, text, omap)

    def _reply(
        self, regs: VmcallRegisters, kind: VmcallDataType, text: str, omap: GuestVirtualRange
    ) -> None:
        data = text.encode("utf-8", "surrogateescape")
        if len(data) > len(omap):
            raise VmcallError(f"vmcall data: reply of {len(data)} bytes exceeds {len(omap)}")
        omap.write(data)
        regs.r07 = kind
        regs.r09 = len(data)

    # -- services for handlers ----------------------------------------------------
    def map_guest_buffer(self, gva: int, size: int, *, writable: bool) -> GuestVirtualRange:
        """Map a guest-virtual buffer through the guest's CR3, as the guest sees it."""
        if self.m_memory is None:
            raise VmcallError("no guest memory attached to this vCPU")
        vmcs = self.m_vmcs
        cr0 = vmcs.read(vmcs_fields.GUEST_CR0)
        if not cr0 & _CR0_PG:
            raise VmcallError("guest paging is off: buffers must be guest-virtual")
        return map_guest_virtual(
            self.m_memory,
            vmcs.read(vmcs_fields.GUEST_CR3),
            gva,
            size,
            writable=writable,
            wp=bool(cr0 & _CR0_WP),
            nxe=bool(vmcs.read(vmcs_fields.GUEST_IA32_EFER) & _EFER_NXE),
        )

    def inject_exception(self, vector: int, error_code: int | None = None) -> None:
        """Deliver a hardware exception to the guest at the next VM entry."""
        info = qualifications.InterruptionInformation(
            vector=vector,
            type=qualifications.InterruptionType.HARDWARE_EXCEPTION,
            error_code_valid=error_code is not None,
            nmi_unblocking=False,
            valid=True,
        )
        self.m_vmcs.write(vmcs_fields.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD, info.encode())
        if error_code is not None:
            self.m_vmcs.write(vmcs_fields.VM_ENTRY_EXCEPTION_ERROR_CODE, error_code)

    def _inject_general_protection(self, fault: MsrFault) -> None:
        self.log(f"{fault}: injecting #GP(0)", logging.WARNING)
        self.inject_exception(_VECTOR_GP, 0)

    # -- built-in in-VMM self-tests (vmcall UNITTEST) ----------------------------
    @vmm_unittest(1)
    def unittest_state_save_matches_vmcs(self, regs: VmcallRegisters) -> None:
        """The exit stub saved RIP/RSP consistently with the VMCS guest-state area."""
        vmcs, state = self.m_vmcs, self.m_state_save
        if state.rip != vmcs.read(vmcs_fields.GUEST_RIP):
            raise AssertionError("state_save.rip differs from the VMCS guest RIP")
        if state.rsp != vmcs.read(vmcs_fields.GUEST_RSP):
            raise AssertionError("state_save.rsp differs from the VMCS guest RSP")

    @vmm_unittest(2)
    def unittest_guest_stack_mapped(self, regs: VmcallRegisters) -> None:
        """The guest stack maps through the guest page tables and round-trips a write."""
        rsp = self.m_state_save.rsp
        stack = self.map_guest_buffer((rsp - 8) & ~7, 8, writable=True)
        saved = stack.read()
        stack.write(b"\xa5" * 8)
        ok = stack.read() == b"\xa5" * 8
        stack.write(saved)
        if not ok:
            raise AssertionError("write to the guest stack did not read back")


# Register the base class's own self-tests (__init_subclass__ runs for subclasses only).
ExitHandlerIntelX64.VMM_UNITTESTS = {
    index: name
    for name, member in vars(ExitHandlerIntelX64).items()
    if (index := getattr(member, "_vmm_unittest_index", None)) is not None
}
