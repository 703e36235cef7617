"""dispatch()'s guard: whatever a handler raises, and however broken the report would be,
the vCPU halts with a report and nothing reaches the backend."""

from collections.abc import Callable

import pytest

from faulty_handlers import Unprintable, raising
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.exit_handler.fault import handler_fault
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import VmcsState
from pyflank.testing import HARNESS_RIP, ExitHarness


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (KeyboardInterrupt(), "KeyboardInterrupt"),
        (SystemExit(3), "SystemExit: 3"),
        (GeneratorExit(), "GeneratorExit"),
        (RecursionError("deep"), "RecursionError: deep"),
        (Unprintable(), "Unprintable: <__str__ raised>"),
        (ValueError("x" * 10_000), "ValueError: xxx"),
    ],
)
def test_anything_a_handler_raises_halts_the_vcpu(exc: BaseException, text: str) -> None:
    h = ExitHarness(raising(exc))
    h.exit(ExitReason.CPUID, length=2)  # would propagate on the old guard
    assert h.vmcs.state is VmcsState.HALTED
    assert h.state.rip == HARNESS_RIP  # never advanced, never resumed
    fault = handler_fault(h.handler)
    assert fault is not None and text in fault.exception
    assert len(fault.describe()) < 700  # one bounded line even for a huge message
    assert "\n" not in fault.describe()
    assert text in h.debug_ring


def test_the_report_names_the_exception_and_the_handler_frame() -> None:
    class Broken(ExitHandlerIntelX64):
        def handle_rdmsr(self) -> None:
            self.helper()

        def helper(self) -> None:
            {}["missing"]

    h = ExitHarness(Broken)
    h.exit(ExitReason.RDMSR, length=2, rcx=0x10)
    fault = handler_fault(h.handler)
    assert fault is not None
    line = fault.describe()
    assert "KeyError: 'missing'" in line
    assert "in handle_rdmsr (test_dispatch_guard.py:" in line
    assert "raised at helper (test_dispatch_guard.py:" in line
    assert "on exit 31 (rdmsr)" in line
    assert "Traceback (most recent call last)" in h.debug_ring


def _drop_ring(h: ExitHandlerIntelX64) -> None:
    del h.m_debug_ring


def _none_ring(h: ExitHandlerIntelX64) -> None:
    h.m_debug_ring = None  # type: ignore[assignment]


@pytest.mark.parametrize("break_ring", [_drop_ring, _none_ring])
def test_a_handler_without_its_debug_ring_still_halts(
    break_ring: Callable[[ExitHandlerIntelX64], None],
) -> None:
    class RingGone(ExitHandlerIntelX64):
        def handle_cpuid(self) -> None:
            break_ring(self)
            raise Unprintable

    h = ExitHarness(RingGone)
    h.exit(ExitReason.CPUID, length=2)
    assert h.vmcs.state is VmcsState.HALTED
    fault = handler_fault(h.handler)
    assert fault is not None and "Unprintable" in fault.describe()


def test_a_broken_halt_still_halts() -> None:
    class BadHalt(ExitHandlerIntelX64):
        def handle_cpuid(self) -> None:
            raise ValueError("first")

        def halt(self) -> None:
            raise SystemExit("halt is broken")

    h = ExitHarness(BadHalt)
    h.exit(ExitReason.CPUID, length=2)
    assert h.vmcs.state is VmcsState.HALTED
