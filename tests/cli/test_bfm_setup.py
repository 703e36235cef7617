"""Under bfm an extension chooses its exits too (issue 12 item 2): the controls its
``setup(vmcs)`` writes are in force when the guest runs, and a control the backend cannot
honour stops ``bfm start`` with one line naming the control and the backend."""

from __future__ import annotations

from pathlib import Path

import pytest
from bfm_helpers import Bfm

CHOOSER = """
from typing import Any

from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc

PRIMARY = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS


class Chooser(ExitHandlerIntelX64):
    def setup(self, vmcs) -> None:
        vmcs.write(PRIMARY, vmcs.read(PRIMARY) | Proc.{control})

    def handle_vmcall_data_string_json(self, ijson: Any) -> Any:
        return {{"{control}": bool(self.m_vmcs.read(PRIMARY) & Proc.{control})}}
"""


@pytest.fixture
def bfm(tmp_path: Path) -> Bfm:
    runtime = Bfm(tmp_path / "run")
    yield runtime
    runtime("stop")


def _extension(tmp_path: Path, control: str) -> Path:
    path = tmp_path / "chooser.py"
    path.write_text(CHOOSER.format(control=control))
    return path


def test_controls_written_in_setup_are_in_force_under_bfm(
    bfm: Bfm, tmp_path: Path, backend: str
) -> None:
    assert bfm("load", str(_extension(tmp_path, "HLT_EXITING"))).code == 0
    started = bfm("start", "--backend", backend)
    assert started.code == 0, started
    reply = bfm("vmcall", "string", "json", "{}")
    assert reply.code == 0, reply
    assert '"HLT_EXITING": true' in reply.out


def test_a_control_the_backend_cannot_honour_stops_the_start(bfm: Bfm, tmp_path: Path) -> None:
    assert bfm("load", str(_extension(tmp_path, "USE_TPR_SHADOW"))).code == 0
    reason = bfm.fails("start", "--backend", "emu")
    assert "USE_TPR_SHADOW" in reason and "emu" in reason
