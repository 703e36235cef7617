"""RDTSC and RDTSCP: native unless RDTSC exiting; TSC offsetting; RDTSCP needs enabling."""

from __future__ import annotations

from emu_helpers import Proc, Proc2, Recorder, controls, kvm_gap, run1, with_idt

from pyflank.backends.base import StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import Vmcs

FAKE_TSC = 0x1234_5678_9ABC_DEF0


class FixedClock(Recorder):
    def handle_exit(self, reason: int) -> None:
        if reason in (ExitReason.RDTSC, ExitReason.RDTSCP):
            state = self.m_state_save
            state.rax, state.rdx = FAKE_TSC & 0xFFFF_FFFF, FAKE_TSC >> 32
            if reason == ExitReason.RDTSCP:
                state.rcx = 3  # IA32_TSC_AUX
            self.advance_rip()
            return
        super().handle_exit(reason)


READ_TSC = "rdtsc\n shl rdx, 32\n or rax, rdx\n"
HOST_CLOCK = {"differential": False}  # RDTSC without a machine reads the host's TSC


def test_rdtsc_runs_natively_and_advances() -> None:
    _, result = run1(READ_TSC + "mov r8, rax\n" + READ_TSC + "mov r9, rax\n hlt", **HOST_CLOCK)
    assert result.exits == 0
    assert 0 < result.state.r08 < result.state.r09


def test_rdtsc_exiting_gives_the_handlers_value() -> None:
    kvm_gap("rdtsc")
    handler = FixedClock()
    _, result = run1(
        READ_TSC + "mov r8, rax\n hlt", lambda: handler, configure=controls(Proc.RDTSC_EXITING)
    )
    assert result.state.r08 == FAKE_TSC
    [record] = handler.records
    assert (record.reason, record.rip, record.length) == (ExitReason.RDTSC, 0x100000, 2)


def test_unhandled_rdtsc_exit_halts() -> None:
    kvm_gap("rdtsc")
    _, result = run1("rdtsc\n hlt", configure=controls(Proc.RDTSC_EXITING))
    assert result.reason is StopReason.HALTED
    assert "Unimplemented Exit Handler: \n" in result.debug_ring
    assert "- exit reason string: rdtsc\n" in result.debug_ring


def test_tsc_offsetting() -> None:
    kvm_gap("rdtsc")
    offset = 1 << 50

    def offsetting(vmcs: Vmcs) -> None:
        controls(Proc.USE_TSC_OFFSETTING)(vmcs)
        vmcs.write(f.TSC_OFFSET, offset)

    _, result = run1(READ_TSC + "mov r8, rax\n hlt", configure=offsetting, **HOST_CLOCK)
    assert result.state.r08 >= offset


def test_rdtscp_is_invalid_unless_enabled() -> None:
    kvm_gap("rdtscp")
    _, result = run1(with_idt("    rdtscp\n hlt"))
    assert result.state.r12 == 6  # #UD
    _, result = run1(
        "rdtscp\n mov r8, rax\n hlt", configure=controls(secondary=Proc2.ENABLE_RDTSCP),
        **HOST_CLOCK,
    )  # fmt: skip
    assert result.reason is StopReason.GUEST_HLT and result.exits == 0


def test_rdtscp_exits_with_rdtsc_exiting() -> None:
    kvm_gap("rdtsc")
    handler = FixedClock()
    _, result = run1(
        "rdtscp\n mov r8, rax\n mov r9, rdx\n mov r10, rcx\n hlt",
        lambda: handler,
        configure=controls(Proc.RDTSC_EXITING, Proc2.ENABLE_RDTSCP),
    )
    assert [r.reason for r in handler.records] == [ExitReason.RDTSCP]
    assert handler.records[0].length == 3
    s = result.state
    assert (s.r09 << 32 | s.r08, s.r10) == (FAKE_TSC, 3)
