"""The API reference builds (``make docs``), and every public member it documents for the
handler, Vm, Vcpu, the results and the harness has a docstring."""

from __future__ import annotations

import inspect
import shutil
import subprocess
from pathlib import Path

import pytest

from pyflank import debugger, observe, snapshot, testing, vmm
from pyflank.debug import parking
from pyflank.exit_handler import debug_ring, exit_handler_intel_x64, state_save
from pyflank.gdbstub import server
from pyflank.observe import (
    base,
    breaks,
    input_gate,
    plot,
    record,
    record_format,
    replay,
    replay_run,
    statistics,
    trace,
    tracefile,
)
from pyflank.processor import observer

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTED = (
    exit_handler_intel_x64.ExitHandlerIntelX64,
    exit_handler_intel_x64.VmcallError,
    vmm.Vm,
    vmm.Vcpu,
    vmm.VcpuResult,
    testing.ExitHarness,
    state_save.StateSave,
    debug_ring.DebugRing,
    observe.ExitStatistics,
    observe.ReasonStatistics,
    observe.ExitTrace,
    observe.BreakOnExit,
    observe.BreakHit,
    observe.Trace,
    observe.TracedExit,
    observe.ReplayResult,
    observe.Divergence,
    observe.Observer,
    observer.VcpuObserver,
    observer.VmObserver,
    observer.ObservedVcpu,
    observe.Recorder,
    observe.Replayer,
    observe.ReplayReport,
    server.GdbStub,
    snapshot.SnapshotInfo,
    snapshot.SnapshotFile,
    parking.Parking,
)
OBSERVE_MODULES = (observer, statistics, trace, tracefile, breaks, replay, base, plot, record,
                   record_format, replay_run, input_gate)  # fmt: skip
DEBUG_MODULES = (server, snapshot, parking, debugger)


def _undocumented() -> list[str]:
    missing = [cls.__qualname__ for cls in DOCUMENTED if not cls.__doc__]
    for cls in DOCUMENTED:
        for name, member in vars(cls).items():
            function = member.fget if isinstance(member, property) else member
            if not name.startswith("_") and callable(function) and not function.__doc__:
                missing.append(f"{cls.__qualname__}.{name}")
    for module in (vmm, testing, exit_handler_intel_x64, *OBSERVE_MODULES, *DEBUG_MODULES):
        for name, member in vars(module).items():
            ours = getattr(member, "__module__", "") == module.__name__
            kind = inspect.isfunction(member) or inspect.isclass(member)
            if ours and kind and not name.startswith("_") and not member.__doc__:
                missing.append(f"{module.__name__}.{name}")
    return missing


def test_every_public_member_has_a_docstring() -> None:
    assert _undocumented() == []


@pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")
def test_make_docs_builds_the_reference(tmp_path: Path) -> None:
    done = subprocess.run(
        ["make", "-s", "docs", f"DOCS_OUT={tmp_path}"], cwd=ROOT,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warn" not in done.stderr, done.stderr
    handler = (tmp_path / "pyflank" / "exit_handler.html").read_text()
    assert "complete_vmcall" in handler and "step over the VMCALL" in handler
    assert "load_elf" in (tmp_path / "pyflank" / "vmm.html").read_text()
    assert (tmp_path / "pyflank" / "abi.html").is_file()
    assert (tmp_path / "index.html").is_file()
