"""External interrupts and guest time in the processor, with synthetic records and a real
PC platform (8259 pair, 8254 timer) on a virtual clock: no engine at all."""

from __future__ import annotations

import threading

from test_vmx_processor import RIP, RSP, record, regs

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks.valid_state import default_controls, long_mode_guest_state
from pyflank.intel_x64.controls import PinBasedControls as Pin
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.controls import VmExitControls as Exit
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.qualifications import InterruptionType
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.platform.devices.clock import VirtualClock
from pyflank.platform.devices.pc import PcConfig, PcPlatform
from pyflank.processor import (
    EntryPlan,
    ExitInformation,
    ExitRecord,
    Pause,
    Stop,
    StopReason,
    VmxProcessor,
)
from pyflank.processor.time import UNITS_PER_NS, units_for

IF = 1 << 9
TIMER_VECTOR = 0x20
PIT_HZ = 1_193_182
TICK_COUNT = 1193  # about 1 ms


def program(pc: PcPlatform, *, tick: bool = True) -> None:
    """As Linux's init_8259A and setup_pit_timer: vectors 0x20/0x28, IRQ0 periodic."""
    out = pc.io.io_write
    for port, base, cascade in ((0x20, 0x20, 0x04), (0xA0, 0x28, 0x02)):
        out(port, 1, 0x11)  # ICW1: edge, cascade, ICW4 follows
        out(port + 1, 1, base)
        out(port + 1, 1, cascade)
        out(port + 1, 1, 0x01)  # 8086 mode
        out(port + 1, 1, 0x00)  # nothing masked
    if tick:
        out(0x43, 1, 0x34)  # counter 0, lo/hi, mode 2 (rate generator)
        out(0x40, 1, TICK_COUNT & 0xFF)
        out(0x40, 1, TICK_COUNT >> 8)


def nothing_unsupported(vmcs: Vmcs) -> list[str]:
    return []


def machine(handler: ExitHandlerIntelX64, *, tick: bool = True) -> tuple[VmxProcessor, PcPlatform]:
    pc = PcPlatform(VirtualClock(), PcConfig(rtc_start=0))
    program(pc, tick=tick)
    vmcs = handler.m_vmcs
    default_controls(vmcs, handler.m_cpu)
    long_mode_guest_state(vmcs, cr3=0x1000, rip=RIP, rsp=RSP, gdt_base=0x5000, gdt_limit=0x1F)
    handler.setup(vmcs)
    handler.m_state_save.rip, handler.m_state_save.rsp = RIP, RSP
    processor = VmxProcessor(handler, nothing_unsupported, machine=pc)
    plan = processor.launch()
    assert isinstance(plan, EntryPlan)
    return processor, pc


def at(reason: int, ns: int, *, rflags: int = 0x2, length: int = 2) -> ExitRecord:
    """An exit after ``ns`` of guest time."""
    executed = ns * UNITS_PER_NS
    return record(reason, length=length)._replace(rflags=rflags, executed=executed)


def test_time_follows_the_guest_and_plans_bound_the_slice() -> None:
    processor, pc = machine(ExitHandlerIntelX64())
    plan = processor.exit(at(ExitReason.CPUID, 1000))
    assert isinstance(plan, EntryPlan)
    assert pc.clock.now_ns() == 1000
    first_tick = pc.next_deadline_ns()
    assert first_tick is not None and plan.budget == units_for(first_tick - 1000)


def test_an_interrupt_is_delivered_when_rflags_if_allows() -> None:
    processor, pc = machine(ExitHandlerIntelX64())
    period_ns = TICK_COUNT * 1_000_000_000 // PIT_HZ
    masked = processor.exit(at(ExitReason.CPUID, 2 * period_ns))  # IF=0: waits
    assert isinstance(masked, EntryPlan) and masked.event is None
    plan = processor.exit(at(ExitReason.CPUID, 2 * period_ns + 10, rflags=0x2 | IF))
    assert isinstance(plan, EntryPlan) and plan.event is not None
    event = plan.event
    assert (event.vector, event.type, event.error_code) == (
        TIMER_VECTOR,
        InterruptionType.EXTERNAL_INTERRUPT,
        None,
    )
    assert event.return_rip == plan.rip == RIP + 2
    assert pc.pic.master.isr & 1  # INTA: in service until the guest's EOI


