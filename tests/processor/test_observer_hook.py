"""The processor's observer hook with synthetic exit records and no engine: what an
observer sees around ``dispatch()``, how a break stops the vCPU, how observers compose."""

from __future__ import annotations

from test_vmx_processor import ENTRY_FAILURE, RFLAGS, RIP, BreaksCr0, make, record, regs

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.processor import (
    EntryPlan,
    ExitInformation,
    ExitRecord,
    Stop,
    StopReason,
    VmxProcessor,
)
from pyflank.processor.observer import ReasonTrace, VcpuObservers, compose_observers


class Watching:
    """Notes what it was shown, and the handler's state then."""

    def __init__(self, handler: ExitHandlerIntelX64, breaks_on: int | None = None) -> None:
        self.handler = handler
        self.breaks_on = breaks_on
        self.seen: list[tuple[str, int, int]] = []  # (call, reason, StateSave RIP)

    def exiting(self, record: ExitRecord) -> Stop | None:
        self.seen.append(("exiting", record.info.reason, self.handler.m_state_save.rip))
        if record.info.reason == self.breaks_on:
            return Stop(StopReason.BREAK, "broke")
        return None

    def exited(self, record: ExitRecord, handler_ns: int) -> None:
        assert handler_ns > 0
        self.seen.append(("exited", record.info.reason, self.handler.m_state_save.rip))

    def stopped(self, stop: Stop) -> None:
        self.seen.append(("stopped", 0, 0))


def observed(
    handler: ExitHandlerIntelX64 | None = None, breaks_on: int | None = None
) -> tuple[VmxProcessor, ExitHandlerIntelX64, Watching]:
    processor, handler = make(handler, trace=False)
    watching = Watching(handler, breaks_on)
    processor.observer = watching
    assert isinstance(processor.launch(), EntryPlan)
    return processor, handler, watching


def test_the_observer_sees_the_exit_stored_then_the_handlers_changes() -> None:
    processor, _, watching = observed()
    plan = processor.exit(record(ExitReason.CPUID, length=2))
    assert isinstance(plan, EntryPlan) and plan.rip == RIP + 2
    assert watching.seen == [
        ("exiting", ExitReason.CPUID, RIP),  # stored, not yet handled
        ("exited", ExitReason.CPUID, RIP + 2),  # the handler advanced RIP
    ]
    assert processor.exits == 1


def test_an_engines_plain_tuple_reaches_observers_as_a_record() -> None:
    processor, _, watching = observed()
    plain = (ExitInformation(ExitReason.CPUID, 0, 2), regs(), RIP, RFLAGS, None, "", -1)
    processor.exit(plain)  # type: ignore[arg-type] - the software CPU's CPUID exit does this
    assert [call for call, _, _ in watching.seen] == ["exiting", "exited"]


def test_a_break_stops_before_the_handler_runs() -> None:
    processor, handler, watching = observed(breaks_on=ExitReason.RDMSR)
    stop = processor.exit(record(ExitReason.RDMSR, length=2, rcx=0x10))
    assert isinstance(stop, Stop) and stop.reason is StopReason.BREAK
    assert watching.seen == [("exiting", ExitReason.RDMSR, RIP)]
    assert processor.exits == 0
    assert handler.m_state_save.rip == RIP and handler.m_state_save.rcx == 0x10
    assert handler.m_vmcs.read(f.VM_EXIT_REASON) == ExitReason.RDMSR


def test_entry_failure_exits_are_observed_and_can_break() -> None:
    handler = BreaksCr0()
    handler.fixes = True
    processor, _, watching = observed(handler)
    processor.exit(record(ExitReason.CPUID, length=2))
    assert [(call, reason) for call, reason, _ in watching.seen] == [
        ("exiting", ExitReason.CPUID), ("exited", ExitReason.CPUID),
        ("exiting", ENTRY_FAILURE), ("exited", ENTRY_FAILURE),
    ]  # fmt: skip
    breaking = BreaksCr0()
    processor, _, watching = observed(breaking, breaks_on=ENTRY_FAILURE)
    stop = processor.exit(record(ExitReason.CPUID, length=2))
    assert isinstance(stop, Stop) and stop.reason is StopReason.BREAK
    assert breaking.failures == 0  # the handler never saw the failed entry


def test_observers_compose_in_order_and_a_break_ends_the_round() -> None:
    handler = ExitHandlerIntelX64()
    first, second = Watching(handler, breaks_on=ExitReason.RDMSR), Watching(handler)
    both = VcpuObservers([first, second])
    assert both.exiting(record(ExitReason.CPUID)) is None
    stop = both.exiting(record(ExitReason.RDMSR))
    assert isinstance(stop, Stop)
    assert [c for c, _, _ in first.seen] == ["exiting", "exiting"]
    assert [c for c, _, _ in second.seen] == ["exiting"]  # after the break: not asked
    both.stopped(stop)
    assert first.seen[-1][0] == second.seen[-1][0] == "stopped"
    assert compose_observers([]) is None and compose_observers([first]) is first


def test_the_reason_trace_is_an_observer_of_dispatched_exits() -> None:
    processor, _ = make(trace=True)
    assert isinstance(processor.observer, ReasonTrace)
    processor.launch()
    processor.exit(record(ExitReason.CPUID, length=2))
    assert processor.trace == [(ExitReason.CPUID, RIP)]
    plain, _ = make(trace=False)
    assert plain.observer is None and plain.trace is None


def test_exits_the_processor_makes_itself_are_observed() -> None:
    from test_interrupts import TIMER_VECTOR, TakesExternalInterrupts, at, machine

    handler = TakesExternalInterrupts()
    processor, _ = machine(handler)
    watching = Watching(handler)
    processor.observer = watching
    processor.exit(at(ExitReason.CPUID, 5_000_000))  # a timer tick is due: exit 1 follows
    assert handler.vectors == [TIMER_VECTOR]
    assert [(call, reason) for call, reason, _ in watching.seen] == [
        ("exiting", ExitReason.CPUID), ("exited", ExitReason.CPUID),
        ("exiting", ExitReason.EXTERNAL_INTERRUPT), ("exited", ExitReason.EXTERNAL_INTERRUPT),
    ]  # fmt: skip
    breaking = TakesExternalInterrupts()
    processor, _ = machine(breaking)
    processor.observer = Watching(breaking, breaks_on=ExitReason.EXTERNAL_INTERRUPT)
    stop = processor.exit(at(ExitReason.CPUID, 5_000_000))
    assert isinstance(stop, Stop) and stop.reason is StopReason.BREAK
    assert breaking.vectors == [] and processor.exits == 1
