"""The stop gate: a stop requested from another thread takes effect at a block start, with
the native hook where the host allows it and with the ctypes fallback elsewhere."""

from __future__ import annotations

import platform
import sys
from collections.abc import Iterator

import pytest

from pyflank.backends.base import StopReason
from pyflank.backends.emu import EmuVcpu, stop_gate
from pyflank.vmm import Vm

LOOP = """
    lea rbx, [rip + counter]
    xor r8, r8
spin:
    inc qword ptr [rbx]
    inc r8
    jmp spin
.balign 4096
counter: .quad 0
"""
SPIN = 0x10000A
COUNTER = 0x101000


@pytest.fixture
def python_hook(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(stop_gate, "native_hook", lambda: None)
    yield


def _stopped() -> tuple[int, int, int]:
    vm = Vm()
    vm.load_asm(LOOP)
    [result] = vm.run(timeout=0.01)
    assert result.reason is StopReason.TIMEOUT
    return result.state.rip, result.state.r08, vm.memory.read_u64(COUNTER)


@pytest.mark.skipif(
    sys.platform == "win32" or platform.machine().lower() not in ("x86_64", "amd64"),
    reason="the native hook is System V x86-64 code",
)
def test_the_native_hook_is_used_on_this_host() -> None:
    vm = Vm()
    assert EmuVcpu(vm.memory, vm.bus).stop_gate.native


def test_the_python_hook_stops_exactly_too(python_hook: None) -> None:
    vm = Vm()
    assert not EmuVcpu(vm.memory, vm.bus).stop_gate.native
    for _ in range(5):
        rip, r8, counter = _stopped()
        assert (rip, counter) == (SPIN, r8)
