"""``bfm run PROGRAM --gdb PORT`` (issue 14, item 2): the real bfm process serves the real
gdb, which steps the guest, reads a register the guest set, and lets it run to its end;
what the stub cannot serve is refused in one line."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GUEST = "mov rax, 5\ncpuid\nmov rbx, rax\nhlt\n"


def _bfm(tmp_path: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pyflank.cli.bfm", "run", *args]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "PYFLANK_RUNTIME_DIR": str(tmp_path / "run")}


def test_gdb_steps_a_program_bfm_runs(gdb_binary: str, tmp_path: Path) -> None:
    program = tmp_path / "guest.s"
    program.write_text(GUEST)
    runner = subprocess.Popen(
        _bfm(tmp_path, str(program), "--gdb", "0"),
        env=_env(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert runner.stderr is not None
    announced = runner.stderr.readline()
    while "target remote" not in announced and announced:
        announced = runner.stderr.readline()
    found = re.search(r"target remote (\S+)'", announced)
    assert found, announced
    gdb = subprocess.run(
        [gdb_binary, "-nx", "-batch", "-ex", f"target remote {found[1]}",
         "-ex", "stepi", "-ex", "p/x $rax", "-ex", "continue"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    _, rest = runner.communicate(timeout=30)
    assert "$1 = 0x5" in gdb.stdout, gdb.stdout + gdb.stderr
    assert "exited normally" in gdb.stdout + gdb.stderr
    assert "vcpu 0: guest hlt" in rest and runner.returncode == 0, rest
    assert "the guest waits for gdb" in announced


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        (["--gdb", "1234", "--backend", "kvm"], "--gdb needs the software CPU"),
        (["--gdb-no-wait"], "--gdb-no-wait goes with --gdb"),
        (["--gdb", "0.0.0.0:1234"], "not a loopback address"),
        (["--gdb", "70000"], "out of range"),
    ],
)
def test_what_the_stub_cannot_serve_is_refused(
    tmp_path: Path, options: list[str], reason: str
) -> None:
    program = tmp_path / "guest.s"
    program.write_text(GUEST)
    done = subprocess.run(
        _bfm(tmp_path, str(program), *options),
        env=_env(tmp_path), capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.startswith("bfm: ") and len(done.stderr.splitlines()) == 1, done.stderr
    assert reason in done.stderr
