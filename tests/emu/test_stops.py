"""How a vCPU ends: handler halt, VMXOFF, triple fault, guest HLT, timeout."""

from __future__ import annotations

import time

import pytest
from emu_helpers import Proc, Recorder, controls, kvm_gap, run1

from pyflank.backends.base import StopReason
from pyflank.backends.emu import stop_gate
from pyflank.intel_x64.exit_reasons import ExitReason


def test_unhandled_hlt_exit_dumps_and_halts() -> None:
    _, result = run1(
        "mov rbx, 0x1234\n hlt\n mov rbx, 0\n hlt", configure=controls(Proc.HLT_EXITING)
    )
    assert result.reason is StopReason.HALTED
    assert result.trace == [(ExitReason.HLT, 0x100007)]
    ring = result.debug_ring
    assert "Unimplemented Exit Handler: \n" in ring
    assert "- exit reason string: hlt\n" in ring
    assert "- instruction length: 0x1\n" in ring
    assert "CPU Halted: \n" in ring
    assert "- m_state_save->rbx: 0x1234\n" in ring
    assert result.state.rip == 0x100007  # at the HLT: the handler never advanced it


def test_hlt_exit_handled_resumes_the_guest() -> None:
    class HltCounter(Recorder):
        def handle_exit(self, reason: int) -> None:
            if reason == ExitReason.HLT:
                self.m_state_save.r10 += 1
                self.advance_rip()
                return
            super().handle_exit(reason)

    _, result = run1(
        "mov rcx, 3\n again:\n hlt\n dec rcx\n jnz again\n vmxoff", HltCounter,
        configure=controls(Proc.HLT_EXITING),
    )  # fmt: skip
    assert result.reason is StopReason.PROMOTED
    assert result.state.r10 == 3


def test_vmxoff_promotes() -> None:
    _, result = run1("mov r8, 1\n vmxoff\n mov r8, 2\n hlt")
    assert result.reason is StopReason.PROMOTED
    assert result.state.r08 == 1
    assert result.state.rip == 0x100007  # at the VMXOFF, where Bareflank 1.1 promoted
    assert result.trace == [(ExitReason.VMXOFF, 0x100007)]


def test_guest_hlt_with_interrupts_enabled_also_stops() -> None:
    _, result = run1("sti\n mov r8, 5\n hlt\n mov r8, 6")
    assert result.reason is StopReason.GUEST_HLT
    assert result.state.r08 == 5
    assert result.exits == 0


def test_triple_fault_dispatches_exit_reason_2_and_shuts_down() -> None:
    kvm_gap("emulator")  # INT3
    handler = Recorder()
    # The boot IDT has limit 0: #BP -> #GP (vector beyond the limit) -> #DF -> triple fault.
    _, result = run1("mov r9, 9\n int3\n mov r9, 0", lambda: handler)
    assert result.reason is StopReason.SHUTDOWN
    assert [r.reason for r in handler.records] == [ExitReason.TRIPLE_FAULT]
    assert "triple_fault" in result.debug_ring
    assert result.state.r09 == 9


def test_triple_fault_from_ud2_with_a_zero_limit_idt() -> None:
    source = """
        lea rax, [rip + idtr]
        lidt [rax]
        ud2
    idtr: .word 0
          .quad 0
    """
    _, result = run1(source)
    assert result.reason is StopReason.SHUTDOWN
    assert result.trace and result.trace[-1][0] == ExitReason.TRIPLE_FAULT


def test_runaway_guest_is_stopped_by_the_timeout() -> None:
    start = time.monotonic()
    _, result = run1("spin:\n inc r8\n jmp spin", timeout=0.3)
    assert result.reason is StopReason.TIMEOUT
    assert time.monotonic() - start < 3
    assert result.state.r08 > 0  # the guest ran, and its final registers were saved


def test_jmp_self_times_out() -> None:
    _, result = run1("here: jmp here", timeout=0.2)
    assert result.reason is StopReason.TIMEOUT
    assert result.state.rip == 0x100000


# A read-modify-write of memory, then of a register: stopped between two instructions,
# the memory counter is the register counter (+1 between the two increments).
_RMW_LOOP = """
    lea rbx, [rip + counter]
    xor r8, r8
spin:
    inc qword ptr [rbx]
    inc r8
    jmp spin
.balign 4096
counter: .quad 0
"""
_SPIN, _AFTER_MEMORY, _JMP = 0x10000A, 0x10000D, 0x100010
_BEFORE_LOOP = (0x100000, 0x100007)  # a timeout before the loop: at the LEA, at the XOR


def _stops_are_exact(attempts: int) -> None:
    for attempt in range(attempts):
        vm, result = run1(_RMW_LOOP, timeout=0.004 + attempt % 5 * 0.003)
        s = result.state
        assert result.reason is StopReason.TIMEOUT
        counter = vm.memory.read_u64(0x101000)
        if s.rip in _BEFORE_LOOP:  # a loaded host: the guest had not started yet
            assert counter == s.r08 == 0, f"stop {attempt}: RIP {s.rip:#x}"
            continue
        assert s.rip in (_SPIN, _AFTER_MEMORY, _JMP), hex(s.rip)
        ahead = 1 if s.rip == _AFTER_MEMORY else 0
        assert counter == s.r08 + ahead, f"stop {attempt}: RIP {s.rip:#x}, {counter} vs {s.r08}"


def test_timeout_stops_are_exact() -> None:
    _stops_are_exact(30)


@pytest.mark.parametrize("backend", ["emu"], indirect=True)
def test_timeout_stops_are_exact_with_the_ctypes_stop_hook(
    backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where no native hook can be built (another host ABI, no executable page), nor the
    # accelerator, which brings a gate hook of its own.
    monkeypatch.setattr(stop_gate, "native_hook", lambda: None)
    monkeypatch.setenv("PYFLANK_NATIVE", "0")
    _stops_are_exact(5)
