"""Activity state HLT and the composable handlers that keep a guest OS running with its
exits on (``exit_handler.passthrough``), with synthetic records and a real PC platform."""

from __future__ import annotations

from test_interrupts import IF, TIMER_VECTOR, at, machine
from test_vmx_processor import launched

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.exit_handler.passthrough import ForwardedInterrupts, HltToIdle, IoPassThrough
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import ActivityState
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.processor import EntryPlan, ExitInformation, Stop, StopReason

PRIMARY = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
COM1_SCRATCH = 0x3F8 + 7


class Counting(ExitHandlerIntelX64):
    def __init__(self) -> None:
        super().__init__()
        self.reasons: list[int] = []

    def handle_exit(self, reason: int) -> None:
        self.reasons.append(reason)
        super().handle_exit(reason)


class Idles(Counting, HltToIdle):
    pass


class Forwards(Counting, HltToIdle, ForwardedInterrupts):
    pass


class PassesIo(Counting, IoPassThrough):
    pass


def test_an_hlt_exit_resumed_in_hlt_state_sleeps_to_the_tick_and_takes_it() -> None:
    handler = Idles()
    processor, pc = machine(handler)
    assert handler.m_vmcs.read(PRIMARY) & Proc.HLT_EXITING
    early = processor.exit(at(ExitReason.HLT, 100, rflags=0x2 | IF, length=1))
    assert isinstance(early, EntryPlan) and early.event is not None  # mode 2's early edge
    pc.io.io_write(0x20, 1, 0x20)  # the guest's EOI
    plan = processor.exit(at(ExitReason.HLT, 200, rflags=0x2 | IF, length=1))
    assert isinstance(plan, EntryPlan) and plan.event is not None
    assert plan.event.vector == TIMER_VECTOR and plan.event.return_rip == plan.rip
    assert plan.idle_ns > 0  # it slept: no guest code ran
    assert handler.m_vmcs.read(f.GUEST_ACTIVITY_STATE) == ActivityState.ACTIVE  # woken
    assert handler.reasons == [ExitReason.HLT, ExitReason.HLT]


def test_hlt_state_with_interrupts_disabled_ends_the_run() -> None:
    processor, _ = machine(Idles())
    stop = processor.exit(at(ExitReason.HLT, 100, length=1))  # IF=0, no interrupt exits
    assert isinstance(stop, Stop) and stop.reason is StopReason.GUEST_HLT
    assert "nothing would wake" in stop.message


def test_hlt_state_without_a_machine_ends_the_run() -> None:
    processor, _ = launched(Idles())
    stop = processor.exit(at(ExitReason.HLT, 100, rflags=0x2 | IF, length=1))
    assert isinstance(stop, Stop) and stop.reason is StopReason.GUEST_HLT


def test_an_interrupt_is_forwarded_at_once_or_at_the_window() -> None:
    handler = Forwards()
    processor, _ = machine(handler)
    masked = processor.exit(at(ExitReason.CPUID, 5_000_000))  # IF=0: taken, held
    assert handler.reasons[-1] == ExitReason.EXTERNAL_INTERRUPT
    assert isinstance(masked, EntryPlan) and masked.event is None
    assert list(handler.pending_vectors) == [TIMER_VECTOR]
    assert handler.m_vmcs.read(PRIMARY) & Proc.INTERRUPT_WINDOW_EXITING
    plan = processor.exit(at(ExitReason.CPUID, 5_000_010, rflags=0x2 | IF))  # the window
    assert ExitReason.INTERRUPT_WINDOW in handler.reasons
    assert isinstance(plan, EntryPlan) and plan.event is not None
    assert plan.event.vector == TIMER_VECTOR
    assert not handler.pending_vectors
    assert not handler.m_vmcs.read(PRIMARY) & Proc.INTERRUPT_WINDOW_EXITING


def test_io_passes_through_to_the_machines_devices() -> None:
    handler = PassesIo()
    processor, pc = machine(handler, tick=False)
    handler.set_ports(pc.io)  # as Vcpu does
    out = (0 << 3) | (COM1_SCRATCH << 16)  # 1 byte, OUT, DX
    record = at(ExitReason.IO_INSTRUCTION, 10, length=1)
    processor.exit(record._replace(info=ExitInformation(30, out, 1), regs=(0x5A, *record.regs[1:])))
    assert pc.io.io_read(COM1_SCRATCH, 1) == 0x5A  # the OUT reached the UART
    into = out | 1 << 3
    plan = processor.exit(record._replace(info=ExitInformation(30, into, 1)))
    assert isinstance(plan, EntryPlan) and plan.regs[0] & 0xFF == 0x5A  # and IN reads it
    assert plan.rip == record.rip + 1
    assert handler.reasons == [ExitReason.IO_INSTRUCTION] * 2
