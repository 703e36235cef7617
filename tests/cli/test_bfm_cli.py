"""bfm's command line as a user meets it (issue 12 item 6): --version, per-command help,
-v/-q, ``bfm run PROGRAM`` with a live console and an exit summary, and what
``--backend auto`` chooses and why."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bfm_helpers import Bfm

import pyflank
from elf_image import elf_image
from pyflank.backends.kvm.platform import measured_capabilities
from pyflank.backends.kvm.probe import KvmCapabilities
from pyflank.cli.backend_choice import decide
from pyflank.platform.assemble import assemble

HELLO = """
.include "pyflank.inc"
    mov dx, 0x3f8
    lea rsi, [rip + message]
next:
    mov al, byte ptr [rsi]
    test al, al
    jz done
    out dx, al
    inc rsi
    jmp next
done:
    hlt
message:
    .asciz "hello from vcpu\\n"
"""
EXTENSION = """
from pyflank.exit_handler import ExitHandlerIntelX64

class Broken(ExitHandlerIntelX64):
    def handle_rdmsr(self) -> None:
        raise ValueError("no MSRs today")
"""


@pytest.fixture
def bfm(tmp_path: Path) -> Bfm:
    return Bfm(tmp_path / "run")


def test_version(bfm: Bfm) -> None:
    result = bfm("--version")
    assert (result.code, result.out) == (0, f"bfm (pyflank) {pyflank.__version__}")


@pytest.mark.parametrize(
    ("command", "shows"),
    [
        ("start", ["usage: bfm start", "--backend {emu,kvm,auto}", "--vcpus N", "--memory SIZE"]),
        ("vmcall", ["usage: bfm vmcall", "--cpuid N", "vmcall commands:", "string json <json>"]),
        ("run", ["usage: bfm run", "program", "--timeout SECONDS", "--extension EXT"]),
        ("dump", ["usage: bfm dump", "--vcpuid N"]),
        ("status", ["usage: bfm status", "-v, --verbose"]),
    ],
)
def test_each_command_has_its_own_help(bfm: Bfm, command: str, shows: list[str]) -> None:
    for flag in ("--help", "-h"):
        result = bfm(command, flag)
        assert result.code == 0, result
        for text in shows:
            assert text in result.out, (text, result.out)
        assert "Usage: bfm [OPTION]... load <extension>" not in result.out  # not the global page


def test_quiet_prints_only_errors_and_verbose_says_more(bfm: Bfm, tmp_path: Path) -> None:
    handler = "pyflank.exit_handler.exit_handler_intel_x64:ExitHandlerIntelX64"
    assert bfm("-q", "load", handler).out == ""
    assert bfm("status", "-q").out == ""
    assert "-v and -q together" in bfm.fails("status", "-v", "-q")
    assert bfm("-q", "load", str(tmp_path / "missing.py")).err.startswith("bfm: no such")
    try:
        assert bfm("start", "--backend", "emu", "--vcpus", "2").code == 0
        assert bfm("status").out == "VMM_RUNNING"
        assert bfm("status", "-v").out == "VMM_RUNNING\nvcpu 0: running\nvcpu 1: running"
    finally:
        bfm("stop")


def _program(tmp_path: Path, name: str, data: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def test_run_an_assembly_program(bfm: Bfm, tmp_path: Path) -> None:
    # vCPU 1 halts at once (RDI = vCPU id): two vCPUs printing at once would interleave.
    program = _program(
        tmp_path,
        "hello.s",
        HELLO.replace("    mov dx", "    test rdi, rdi\n    jnz done\n    mov dx", 1),
    )
    result = bfm("run", str(program), "--backend", "emu", "--vcpus", "2", "--memory", "64M")
    assert result.code == 0, result
    assert result.out == "hello from vcpu"  # the console, and nothing else
    summary = result.err.splitlines()
    assert summary[0].startswith(f"bfm run: {program} (asm) on emu, 2 vCPUs, 64 MiB: ran ")
    assert summary[1].startswith("vcpu 0: guest hlt: ") and "(0 exits, rip 0x" in summary[1]
    assert summary[2].startswith("vcpu 1: guest hlt")


def test_run_an_elf_and_a_flat_program(bfm: Bfm, tmp_path: Path) -> None:
    code = assemble(HELLO, 0x100000)
    image = elf_image([(0x100000, 0x100000, code, len(code), 5)], 0x100000)
    elf = _program(tmp_path, "hello", image)
    flat = _program(tmp_path, "hello.bin", code)
    for program, kind in ((elf, "elf"), (flat, "flat")):
        result = bfm("run", str(program), "--backend", "emu")
        assert result.code == 0, result
        assert result.out == "hello from vcpu"
        assert f"({kind}) on emu" in result.err


def test_run_reports_a_handler_error_and_fails(bfm: Bfm, tmp_path: Path) -> None:
    program = _program(tmp_path, "msr.s", "mov ecx, 0x10\n rdmsr\n hlt\n")
    extension = _program(tmp_path, "broken.py", EXTENSION)
    result = bfm("run", str(program), "--backend", "emu", "--extension", str(extension), "-v")
    assert result.code == 1
    assert "vcpu 0: handler error: the exit handler raised ValueError: no MSRs today in " \
           "handle_rdmsr (broken.py:6) on exit 31 (rdmsr)" in result.err  # fmt: skip
    assert "vcpu 0 debug ring:" in result.err and "Traceback" in result.err


def test_run_stops_at_its_timeout(bfm: Bfm, tmp_path: Path) -> None:
    program = _program(tmp_path, "spin.s", "spin:\n jmp spin\n")
    result = bfm("run", str(program), "--backend", "emu", "--timeout", "0.5")
    assert result.code == 1
    assert "vcpu 0: timeout" in result.err


def test_a_quiet_run_that_fails_still_says_why_in_one_line(bfm: Bfm, tmp_path: Path) -> None:
    program = _program(tmp_path, "fault.s", "ud2\n")
    result = bfm("run", "-q", str(program), "--backend", "emu", "--timeout", "5")
    assert result.code == 1 and result.out == ""
    assert result.err.startswith("bfm run: vcpu 0: ") and len(result.err.splitlines()) == 1, result


def test_the_console_is_live_and_ctrl_c_ends_the_run(bfm: Bfm, tmp_path: Path) -> None:
    program = _program(tmp_path, "talk.s", HELLO.replace("    hlt\n", "spin:\n    jmp spin\n"))
    child = subprocess.Popen(
        [sys.executable, "-m", "pyflank.cli.bfm", "run", str(program), "--backend", "emu"],
        env=bfm.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert child.stdout is not None
    assert child.stdout.readline() == "hello from vcpu\n"  # while the guest still runs
    assert child.poll() is None
    time.sleep(0.2)
    child.send_signal(signal.SIGINT)
    _, err = child.communicate(timeout=30)
    assert child.returncode == 130, err
    assert "interrupted after" in err and "vcpu 0: stopped" in err


def _caps(**facts: object) -> KvmCapabilities:
    defaults: dict[str, object] = {"usable": True, "module": "kvm_intel", "cpl0_emulated": False}
    return KvmCapabilities(**{**defaults, **facts})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("caps", "name", "why"),
    [
        (_caps(), "kvm", "kvm: KVM (/dev/kvm, module kvm_intel) runs ring-0 guest code natively"),
        (
            _caps(module="kvm_pvm", host_is_guest=True, cpl0_emulated=True),
            "emu",
            "chose emu (the software CPU): on this host's KVM (/dev/kvm, module kvm_pvm, nested), "
            "ring-0 guest code runs in KVM's instruction emulator, not natively",
        ),
        (_caps(usable=False, reason="/dev/kvm does not exist"), "emu", "/dev/kvm does not exist"),
        (_caps(cpl0_emulated=None), "emu", "was not measured"),
    ],
)
def test_auto_chooses_kvm_only_where_the_guest_runs_natively(
    caps: KvmCapabilities, name: str, why: str
) -> None:
    choice = decide(caps)
    assert choice.name == name
    assert why in choice.why and choice.why.startswith("backend auto: chose")


def test_auto_says_which_it_chose_and_why(bfm: Bfm, tmp_path: Path) -> None:
    expected = decide(measured_capabilities())
    try:
        started = bfm("start")  # --backend auto is the default
        assert started.code == 0, started
        assert expected.why in started.out.splitlines()
        assert f"backend {expected.name}" in started.out
        assert (tmp_path / "run" / "backend-auto.json").exists()  # kept for the next start
    finally:
        bfm("stop")
    result = bfm("run", str(_program(tmp_path, "hello.s", HELLO)))
    assert result.err.splitlines()[0] == expected.why
    assert f"on {expected.name}, 1 vCPU" in result.err
