"""Consecutive entry failures stop the vCPU after 64; a guest run in between resets the count."""

from __future__ import annotations

from kvm_guest_helpers import Guest

from kvm_support import kvm_marks
from pyflank.backends.kvm import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f

pytestmark = kvm_marks()


class Stubborn(ExitHandlerIntelX64):
    """Resumes into a failing entry without fixing anything."""

    failures = 0

    def handle_exit(self, reason: int) -> None:
        if reason == 33:
            self.failures += 1
            return
        super().handle_exit(reason)


def test_keeps_failing() -> None:
    def bad(h: ExitHandlerIntelX64) -> None:
        h.m_vmcs.write(f.GUEST_CR0, h.m_vmcs.read(f.GUEST_CR0) & ~1)

    handler = Stubborn()
    guest = Guest("hlt", handler, prepare=bad)
    result = guest.run_to_stop(timeout=5)
    guest.close()
    assert result.reason is StopReason.ERROR, result.message
    assert "kept failing" in result.message
    assert handler.failures == 64
