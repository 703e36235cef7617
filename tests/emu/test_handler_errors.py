"""A handler that raises stops its vCPU with a stop reason and message that say so, and
the VM, its other vCPUs and the caller go on (every backend)."""

from __future__ import annotations

import pytest
from emu_helpers import run

from faulty_handlers import Unprintable, raising
from pyflank.backends.base import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64

# vCPU 0 reads an MSR (an exit on every backend); vCPU 1 halts after a loop of its own.
PROGRAM = """
    test rdi, rdi
    jnz other
    mov ecx, 0x10
    rdmsr
    mov r12, 1
    hlt
other:
    mov r13, 7
    hlt
"""


@pytest.mark.parametrize(
    ("exc", "text"),
    [
        (RuntimeError("bug in extension"), "RuntimeError: bug in extension"),
        (KeyboardInterrupt(), "KeyboardInterrupt"),  # Vm.run raised AssertionError before
        (SystemExit(2), "SystemExit: 2"),
        (Unprintable(), "Unprintable: <__str__ raised>"),
    ],
)
def test_handler_exception_is_the_stop_reason(exc: BaseException, text: str) -> None:
    _, results = run(PROGRAM, raising(exc, "handle_rdmsr"), vcpus=2)
    first, second = results
    assert first.reason is StopReason.HANDLER_ERROR, first.message
    assert text in first.message
    assert "in fail (faulty_handlers.py:" in first.message  # the frame that raised
    assert "on exit 31 (rdmsr)" in first.message
    assert first.state.r12 == 0  # the guest never went past the RDMSR
    assert text in first.debug_ring
    assert second.reason is StopReason.GUEST_HLT, second.message  # the other vCPU went on
    assert second.state.r13 == 7


def test_a_halting_handler_is_not_an_error() -> None:
    class Halts(ExitHandlerIntelX64):
        def handle_rdmsr(self) -> None:
            self.halt()

    _, [result, _] = run(PROGRAM, Halts, vcpus=2)
    assert result.reason is StopReason.HALTED
