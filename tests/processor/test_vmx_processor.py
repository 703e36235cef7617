"""The VMX processor with synthetic exit records and no engine at all (firecracker-style)."""

from __future__ import annotations

import pytest

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks.valid_state import default_controls, long_mode_guest_state
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.exit_reasons import VM_ENTRY_FAILURE, ExitReason
from pyflank.intel_x64.qualifications import InterruptionType
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.processor import (
    MAX_ENTRY_FAILURES,
    EntryPlan,
    ExitInformation,
    ExitRecord,
    Stop,
    StopReason,
    VmxProcessor,
)

RIP, RSP, RFLAGS = 0x10_0000, 0x20_0000, 0x2
ENTRY_FAILURE = int(ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE) | VM_ENTRY_FAILURE


def nothing_unsupported(vmcs: Vmcs) -> list[str]:
    return []


def make(
    handler: ExitHandlerIntelX64 | None = None,
    unsupported=nothing_unsupported,  # type: ignore[no-untyped-def]
    trace: bool = True,
) -> tuple[VmxProcessor, ExitHandlerIntelX64]:
    handler = handler or ExitHandlerIntelX64()
    vmcs = handler.m_vmcs
    default_controls(vmcs, handler.m_cpu)
    long_mode_guest_state(vmcs, cr3=0x1000, rip=RIP, rsp=RSP, gdt_base=0x5000, gdt_limit=0x1F)
    handler.m_state_save.rip, handler.m_state_save.rsp = RIP, RSP
    return VmxProcessor(handler, unsupported, engine="test engine", trace=trace), handler


def regs(**values: int) -> tuple[int, ...]:
    order = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             *(f"r{n:02d}" for n in range(8, 16)))  # fmt: skip
    defaults = {"rsp": RSP}
    return (*(values.get(name, defaults.get(name, 0)) for name in order), 0, 0)


def record(reason: int, *, length: int = 0, rip: int = RIP, **values: int) -> ExitRecord:
    return ExitRecord(ExitInformation(reason, 0, length), regs(**values), rip, RFLAGS)


def launched(
    handler: ExitHandlerIntelX64 | None = None,
) -> tuple[VmxProcessor, ExitHandlerIntelX64]:
    processor, handler = make(handler)
    plan = processor.launch()
    assert isinstance(plan, EntryPlan), plan
    return processor, handler


def test_launch_plans_the_whole_guest_state_and_the_controls() -> None:
    processor, handler = make()
    plan = processor.launch()
    assert isinstance(plan, EntryPlan)
    assert plan.launch and plan.policy is not None and not plan.simple
    assert f.GUEST_CR3 in plan.changed and f.GUEST_CS_ACCESS_RIGHTS in plan.changed
    assert plan.fields is not None and plan.fields[f.GUEST_CR3] == 0x1000
    assert (plan.rip, plan.regs[4]) == (RIP, RSP)
    assert not handler.m_vmcs.dirty


def test_launch_refused_by_vmlaunch_checks() -> None:
    processor, handler = make()
    handler.m_vmcs.write(f.PIN_BASED_VM_EXECUTION_CONTROLS, 0)  # default1 bits missing
    stop = processor.launch()
    assert isinstance(stop, Stop) and stop.reason is StopReason.ERROR
    assert "VM-instruction error 7" in stop.message
    assert handler.m_vmcs.read(f.VM_INSTRUCTION_ERROR) == 7


def test_an_exit_is_stored_dispatched_and_resumed() -> None:
    processor, handler = launched()
    plan = processor.exit(record(ExitReason.CPUID, length=2, rax=0, rcx=0))
    assert isinstance(plan, EntryPlan) and plan.simple
    vendor = handler.m_cpu.cpuid(0, 0)
    assert (plan.regs[0], plan.regs[3], plan.regs[1], plan.regs[2]) == vendor  # eax ebx ecx edx
    assert plan.rip == RIP + 2
    vmcs = handler.m_vmcs
    assert vmcs.read(f.VM_EXIT_REASON) == ExitReason.CPUID
    assert vmcs.read(f.VM_EXIT_INSTRUCTION_LENGTH) == 2
    assert (vmcs.read(f.GUEST_RIP), vmcs.read(f.GUEST_RSP)) == (RIP, RSP)
    assert processor.exits == 1 and processor.trace == [(ExitReason.CPUID, RIP)]


