"""Choosing a backend by name, and what a user sees where KVM cannot run (no KVM needed)."""

from __future__ import annotations

import pytest

from pyflank.backends.base import BackendUnavailable
from pyflank.backends.kvm import KvmCapabilities, KvmConfig
from pyflank.backends.kvm import platform as kvm_platform
from pyflank.backends.kvm.platform import KvmBackend
from pyflank.memory import GuestPhysicalMemory
from pyflank.platform.bus import PortBus
from pyflank.vmm import Vm


def test_auto_is_the_software_cpu_and_unknown_names_are_refused() -> None:
    assert Vm(backend="auto").backend.name == "emu"
    with pytest.raises(ValueError, match="choose one of emu, kvm, auto"):
        Vm(backend="hyperv")


def test_an_unusable_kvm_says_why(monkeypatch: pytest.MonkeyPatch) -> None:
    unusable = KvmCapabilities(False, "/dev/kvm does not exist (no KVM module loaded?)")
    monkeypatch.setattr(kvm_platform, "probe_kvm", lambda *a, **k: unusable)
    with pytest.raises(BackendUnavailable, match="cannot run here: /dev/kvm does not exist"):
        Vm(backend="kvm")


def test_a_missing_device_is_backend_unavailable() -> None:
    memory = GuestPhysicalMemory(1 << 20)
    config = KvmConfig(device="/dev/no-such-kvm")
    with pytest.raises(BackendUnavailable, match="/dev/no-such-kvm does not exist"):
        KvmBackend(memory, PortBus(), config)


def test_the_readme_lists_the_gap_table() -> None:
    from readme_blocks import README, block, expected

    current = block(README.read_text(), "kvm-gaps")
    assert current == expected("kvm-gaps"), "run: .venv/bin/python tests/readme_blocks.py"
