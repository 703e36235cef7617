"""``python -m pyflank.debugger``: a guest from a file, under the stub, and the real gdb."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path


def test_the_command_runs_a_program_for_gdb(gdb_binary: str, tmp_path: Path) -> None:
    program = tmp_path / "guest.s"
    program.write_text("mov rax, 5\ncpuid\nhlt\n")
    runner = subprocess.Popen(
        [sys.executable, "-m", "pyflank.debugger", "--port", "0", str(program)],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert runner.stderr is not None
    announced = runner.stderr.readline()
    found = re.search(r"target remote (\S+)'", announced)
    assert found, announced
    gdb = subprocess.run(
        [gdb_binary, "-nx", "-batch", "-ex", f"target remote {found[1]}", "-ex", "stepi",
         "-ex", "p/x $rax", "-ex", "continue"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    _, rest = runner.communicate(timeout=30)
    assert "$1 = 0x5" in gdb.stdout, gdb.stdout + gdb.stderr
    assert "exited normally" in gdb.stdout + gdb.stderr
    assert "vCPU 0: guest hlt" in rest and runner.returncode == 0


def test_the_command_refuses_what_it_cannot_run() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pyflank.debugger", "--port", "0.0.0.0:1234", "x.s"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "loopback" in done.stderr
