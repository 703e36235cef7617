"""``bfm start --backend kvm``: the VMM service on KVM, vmcalls through the guest agent."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from bfm_helpers import Bfm

from kvm_support import kvm_marks

pytestmark = kvm_marks()


@pytest.fixture
def on_kvm(tmp_path: Path) -> Iterator[Bfm]:
    bfm = Bfm(tmp_path / "run")
    result = bfm("start", "--backend", "kvm")
    assert result.code == 0, result
    assert "backend kvm" in result.out
    assert "KVM (/dev/kvm): API" in result.out  # bfm reports the capability probe
    yield bfm
    bfm("stop")


def test_string_round_trip_and_versions(on_kvm: Bfm) -> None:
    assert on_kvm("status").out == "VMM_RUNNING"
    result = on_kvm("vmcall", "string", "unformatted", "hello from bfm on KVM")
    assert result.out == "received from vmm: hello from bfm on KVM", result
    assert on_kvm("vmcall", "versions", "1").out == "VMCALL_VERSION_PYFLANK: 0.1.0"
    assert on_kvm("vmcall", "versions", "0").code == 0
    assert "received in vmm: hello from bfm on KVM" in on_kvm("dump").out
    assert on_kvm("stop").out == "stopped"
    assert on_kvm("status").out == "VMM_LOADED"


def test_clients_on_two_kvm_vcpus(tmp_path: Path) -> None:
    bfm = Bfm(tmp_path / "run")
    try:
        assert bfm("start", "--backend", "kvm", "--vcpus", "2").code == 0
        client = Path(__file__).with_name("bfm_client.py")
        procs = [
            subprocess.Popen(
                [sys.executable, str(client), f"c{i}", "20", "2"],
                env=bfm.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in range(4)
        ]
        outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
        assert outputs == [f"c{i}: 20 ok" for i in range(4)]
    finally:
        bfm("stop")


def test_run_a_program_on_kvm(tmp_path: Path) -> None:
    program = tmp_path / "hello.s"
    program.write_text('.include "pyflank.inc"\n mov dx, 0x3f8\n mov al, 0x4b\n out dx, al\n hlt\n')
    result = Bfm(tmp_path / "run")("run", str(program), "--backend", "kvm")
    assert result.code == 0, result
    assert result.out == "K"
    assert "(asm) on kvm, 1 vCPU" in result.err
    assert "vcpu 0: guest hlt" in result.err


EXITS_IN_CPUID = """
from pyflank.exit_handler import ExitHandlerIntelX64

class ExitsInCpuid(ExitHandlerIntelX64):
    def handle_cpuid(self) -> None:
        raise SystemExit("no CPUID today")  # KVM asks it before the first entry
"""


def test_a_vm_that_cannot_start_is_reported_not_hung(tmp_path: Path) -> None:
    (tmp_path / "cpuid.py").write_text(EXITS_IN_CPUID)
    bfm = Bfm(tmp_path / "run")
    try:
        assert bfm("quick", str(tmp_path / "cpuid.py"), "--backend", "kvm").code == 0
        reason = bfm.fails("vmcall", "versions", "1")
        assert "the VM could not run: SystemExit: no CPUID today" in reason
        status = bfm("status").out.splitlines()
        assert status[0] == "VMM_CORRUPT" and "could not run" in status[1]
    finally:
        bfm("stop")
    program = tmp_path / "hlt.s"
    program.write_text("hlt\n")
    reason = bfm.fails(
        "run", str(program), "--backend", "kvm", "--extension", str(tmp_path / "cpuid.py")
    )
    assert "the VM could not run: SystemExit: no CPUID today" in reason