class TakesExternalInterrupts(ExitHandlerIntelX64):
    """hvpp's pattern: see each interrupt, then inject it."""

    def __init__(self) -> None:
        super().__init__()
        self.vectors: list[int] = []

    def setup(self, vmcs: Vmcs) -> None:
        pin = f.PIN_BASED_VM_EXECUTION_CONTROLS
        vmcs.write(pin, vmcs.read(pin) | Pin.EXTERNAL_INTERRUPT_EXITING)
        controls = f.VM_EXIT_CONTROLS
        vmcs.write(controls, vmcs.read(controls) | Exit.ACKNOWLEDGE_INTERRUPT_ON_EXIT)

    def handle_external_interrupt(self) -> None:
        info = self.m_vmcs.read(f.VM_EXIT_INTERRUPTION_INFORMATION)
        assert info >> 31, "acknowledged on exit: the vector is valid"
        self.vectors.append(info & 0xFF)
        self.m_vmcs.write(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD, info)  # inject it


def test_external_interrupt_exiting_hands_the_interrupt_to_the_handler() -> None:
    handler = TakesExternalInterrupts()
    processor, _ = machine(handler)
    plan = processor.exit(at(ExitReason.CPUID, 5_000_000))  # IF=0 does not matter here
    assert handler.vectors == [TIMER_VECTOR]
    assert handler.m_vmcs.read(f.VM_EXIT_REASON) == ExitReason.EXTERNAL_INTERRUPT
    assert isinstance(plan, EntryPlan) and plan.event is not None
    assert plan.event.vector == TIMER_VECTOR


class WantsTheWindow(ExitHandlerIntelX64):
    def __init__(self) -> None:
        super().__init__()
        self.windows = 0

    def handle_interrupt_window(self) -> None:
        self.windows += 1
        primary = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        self.m_vmcs.write(primary, self.m_vmcs.read(primary) & ~Proc.INTERRUPT_WINDOW_EXITING)


def test_interrupt_window_exiting_exits_when_the_guest_can_take_one() -> None:
    handler = WantsTheWindow()
    processor, _ = machine(handler, tick=False)
    primary = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
    handler.m_vmcs.write(primary, handler.m_vmcs.read(primary) | Proc.INTERRUPT_WINDOW_EXITING)
    assert isinstance(processor.exit(at(ExitReason.CPUID, 10)), EntryPlan)  # controls load
    assert handler.windows == 0
    assert isinstance(processor.exit(at(ExitReason.CPUID, 20)), EntryPlan)  # IF=0: no window
    assert handler.windows == 0
    plan = processor.exit(at(ExitReason.CPUID, 30, rflags=0x2 | IF))
    assert isinstance(plan, EntryPlan) and handler.windows == 1


def halted_at(ns: int) -> Pause:
    state = ExitRecord(ExitInformation(-1), regs(), RIP + 1, 0x2 | IF, None, "", ns * UNITS_PER_NS)
    return Pause(state, halted=True)


def test_a_halted_vcpu_sleeps_to_the_next_tick_and_takes_it() -> None:
    processor, pc = machine(ExitHandlerIntelX64())
    early = processor.pause(halted_at(100))  # programming mode 2 raised OUT: an early edge
    assert isinstance(early, EntryPlan) and early.event is not None and early.idle_ns == 0
    pc.io.io_write(0x20, 1, 0x20)  # the guest's EOI
    plan = processor.pause(halted_at(200))
    assert isinstance(plan, EntryPlan) and plan.event is not None
    assert plan.event.vector == TIMER_VECTOR and plan.event.return_rip == RIP + 1
    assert plan.idle_ns > 0 and pc.clock.now_ns() == 200 + plan.idle_ns
    assert processor.exits == 0  # no VM exit: HLT and the interrupt are the platform's


def test_without_a_machine_hlt_with_interrupts_enabled_ends_the_run() -> None:
    from test_vmx_processor import launched

    processor, _ = launched()
    stop = processor.pause(halted_at(100))
    assert isinstance(stop, Stop) and stop.reason is StopReason.GUEST_HLT


def test_a_vcpu_halted_with_nothing_armed_waits_until_stopped() -> None:
    processor, _ = machine(ExitHandlerIntelX64(), tick=False)
    threading.Timer(0.1, processor.request_stop, (StopReason.TIMEOUT,)).start()
    stop = processor.pause(halted_at(100))
    assert isinstance(stop, Stop) and stop.reason is StopReason.TIMEOUT


def test_host_input_wakes_a_halted_vcpu() -> None:
    processor, pc = machine(ExitHandlerIntelX64(), tick=False)
    pc.io.io_write(0x3F8 + 1, 1, 0x01)  # IER: received-data interrupt
    pc.io.io_write(0x3F8 + 4, 1, 0x08)  # MCR.OUT2: the UART's IRQ reaches the PIC
    threading.Timer(0.1, pc.com1.feed, (b"x",)).start()
    plan = processor.pause(halted_at(100))
    assert isinstance(plan, EntryPlan) and plan.event is not None
    assert plan.event.vector == 0x20 + 4  # COM1 is IRQ 4
