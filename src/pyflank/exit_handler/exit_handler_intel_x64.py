"""Bareflank's ``exit_handler_intel_x64``, member for member.

The bare minimum exit handler for a 64-bit guest with the TRUE controls:
CPUID, INVD, VMCALL, VMXOFF, RDMSR and WRMSR are handled; any other exit is
dumped and halts the vCPU.  Subclass it and override the handlers you need.
"""

from __future__ import annotations

import difflib
import json
import logging
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pyflank.abi import (
    BF_VMCALL_FAILURE,
    BF_VMCALL_SUCCESS,
    CPUID_1_ECX_HYPERVISOR,
    EVENT_RETURNED_SLOTS,
    RETURNED_SLOTS,
    VMCALL_IN_BUFFER_SIZE,
    VMCALL_MAGIC_NUMBER,
    VMCALL_OUT_BUFFER_SIZE,
    VMCALL_VERSION,
    VmcallDataType,
    VmcallOpcode,
    VmcallRegisters,
    VmcallVersionIndex,
    hypervisor_leaves,
)
from pyflank.abi.registers import compile_loader, compile_storer
from pyflank.abi.version import VERSION as PYFLANK_VERSION
from pyflank.exit_handler.debug_ring import DebugRing
from pyflank.exit_handler.ept import Ept
from pyflank.exit_handler.fault import halt_on_fault
from pyflank.exit_handler.ports import PortSpace
from pyflank.exit_handler.state_save import GENERAL_REGISTERS, StateSave
from pyflank.intel_x64 import checks, dump, exit_reasons, invalidation, paging, qualifications
from pyflank.intel_x64 import fields as vmcs_fields
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls
from pyflank.intel_x64.cpu import CpuidRegisters, ModelCpu, MsrFault, PhysicalCpu, wrmsr_fault
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.msrs import VMCS_BACKED_MSRS
from pyflank.intel_x64.vectors import VECTOR_GP
from pyflank.intel_x64.vmcs import Vmcs, VmcsState
from pyflank.memory import GuestLinear, GuestPhysicalMemory, GuestVirtualRange
from pyflank.memory.host import HostMemory

if TYPE_CHECKING:
    from pyflank.intel_x64.accesses import Access

log = logging.getLogger("pyflank.exit_handler")

MASK64 = 0xFFFF_FFFF_FFFF_FFFF
MASK32 = 0xFFFF_FFFF

# Bareflank 1.1 answered these with 0: platform MSRs that fault on some
# processors when a guest OS probes them (SMM monitor, BIOS sign, ...).
ZERO_READ_MSRS = frozenset({0x31, 0x39, 0x1AE, 0x1AF, 0x602})

# Exit-information fields the unimplemented handler reports, in Bareflank's order and words.
EXIT_INFORMATION_REPORT = (
    ("exit qualification", vmcs_fields.EXIT_QUALIFICATION),
    ("exit interrupt information", vmcs_fields.VM_EXIT_INTERRUPTION_INFORMATION),
    ("instruction length", vmcs_fields.VM_EXIT_INSTRUCTION_LENGTH),
    ("instruction information", vmcs_fields.VM_EXIT_INSTRUCTION_INFORMATION),
    ("guest linear address", vmcs_fields.GUEST_LINEAR_ADDRESS),
    ("guest physical address", vmcs_fields.GUEST_PHYSICAL_ADDRESS),
)

# halt()'s register order and its section rule, as Bareflank 1.1 printed them.
_HALT_REGISTERS = (*GENERAL_REGISTERS, "rip", "rsp")
_RULE = "-" * 52

_LAUNCHED = VmcsState.LAUNCHED
_EVENT = int(VmcallOpcode.EVENT)
_EXIT_REASON = vmcs_fields.VM_EXIT_REASON
_INSTRUCTION_LENGTH = vmcs_fields.VM_EXIT_INSTRUCTION_LENGTH
_PRIMARY_CONTROLS = vmcs_fields.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
_INVALIDATIONS = {int(ExitReason.INVEPT): "invept", int(ExitReason.INVVPID): "invvpid"}
_SEGMENT_BASES = tuple(
    getattr(vmcs_fields, f"GUEST_{name}_BASE") for name in ("ES", "CS", "SS", "DS", "FS", "GS")
)
_MAX_INSTRUCTION_LENGTH = 15
_MONITOR_TRAP_FLAG = int(PrimaryProcessorBasedControls.MONITOR_TRAP_FLAG)
_DATA_TYPES = frozenset(t for t in VmcallDataType if t is not VmcallDataType.NONE)
# The vmcall exit path moves the slots with straight-line code compiled from the ABI's map.
_load_vmcall_registers = compile_loader()
_store_vmcall_registers = compile_storer(RETURNED_SLOTS)
_store_event_registers = compile_storer(EVENT_RETURNED_SLOTS)