def test_fields_an_exit_does_not_define_read_zero() -> None:
    processor, handler = launched()
    info = ExitInformation(ExitReason.RDMSR, 0x55, 2, 0x77, 0x1234)
    processor.exit(ExitRecord(info, regs(rcx=0x10), RIP, RFLAGS))
    processor.exit(record(ExitReason.CPUID, length=2))
    vmcs = handler.m_vmcs
    assert vmcs.read(f.EXIT_QUALIFICATION) == 0
    assert vmcs.read(f.VM_EXIT_INSTRUCTION_INFORMATION) == 0
    assert vmcs.read(f.GUEST_LINEAR_ADDRESS) == 0


def test_moved_guest_state_reaches_the_vmcs() -> None:
    processor, handler = launched()
    moved = {f.GUEST_CR3: 0x9000, f.GUEST_FS_BASE: 0xABC}
    processor.exit(ExitRecord(ExitInformation(ExitReason.CPUID, 0, 2), regs(), RIP, 0x46, moved))
    vmcs = handler.m_vmcs
    assert (vmcs.read(f.GUEST_CR3), vmcs.read(f.GUEST_FS_BASE)) == (0x9000, 0xABC)
    assert vmcs.read(f.GUEST_RFLAGS) == 0x46


class Halting(ExitHandlerIntelX64):
    def handle_hlt(self) -> None:
        self.halt()


@pytest.mark.parametrize(
    ("handler", "reason", "expected", "words"),
    [
        (ExitHandlerIntelX64(), ExitReason.HLT, StopReason.HALTED, "hlt"),  # unimplemented
        (Halting(), ExitReason.HLT, StopReason.HALTED, "hlt"),
        (ExitHandlerIntelX64(), ExitReason.VMXOFF, StopReason.PROMOTED, "vmxoff"),
        (ExitHandlerIntelX64(), ExitReason.TRIPLE_FAULT, StopReason.SHUTDOWN, "triple fault"),
    ],
)
def test_verdicts(
    handler: ExitHandlerIntelX64, reason: int, expected: StopReason, words: str
) -> None:
    processor, _ = launched(handler)
    stop = processor.exit(record(reason, length=3))
    assert isinstance(stop, Stop) and stop.reason is expected
    assert words in stop.message.lower()


class ChangesGuestState(ExitHandlerIntelX64):
    def handle_cpuid(self) -> None:
        self.m_vmcs.write(f.GUEST_RFLAGS, 0x202)
        self.m_vmcs.write(f.GUEST_FS_BASE, 0x7000)
        self.advance_rip()


def test_changed_guest_state_is_planned_for_loading() -> None:
    processor, handler = launched(ChangesGuestState())
    plan = processor.exit(record(ExitReason.CPUID, length=2))
    assert isinstance(plan, EntryPlan) and not plan.simple
    assert plan.changed == {f.GUEST_RFLAGS, f.GUEST_FS_BASE}
    assert plan.fields is not None and plan.fields[f.GUEST_FS_BASE] == 0x7000
    assert not handler.m_vmcs.dirty


class TurnsOnHltExiting(ExitHandlerIntelX64):
    def handle_cpuid(self) -> None:
        primary = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        self.m_vmcs.write(primary, self.m_vmcs.read(primary) | Proc.HLT_EXITING)
        self.advance_rip()


def test_new_controls_are_summarised_for_the_engine() -> None:
    processor, _ = launched(TurnsOnHltExiting())
    plan = processor.exit(record(ExitReason.CPUID, length=2))
    assert isinstance(plan, EntryPlan) and plan.policy is not None and plan.policy.hlt


def test_a_control_the_engine_cannot_honour_stops_the_vcpu() -> None:
    def no_hlt_exiting(vmcs: Vmcs) -> list[str]:
        primary = vmcs.read(f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS)
        return ["HLT_EXITING"] if primary & Proc.HLT_EXITING else []

    processor, _ = make(TurnsOnHltExiting(), unsupported=no_hlt_exiting)
    assert isinstance(processor.launch(), EntryPlan)
    stop = processor.exit(record(ExitReason.CPUID, length=2))
    assert isinstance(stop, Stop) and stop.reason is StopReason.ERROR
    assert "HLT_EXITING" in stop.message and "test engine" in stop.message


class InjectsGp(ExitHandlerIntelX64):
    def handle_cpuid(self) -> None:
        self.inject_exception(13, 0x18)


