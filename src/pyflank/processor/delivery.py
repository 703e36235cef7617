"""Delivering an exception or interrupt through the guest's 64-bit IDT (SDM Vol. 3A, 6.14).

For engines that do not deliver events themselves (unicorn reports guest exceptions to a
hook instead of delivering them, and has no VM-entry event injection): gate lookup and
checks, stack switch (IST or privilege change), the 64-bit frame, RFLAGS and CS:RIP.  A
fault while delivering is combined with the event being delivered by the double-fault
rules (SDM Table 6-5); a fault while delivering #DF is a triple fault.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from pyflank.intel_x64.paging import guest_linear
from pyflank.intel_x64.qualifications import InterruptionType
from pyflank.intel_x64.registers import RFLAGS_IF, RFLAGS_NT, RFLAGS_RF, RFLAGS_TF, RFLAGS_VM
from pyflank.intel_x64.vectors import (
    VECTOR_DE,
    VECTOR_DF,
    VECTOR_GP,
    VECTOR_NP,
    VECTOR_PF,
    VECTOR_SS,
    VECTOR_TS,
)
from pyflank.memory import GuestLinear, GuestPhysicalMemory, PageFault, PageFaultReason
from pyflank.processor.records import Event

CONTRIBUTORY = frozenset({VECTOR_DE, VECTOR_TS, VECTOR_NP, VECTOR_SS, VECTOR_GP})
# Exceptions that push an error code (SDM Table 6-1): #DF, #TS, #NP, #SS, #GP, #PF, #AC, #CP.
ERROR_CODE_VECTORS = frozenset({8, 10, 11, 12, 13, 14, 17, 21})
SOFTWARE_TYPES = frozenset(
    {
        InterruptionType.SOFTWARE_INTERRUPT,
        InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION,
        InterruptionType.SOFTWARE_EXCEPTION,
    }
)

_GATE = struct.Struct("<HHBBHIxxxx")
_Q = struct.Struct("<Q")
_MASK64 = (1 << 64) - 1
# #PF error-code bits (SDM 4.7)
PF_PRESENT, PF_WRITE, PF_USER, PF_RESERVED, PF_FETCH = 1, 2, 4, 8, 16


@dataclass(frozen=True, slots=True)
class CpuView:
    """The processor state delivery reads and replaces."""

    rip: int
    rsp: int
    rflags: int
    cs: int
    ss: int
    cpl: int
    cr0: int
    cr3: int
    efer: int
    gdtr_base: int
    gdtr_limit: int
    idtr_base: int
    idtr_limit: int
    tr_base: int


@dataclass(frozen=True, slots=True)
class Landing:
    """Where the handler of the event starts."""

    rip: int
    rsp: int
    rflags: int
    cs: int
    ss: int
    cr2: int | None = None  # set when a #PF raised during delivery was delivered


class DeliveryFault(Exception):
    def __init__(self, vector: int, error_code: int, cr2: int | None = None) -> None:
        super().__init__(f"vector {vector} error code {error_code:#x}")
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


@dataclass(frozen=True, slots=True)
class NestedExit:
    """A fault during delivery whose exception-bitmap bit asks for a VM exit."""

    fault: Event
    original: Event


class TripleFault(Exception):
    pass


def page_fault_error(reason: PageFaultReason, *, write: bool, fetch: bool, user: bool) -> int:
    code = 0 if reason in (PageFaultReason.NOT_PRESENT, PageFaultReason.OUTSIDE_RAM) else PF_PRESENT
    if reason is PageFaultReason.RESERVED_BIT:
        code |= PF_RESERVED
    if write:
        code |= PF_WRITE
    if user:
        code |= PF_USER
    if fetch:
        code |= PF_FETCH
    return code


def _linear(memory: GuestPhysicalMemory, cpu: CpuView) -> GuestLinear:
    return guest_linear(memory, cr0=cpu.cr0, cr3=cpu.cr3, efer=cpu.efer)


def _page_fault(fault: PageFault, *, write: bool) -> DeliveryFault:
    """The #PF a supervisor access of the delivery raises (SDM 6.15)."""
    error = page_fault_error(fault.reason, write=write, fetch=False, user=False)
    return DeliveryFault(VECTOR_PF, error, cr2=fault.gva)