UnittestFn = Callable[["ExitHandlerIntelX64", VmcallRegisters], None]
F = TypeVar("F", bound=Callable[..., None])


# ``handle_<reason>`` for every basic exit reason (hvpp's one method per reason).
EXIT_METHODS: dict[int, str] = {int(r): f"handle_{r.name.lower()}" for r in ExitReason}
_METHOD_REASONS = {name: reason for reason, name in EXIT_METHODS.items()}


def _exit_handlers(cls: type, *, warn: bool = True) -> dict[int, str]:
    """The exit table of ``cls``: every ``handle_<reason>`` it has, plus its own entries.

    A new ``handle_*`` method that names no exit reason is warned about (a typo there
    means an exit that never arrives).
    """
    table = {reason: name for reason, name in EXIT_METHODS.items() if hasattr(cls, name)}
    own: dict[int, str] = vars(cls).get("EXIT_HANDLERS", {})
    table.update({int(reason): name for reason, name in own.items()})
    if warn:
        inherited = {name for base in cls.__mro__[1:] for name in vars(base)}
        for name in vars(cls):
            if name.startswith("handle_") and name not in inherited | set(table.values()):
                _warn_unknown_handler(cls, name)
    return table


def _warn_unknown_handler(cls: type, name: str) -> None:
    if name.startswith("handle_vmcall_"):
        return  # a vmcall opcode's handler
    close = [m for m in _METHOD_REASONS if m.startswith(name)]
    close = close or difflib.get_close_matches(name, list(_METHOD_REASONS), n=2)
    hint = f" (did you mean {' or '.join(close)}?)" if close else ""
    warnings.warn(
        f"{cls.__name__}.{name} handles no exit reason{hint}: name it handle_<reason> "
        "(pyflank.exit_handler.EXIT_METHODS) or map it in EXIT_HANDLERS",
        stacklevel=4,
    )


class VmcallError(Exception):
    """A vmcall the handler refuses; the guest gets BF_VMCALL_FAILURE."""


def _text(lines: list[str]) -> str:
    """Lines as one debug-ring write, every line (blank ones too) newline-terminated."""
    return "".join(line + "\n" for line in lines)


