"""The software CPU's instruction count: exact through every kind of exit, the same from
the machine-code hook and the Python one, and absent until an observer asks for it."""

from __future__ import annotations

from pathlib import Path

import pytest
from observe_helpers import PortExits, kvm_gap, rounds_vm
from test_trace import expected_counts

from pyflank.backends.emu import icount
from pyflank.intel_x64 import fields as f
from pyflank.observe import ExitTrace, read_trace


class RewritesFlags(PortExits):
    """Writes a guest-state field at each OUT, so the entry cannot resume in place: the
    software CPU then drains the rest of the block and enters again from the run loop."""

    def handle_io_instruction(self) -> None:
        self.m_vmcs.write(f.GUEST_RFLAGS, self.m_vmcs.read(f.GUEST_RFLAGS))
        super().handle_io_instruction()


def counts(backend: str, tmp_path: Path, handler: type[PortExits] = PortExits) -> list[int]:
    path = tmp_path / "run.jsonl"
    vm = rounds_vm(backend, handler, vcpus=2, observers=[ExitTrace(path)])
    vm.run(timeout=10)
    return [e.instructions or 0 for e in read_trace(path).exits if e.vcpu == 1]


def test_a_drained_block_is_not_counted(backend: str, tmp_path: Path) -> None:
    kvm_gap(backend, "instruction_count")
    assert counts(backend, tmp_path, RewritesFlags) == expected_counts(1)


def test_the_python_hook_counts_as_the_machine_code_does(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kvm_gap(backend, "instruction_count")
    native = counts(backend, tmp_path)
    monkeypatch.setattr(icount, "native_increment", lambda: None)
    assert counts(backend, tmp_path) == native == expected_counts(1)


def test_the_machine_code_hook_is_used_where_it_runs(backend: str) -> None:
    kvm_gap(backend, "instruction_count")
    if icount.native_increment() is None:
        pytest.skip("this host runs no x86-64 machine-code hook (not x86-64, or no exec pages)")
    vm = rounds_vm(backend, observers=[ExitTrace(Path("/dev/null"))])
    vm.run(timeout=10)
    engine = vm.vcpus[0].engine
    assert engine.instructions is not None and engine.instructions.native  # type: ignore[union-attr]


def test_nobody_asked_nothing_is_counted(backend: str) -> None:
    kvm_gap(backend, "instruction_count")
    vm = rounds_vm(backend, observers=[ExitTrace(Path("/dev/null"), instructions=False)])
    vm.run(timeout=10)
    assert vm.vcpus[0].engine.instructions is None  # type: ignore[union-attr]