class Delivery:
    """One CPU's event delivery over guest RAM."""

    def __init__(self, memory: GuestPhysicalMemory) -> None:
        self.memory = memory

    def _read(self, cpu: CpuView, address: int, size: int) -> bytes:
        try:
            return _linear(self.memory, cpu).read(address, size)
        except PageFault as fault:
            raise _page_fault(fault, write=False) from None

    def _push(self, cpu: CpuView, rsp: int, values: list[int]) -> int:
        linear = _linear(self.memory, cpu)
        for value in values:
            rsp = (rsp - 8) & _MASK64
            try:
                linear.write(rsp, _Q.pack(value & _MASK64))
            except PageFault as fault:
                raise _page_fault(fault, write=True) from None
        return rsp

    def deliver(self, cpu: CpuView, event: Event) -> Landing:
        """Deliver ``event`` once; a fault doing it raises ``DeliveryFault``."""
        vector = event.vector
        software = event.type in SOFTWARE_TYPES
        ext = 0 if software else 1
        idt_error = vector << 3 | 2 | ext
        if vector * 16 + 15 > cpu.idtr_limit:
            raise DeliveryFault(VECTOR_GP, idt_error)
        low, selector, ist, attributes, mid, high = _GATE.unpack(
            self._read(cpu, cpu.idtr_base + vector * 16, 16)
        )
        gate_type, dpl, present = attributes & 0xF, (attributes >> 5) & 3, attributes >> 7
        if gate_type not in (0xE, 0xF):
            raise DeliveryFault(VECTOR_GP, idt_error)
        # INT n, INT3 and INTO check the gate's DPL; ICEBP and hardware events do not.
        privileged = event.type is InterruptionType.PRIVILEGED_SOFTWARE_EXCEPTION
        if software and not privileged and dpl < cpu.cpl:
            raise DeliveryFault(VECTOR_GP, idt_error)
        if not present:
            raise DeliveryFault(VECTOR_NP, idt_error)
        new_cpl = self._code_segment(cpu, selector, ext)
        rsp = cpu.rsp
        ss = cpu.ss
        if ist & 7:
            rsp = self._tss_qword(cpu, 0x24 + 8 * ((ist & 7) - 1))
        if new_cpl < cpu.cpl:
            if not ist & 7:
                rsp = self._tss_qword(cpu, 4 + 8 * new_cpl)
            ss = new_cpl
        rsp &= ~0xF
        frame = [cpu.ss, cpu.rsp, cpu.rflags, cpu.cs, event.return_rip]
        if event.error_code is not None:
            frame.append(event.error_code)
        rsp = self._push(cpu, rsp, frame)
        rflags = cpu.rflags & ~(RFLAGS_TF | RFLAGS_NT | RFLAGS_RF | RFLAGS_VM)
        if gate_type == 0xE:
            rflags &= ~RFLAGS_IF
        rip = low | mid << 16 | high << 32
        return Landing(rip=rip, rsp=rsp, rflags=rflags, cs=(selector & ~3) | new_cpl, ss=ss)

    def _code_segment(self, cpu: CpuView, selector: int, ext: int) -> int:
        """CPL after loading ``selector`` into CS; checks it names a 64-bit code segment."""
        if selector & ~3 == 0 or selector & 4:
            raise DeliveryFault(VECTOR_GP, ext)
        index = selector & ~7
        if index + 7 > cpu.gdtr_limit:
            raise DeliveryFault(VECTOR_GP, (selector & ~3) | ext)
        (descriptor,) = _Q.unpack(self._read(cpu, cpu.gdtr_base + index, 8))
        access = (descriptor >> 40) & 0xFF
        code = access & 0x18 == 0x18
        long_mode = (descriptor >> 53) & 1
        if not code or not long_mode:
            raise DeliveryFault(VECTOR_GP, (selector & ~3) | ext)
        if not access & 0x80:
            raise DeliveryFault(VECTOR_NP, (selector & ~3) | ext)
        dpl = (access >> 5) & 3
        return cpu.cpl if access & 0x04 else dpl  # conforming code keeps the CPL

    def _tss_qword(self, cpu: CpuView, offset: int) -> int:
        (value,) = _Q.unpack(self._read(cpu, cpu.tr_base + offset, 8))
        return int(value)

    def deliver_with_faults(
        self, cpu: CpuView, event: Event, exception_exits: int
    ) -> Landing | NestedExit:
        """Deliver, applying the double-fault rules; ``exception_exits`` is the exception
        bitmap (a fault it names becomes a VM exit instead).  Raises ``TripleFault``."""
        cr2 = None
        while True:
            try:
                landing = self.deliver(cpu, event)
                return replace(landing, cr2=cr2) if cr2 is not None else landing
            except DeliveryFault as fault:
                error = fault.error_code
                nested = Event(fault.vector, InterruptionType.HARDWARE_EXCEPTION, error, cpu.rip)
                if fault.cr2 is not None:
                    cr2 = fault.cr2
                if exception_exits >> fault.vector & 1:
                    return NestedExit(nested, event)
                event = self._combine(event, nested, cpu.rip)

    @staticmethod
    def _combine(first: Event, second: Event, rip: int) -> Event:
        # Interrupts, NMIs and software-raised events are benign whatever their vector.
        hardware = first.type is InterruptionType.HARDWARE_EXCEPTION
        first_vector = first.vector if hardware else -1
        serious = second.vector in CONTRIBUTORY or second.vector == VECTOR_PF
        if first_vector == VECTOR_DF and serious:
            raise TripleFault
        double = (first_vector in CONTRIBUTORY and second.vector in CONTRIBUTORY) or (
            first_vector == VECTOR_PF and serious
        )
        if double:
            return Event(VECTOR_DF, InterruptionType.HARDWARE_EXCEPTION, 0, rip)
        return second