def bareflank_json(value: Any) -> str:
    """JSON text as Bareflank 1.1's nlohmann::json 2.0 dumped it: no spaces, object keys
    in byte order (its objects were std::map), text other than control characters,
    quote and backslash written as it is (UTF-8, not \\u escapes)."""
    plain = json.loads(json.dumps(value))  # keys become strings, as JSON spells them
    # Standard JSON: a NaN or Infinity is an error, never written.
    return json.dumps(
        _keys_in_byte_order(plain), separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def _keys_in_byte_order(value: Any) -> Any:
    if isinstance(value, dict):
        ordered = sorted(value, key=lambda key: key.encode("utf-8", "surrogateescape"))
        return {key: _keys_in_byte_order(value[key]) for key in ordered}
    if isinstance(value, list):
        return [_keys_in_byte_order(item) for item in value]
    return value


def vmm_unittest(index: int) -> Callable[[F], F]:
    """Register a method as the in-VMM self-test that ``UNITTEST index`` runs."""

    def mark(fn: F) -> F:
        fn._vmm_unittest_index = index  # type: ignore[attr-defined]
        return fn

    return mark


class ExitHandlerIntelX64:
    """Bareflank's bare minimum Intel x64 exit handler: one per vCPU, called at every VM exit.

    The VMM wires it to the vCPU's VMCS (``m_vmcs``), saved guest registers
    (``m_state_save``), CPU (``m_cpu``), guest RAM (``m_memory``) and debug ring
    (``m_debug_ring``), then calls ``dispatch()`` at each exit.  Subclass it and
    override the ``handle_*`` methods you need; ``super()`` gives the seed's behaviour.
    """

    ret_type = int
    """The type of a vmcall status (Bareflank's ``ret_type``)."""

    EXIT_HANDLERS: ClassVar[dict[int, str]] = {}
    """Basic exit reason -> handler method, the switch of Bareflank's ``handle_exit``.

    Derived: a class that defines ``handle_<reason>`` (the ``ExitReason`` name in lower
    case: ``handle_hlt``, ``handle_io_instruction``, ``handle_ept_violation``, ...)
    receives that reason; the seed defines the six it handles.  A class may still map a
    reason to a method of another name here; its entries are added to the derived ones.
    """
    VMCALL_HANDLERS: ClassVar[dict[int, str]] = {
        opcode: f"handle_vmcall_{opcode.name.lower()}" for opcode in VmcallOpcode
    }
    """vmcall opcode -> handler method: ``handle_vmcall_<opcode>`` for each opcode of the ABI."""
    USER_VERSION: ClassVar[tuple[int, int, int]] = (0, 0, 0)
    """(major, minor, patch) answered for VERSIONS index USER (10); set it in a subclass."""
    VMM_UNITTESTS: ClassVar[dict[int, str]] = {}
    """UNITTEST index -> method, filled from the ``@vmm_unittest(index)`` marks."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.EXIT_HANDLERS = _exit_handlers(cls)
        tests = dict(cls.VMM_UNITTESTS)
        for name, member in vars(cls).items():
            index = getattr(member, "_vmm_unittest_index", None)
            if index is not None:
                tests[index] = name
        cls.VMM_UNITTESTS = tests

    def __init__(self) -> None:
        self.m_vmcs: Vmcs = Vmcs()
        """This vCPU's VMCS: exit information in, guest state and controls out."""
        self.m_state_save: StateSave = StateSave()
        """The guest's general registers, RIP and RSP as saved at the exit."""
        self.m_cpu: PhysicalCpu = ModelCpu()
        """What CPUID, RDMSR/WRMSR and WBINVD reach: the CPU model or the KVM vCPU."""
        self.m_memory: GuestPhysicalMemory | None = None
        """Guest RAM (None until the VMM attaches it)."""
        self.m_host_memory: HostMemory | None = None
        """Host-physical memory: guest RAM and the VMM's own pages (EPT tables); made at
        first use (``host_memory``)."""
        self._ept: Ept | None = None
        self.m_ports: PortSpace | None = None
        """The machine's port space, for I/O the handler passes through (None until the
        VMM attaches it)."""
        self.m_debug_ring: DebugRing = DebugRing()
        """This vCPU's log, read by ``bfm dump`` and ``VcpuResult.debug_ring``."""
        self.hypervisor_leaves: dict[int, CpuidRegisters] = hypervisor_leaves()
        """CPUID leaf -> registers the handler answers itself (0x40000000, 0x40000001)."""
        self._exit_table: dict[int, Callable[[], None]] = {
            reason: getattr(self, name) for reason, name in self.EXIT_HANDLERS.items()
        }
        self._vmcall_table: dict[int, Callable[[VmcallRegisters], None]] = {
            int(opcode): getattr(self, name) for opcode, name in self.VMCALL_HANDLERS.items()
        }

    def setup(self, vmcs: Vmcs) -> None:
        """Choose this vCPU's exits: write ``vmcs``'s controls here (default: the seed's).

        The VMM calls it once, after the boot state is built and before the first VM
        entry, on every backend and under ``bfm``.  A control the backend cannot honour is
        a ``ValueError`` naming it and the backend, never silently ignored.
        """

    # -- wiring (Bareflank's set_vmcs / set_state_save, and the VMM's others) --
    def set_vmcs(self, vmcs: Vmcs) -> None:
        """Use ``vmcs`` as this vCPU's VMCS (Bareflank's ``set_vmcs``)."""
        self.m_vmcs = vmcs

    def set_state_save(self, state_save: StateSave) -> None:
        """Use ``state_save`` for the guest registers saved at each exit."""
        self.m_state_save = state_save

    def set_cpu(self, cpu: PhysicalCpu) -> None:
        """Use ``cpu`` for CPUID, MSRs and WBINVD: the CPU model, or the KVM vCPU."""
        self.m_cpu = cpu

    def set_memory(self, memory: GuestPhysicalMemory) -> None:
        """Give the handler guest RAM, for ``map_guest_buffer`` (DATA vmcalls)."""
        self.m_memory = memory
        self.m_host_memory = None

    def host_memory(self) -> HostMemory:
        """Host-physical memory as the processor reads it (EPT tables): guest RAM at 0 and
        VMM pages the guest cannot reach."""
        if self.m_host_memory is None:
            if self.m_memory is None:
                raise VmcallError("no guest memory attached to this vCPU")
            self.m_host_memory = HostMemory(self.m_memory)
        return self.m_host_memory

    def set_ports(self, ports: PortSpace) -> None:
        """Give the handler the machine's ports (``m_ports``), for I/O it passes through."""
        self.m_ports = ports

    def set_debug_ring(self, ring: DebugRing) -> None:
        """Write this vCPU's log (``log``, ``bfm dump``) to ``ring``."""
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
        """Log the guest registers and halt this vCPU: the VMM stops running it."""
        # Bareflank 1.1's report, line for line (its view_as_pointer hex: 0xbeef).
        state = self.m_state_save
        lines = ["", "", "Guest register state: ", _RULE]
        lines += [f"- m_state_save->{name}: {getattr(state, name):#x}" for name in _HALT_REGISTERS]
        lines += ["", "", "CPU Halted: ", _RULE, f"- vcpuid: {state.vcpuid}", "", ""]
        self.log(_text(lines), logging.ERROR)
        self.m_vmcs.halt()

    def complete_vmcall(self, ret: int, regs: VmcallRegisters) -> None:
        """Hand ``regs`` and the status ``ret`` back to the guest and step over the VMCALL.

        Call it yourself only for a vmcall completed later (the seed's use); the slots
        written back are the ABI's ``RETURNED_SLOTS`` (EVENT: ``EVENT_RETURNED_SLOTS``).
        """
        # As Bareflank 1.1: EVENT is told apart by the opcode the guest left in RAX,
        # and RAX itself is never written (RETURNED_SLOTS leaves r00 out).
        state = self.m_state_save
        store = _store_event_registers if state.rax == _EVENT else _store_vmcall_registers
        store(regs, state, ret)
        self.advance_rip()

    # -- protected members of the seed ----------------------------------------
    def handle_exit(self, reason: int) -> None:
        """Run the handler of basic exit reason ``reason``, else ``unimplemented_handler``."""
        handler = self._exit_table.get(reason)
        if handler is None:
            self.unimplemented_handler()
        else:
            handler()

    def handle_cpuid(self) -> None:
        """Answer CPUID: the hypervisor leaves, else the CPU's, with CPUID.1:ECX[31] set."""
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
        """Carry out INVD as WBINVD (dropping caches the guest does not own is unsafe)."""
        # INVD would drop dirty lines the guest does not own: write back instead.
        self.m_cpu.wbinvd()
        self.advance_rip()

    def handle_vmcall(self) -> None:
        """Decode a vmcall from the guest registers, run its opcode, complete it.

        A bad magic number, an unknown opcode or a handler that raises returns
        BF_VMCALL_FAILURE to the guest and logs why.
        """
        regs = _load_vmcall_registers(self.m_state_save)
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
        """Promote: the vCPU leaves VMX operation, RIP still at the VMXOFF."""
        # RIP stays at the VMXOFF: Bareflank 1.1's promote resumed the guest there, now
        # outside VMX non-root operation, so the VMXOFF itself then executes.
        self.m_vmcs.promote()

    def handle_rdmsr(self) -> None:
        """RDMSR: the VMCS-backed MSRs from the VMCS, others from the CPU (#GP if absent)."""
        state = self.m_state_save
        msr = state.rcx & MASK32
        backed = VMCS_BACKED_MSRS.get(msr)
        if backed is not None:
            value = self.m_vmcs.read(backed.field)
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
        """WRMSR: the VMCS-backed MSRs into the VMCS, others to the CPU (#GP if absent)."""
        state = self.m_state_save
        msr = state.rcx & MASK32
        value = ((state.rdx & MASK32) << 32) | (state.rax & MASK32)
        backed = VMCS_BACKED_MSRS.get(msr)
        if backed is not None:
            # The MSR would refuse the value with #GP(0); the VMCS field never sees it.
            fault = wrmsr_fault(self.m_cpu, msr, value)
            if fault is not None:
                self._inject_general_protection(fault)
                return
            self.m_vmcs.write(backed.field, value)
        elif msr not in ZERO_READ_MSRS:
            try:
                self.m_cpu.wrmsr(msr, value)
            except MsrFault as fault:
                self._inject_general_protection(fault)
                return
        self.advance_rip()

    def advance_rip(self) -> None:
        """Step the guest past the exiting instruction (RIP += the VM-exit instruction length)."""
        state = self.m_state_save
        state.rip = (state.rip + self.m_vmcs.read(_INSTRUCTION_LENGTH)) & MASK64

    def unimplemented_handler(self) -> None:
        """Log the exit reason and exit information (and, for a failed VM entry,
        the failed checks and the VMCS) and halt the vCPU."""
        vmcs = self.m_vmcs
        reason = vmcs.read(vmcs_fields.VM_EXIT_REASON)
        lines = ["", "", "Unimplemented Exit Handler: ", _RULE, f"- exit reason: {reason:#x}"]
        lines.append(f"- exit reason string: {exit_reasons.description(reason)}")
        lines += [f"- {label}: {vmcs.read(enc):#x}" for label, enc in EXIT_INFORMATION_REPORT]
        info = vmcs.read(vmcs_fields.VM_EXIT_INTERRUPTION_INFORMATION)
        if info & (1 << 31):
            lines.append(f"- interruption: {qualifications.InterruptionInformation.decode(info)}")
        if reason & exit_reasons.VM_ENTRY_FAILURE:
            lines += ["", "VM-entry failure detected!!!", ""]
        self.log(_text(lines), logging.ERROR)
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
        """VERSIONS: r02 = index (0 protocol, 1 pyflank, 10 ``USER_VERSION``) -> r03-r05."""
        if regs.r02 == VmcallVersionIndex.PROTOCOL:
            version = (VMCALL_VERSION, 0, 0)
        elif regs.r02 == VmcallVersionIndex.BAREFLANK:
            version = PYFLANK_VERSION
        elif regs.r02 == VmcallVersionIndex.USER:
            version = self.USER_VERSION
        else:
            raise VmcallError(f"unknown vmcall version index: {regs.r02:#x}")
        regs.r03, regs.r04, regs.r05 = version

    def handle_vmcall_registers(self, regs: VmcallRegisters) -> None:
        """REGISTERS: log r02-r12 as the guest sent them."""
        values = regs.as_tuple()
        lines = ["vmcall registers:", *(f"r{i:02d}: {values[i]:#x}" for i in range(2, 13))]
        self.log("\n".join(lines))

    def handle_vmcall_event(self, regs: VmcallRegisters) -> None:
        """EVENT: log the event code in r02."""
        self.log(f"vmcall event:\nr02: {regs.r02:#x}")

    def handle_vmcall_start(self, regs: VmcallRegisters) -> None:
        """START: nothing to do in the seed; override to act on it."""
        pass

    def handle_vmcall_stop(self, regs: VmcallRegisters) -> None:
        """STOP: nothing to do in the seed; override to act on it."""
        pass

    def handle_vmcall_unittest(self, regs: VmcallRegisters) -> None:
        """UNITTEST: run the in-VMM self-test registered for index r02 (``@vmm_unittest``)."""
        name = self.VMM_UNITTESTS.get(regs.r02)
        if name is None:
            raise VmcallError(f"unknown vmm unittest index: {regs.r02:#x}")
        getattr(self, name)(regs)
        self.log(f"vmm unittest {regs.r02} ({name}): passed")

    def handle_vmcall_data(self, regs: VmcallRegisters) -> None:
        """DATA: map both guest buffers, pass the input to the handler of its type
        and write the reply (type in r07, size in r09)."""
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
        self.log(f"received in vmm: {bareflank_json(ijson)}")
        return ijson

    def handle_vmcall_data_binary_unformatted(
        self, imap: GuestVirtualRange, omap: GuestVirtualRange
    ) -> None:
        """Binary DATA: fill ``omap`` from ``imap``; default: copy."""
        self.log("received binary data")
        omap.write(imap.read())

    def reply_with_string(self, regs: VmcallRegisters, text: str, omap: GuestVirtualRange) -> None:
        """Write ``text`` as an unformatted-string DATA reply into ``omap``."""
        self._reply(regs, VmcallDataType.STRING_UNFORMATTED, text, omap)

    def reply_with_json(self, regs: VmcallRegisters, value: Any, omap: GuestVirtualRange) -> None:
        """Write ``value`` as a JSON DATA reply into ``omap`` (as nlohmann::json wrote it)."""
        self._reply(regs, VmcallDataType.STRING_JSON, bareflank_json(value), omap)

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
    def guest_linear(self) -> GuestLinear:
        """Guest memory as the guest's paging maps it at this exit (its CR0, CR3, EFER):
        ``read``, ``write``, ``map`` guest-linear addresses, ``physical`` to translate."""
        if self.m_memory is None:
            raise VmcallError("no guest memory attached to this vCPU")
        read = self.m_vmcs.read
        return paging.guest_linear(
            self.m_memory,
            cr0=read(vmcs_fields.GUEST_CR0),
            cr3=read(vmcs_fields.GUEST_CR3),
            efer=read(vmcs_fields.GUEST_IA32_EFER),
        )

    def map_guest_buffer(self, gva: int, size: int, *, writable: bool) -> GuestVirtualRange:
        """Map a guest-virtual buffer through the guest's CR3, as the guest sees it."""
        linear = self.guest_linear()
        if not linear.paging:
            raise VmcallError("guest paging is off: buffers must be guest-virtual")
        return linear.map(gva, size, writable=writable)

    @property
    def ept(self) -> Ept:
        """This vCPU's EPT (``exit_handler.ept``): tables in VMM memory, ``enable``,
        ``protect`` pages, ``violation()`` decoded."""
        if self._ept is None:
            self._ept = Ept(self)
        return self._ept

    def monitor_trap_flag(self, enabled: bool) -> None:
        """Set or clear the "monitor trap flag" control: with it set, the guest exits
        (reason 37) after its next instruction, or after delivering an event."""
        vmcs = self.m_vmcs
        controls = vmcs.read(_PRIMARY_CONTROLS)
        wanted = controls | _MONITOR_TRAP_FLAG if enabled else controls & ~_MONITOR_TRAP_FLAG
        if wanted != controls:
            vmcs.write(_PRIMARY_CONTROLS, wanted)

    def invalidation(self) -> invalidation.Invalidation:
        """The operands of this INVEPT or INVVPID exit: the invalidation type (from the
        register the instruction information names) and the descriptor (read through the
        guest's paging at the memory operand)."""
        read = self.m_vmcs.read
        reason = read(_EXIT_REASON) & 0xFFFF
        instruction = _INVALIDATIONS.get(reason)
        if instruction is None:
            raise VmcallError(f"exit {exit_reasons.description(reason)} is not INVEPT/INVVPID")
        bases = tuple(read(field) for field in _SEGMENT_BASES)
        return invalidation.decode(
            instruction,
            read(vmcs_fields.VM_EXIT_INSTRUCTION_INFORMATION),
            read(vmcs_fields.EXIT_QUALIFICATION),
            self.m_state_save.gprs(),
            bases,
            self.guest_linear().read,
        )

    def memory_accesses(self) -> list[Access]:
        """The memory accesses of the instruction at RIP, in the processor's order (its
        fetch, reads, writes; ``intel_x64.accesses``), decoded through the guest's paging
        with the registers of this exit: where and how wide each is.  Empty where the
        instruction cannot be fetched or decoded."""
        from pyflank.intel_x64 import decode as instruction_decode  # noqa: PLC0415 - iced-x86
        from pyflank.intel_x64.accesses import instruction_accesses  # noqa: PLC0415 - on use

        rip = self.m_state_save.rip
        code = self.guest_linear().read_available(rip, _MAX_INSTRUCTION_LENGTH)
        instruction = instruction_decode.decode(code, rip)
        if not code or instruction.is_invalid:
            return []
        bases = tuple(self.m_vmcs.read(field) for field in _SEGMENT_BASES)
        return instruction_accesses(instruction, self.m_state_save.gprs(), bases)

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
        self.inject_exception(VECTOR_GP, 0)

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


# The base class's own exit table and self-tests (__init_subclass__ runs for subclasses).
ExitHandlerIntelX64.EXIT_HANDLERS = _exit_handlers(ExitHandlerIntelX64, warn=False)
ExitHandlerIntelX64.VMM_UNITTESTS = {
    index: name
    for name, member in vars(ExitHandlerIntelX64).items()
    if (index := getattr(member, "_vmm_unittest_index", None)) is not None
}