def test_an_injected_event_is_taken_and_its_valid_bit_cleared() -> None:
    processor, handler = launched(InjectsGp())
    plan = processor.exit(record(ExitReason.CPUID, length=2))
    assert isinstance(plan, EntryPlan) and plan.event is not None
    event = plan.event
    assert (event.vector, event.type, event.error_code) == (
        13,
        InterruptionType.HARDWARE_EXCEPTION,
        0x18,
    )
    assert event.return_rip == RIP  # a fault: at the instruction
    assert not handler.m_vmcs.read(f.VM_ENTRY_INTERRUPTION_INFORMATION_FIELD) >> 31


class BreaksCr0(ExitHandlerIntelX64):
    """Breaks CR0 at CPUID; fixes it at the entry failure if ``fixes``."""

    fixes = False

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    def handle_cpuid(self) -> None:
        self.m_vmcs.write(f.GUEST_CR0, self.m_vmcs.read(f.GUEST_CR0) & ~1)  # PG without PE
        self.advance_rip()

    def handle_exit(self, reason: int) -> None:
        if reason == ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE:
            self.failures += 1
            if self.fixes:
                self.m_vmcs.write(f.GUEST_CR0, self.m_vmcs.read(f.GUEST_CR0) | 1)
            return
        super().handle_exit(reason)


def test_an_entry_failure_is_an_exit_and_the_fix_is_loaded() -> None:
    handler = BreaksCr0()
    handler.fixes = True
    processor, _ = launched(handler)
    plan = processor.exit(record(ExitReason.CPUID, length=2))
    assert handler.failures == 1
    assert handler.m_vmcs.read(f.VM_EXIT_REASON) == ENTRY_FAILURE
    assert isinstance(plan, EntryPlan)
    assert f.GUEST_CR3 in plan.changed  # nothing was loaded: everything is, now
    assert "VM entry failed" in handler.m_debug_ring.read()
    assert processor.exits == 2


def test_the_seed_halts_at_an_entry_failure_with_the_findings() -> None:
    processor, handler = launched(BreaksCr0.__mro__[1]())  # the seed's own handling
    handler.m_vmcs.write(f.GUEST_CR0, handler.m_vmcs.read(f.GUEST_CR0) & ~1)
    stop = processor.exit(record(ExitReason.WRMSR, length=2, rcx=0x10))  # any exit
    assert isinstance(stop, Stop) and stop.reason is StopReason.HALTED
    assert "guest.cr0.pg_requires_pe" in handler.m_debug_ring.read()


def test_a_handler_that_keeps_failing_is_given_up_on() -> None:
    handler = BreaksCr0()
    processor, _ = launched(handler)
    stop = processor.exit(record(ExitReason.CPUID, length=2))
    assert isinstance(stop, Stop) and stop.reason is StopReason.ERROR
    assert "kept failing" in stop.message
    assert handler.failures == MAX_ENTRY_FAILURES


def test_entries_the_engine_refused_count_until_the_guest_runs() -> None:
    class Stubborn(ExitHandlerIntelX64):
        def handle_exit(self, reason: int) -> None:
            if reason != ExitReason.VM_ENTRY_FAILURE_INVALID_GUEST_STATE:
                super().handle_exit(reason)

    processor, handler = launched(Stubborn())
    refused = ExitRecord(ExitInformation(ENTRY_FAILURE), regs(), RIP, RFLAGS, None, "EINVAL")
    for _ in range(MAX_ENTRY_FAILURES - 1):
        assert isinstance(processor.exit(refused), EntryPlan)
    assert isinstance(processor.exit(record(ExitReason.CPUID, length=2)), EntryPlan)  # ran
    for _ in range(MAX_ENTRY_FAILURES):
        assert isinstance(processor.exit(refused), EntryPlan)
    stop = processor.exit(refused)
    assert isinstance(stop, Stop) and "kept failing: EINVAL" in stop.message
    assert "VM entry failed: EINVAL" in handler.m_debug_ring.read()


def test_a_stop_between_exits_stores_the_state_then() -> None:
    processor, handler = launched()
    state = ExitRecord(ExitInformation(-1), regs(rbx=7), 0x10_0042, 0x46, {f.GUEST_CR3: 0x2000})
    stop = processor.stopped(Stop(StopReason.TIMEOUT, "timed out", state))
    assert stop.reason is StopReason.TIMEOUT
    assert (handler.m_state_save.rbx, handler.m_state_save.rip) == (7, 0x10_0042)
    assert handler.m_vmcs.read(f.GUEST_CR3) == 0x2000
    assert handler.m_vmcs.read(f.GUEST_RIP) == 0x10_0042
    assert "vcpu stopped (timeout)" in handler.m_debug_ring.read()
