"""The stop gate uses its native hook where the host allows it (the ctypes fallback, as
exact, is tested in tests/emu/test_stops.py)."""

from __future__ import annotations

import platform
import sys

import pytest

from pyflank.backends.emu import EmuVcpu, stop_gate
from pyflank.vmm import Vm


@pytest.mark.skipif(
    sys.platform == "win32" or platform.machine().lower() not in ("x86_64", "amd64"),
    reason="the native hook is System V x86-64 code",
)
def test_the_native_hook_is_used_on_this_host() -> None:
    vm = Vm()
    assert stop_gate.native_hook() is not None
    assert EmuVcpu(vm.memory, vm.bus).stop_gate.native


def test_without_the_native_hook_the_gate_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stop_gate, "native_hook", lambda: None)
    monkeypatch.setenv("PYFLANK_NATIVE", "0")  # (the accelerator brings a gate hook of its own)
    vm = Vm()
    assert not EmuVcpu(vm.memory, vm.bus).stop_gate.native
