"""``bfm run --kernel`` (issue 16 item 5): Debian's kernel boots in the real bfm process,
its console on stdout, stdin typed into its shell (from a pipe and from a terminal), and
the exit summary on stderr; what cannot be booted is refused in one line."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
from bfm_helpers import Bfm

from pyflank.platform.linux.assets import LinuxAssets
from pyflank.platform.linux.initramfs import MARKER, POWEROFF_FLAG

PROMPT = b"# "


@pytest.fixture
def bfm(tmp_path: Path) -> Bfm:
    return Bfm(tmp_path / "run")


def _kernel_args(assets: LinuxAssets, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "pyflank.cli.bfm", "run", "--backend", "emu",
        "--kernel", str(assets.kernel.bzimage), "--initrd", str(assets.initramfs), *extra,
    ]  # fmt: skip


def _read_until(fd: int, wanted: bytes, seen: bytearray, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while wanted not in seen:
        assert time.monotonic() < deadline, seen[-2000:].decode(errors="replace")
        chunk = os.read(fd, 4096)
        assert chunk, seen[-2000:].decode(errors="replace")
        seen += chunk


def test_the_kernel_boots_to_the_marker_and_powers_off(bfm: Bfm, linux_assets: LinuxAssets) -> None:
    done = subprocess.run(
        _kernel_args(linux_assets, "--append", f"console=ttyS0 {POWEROFF_FLAG}"),
        env=bfm.env, stdin=subprocess.DEVNULL, capture_output=True, timeout=300,
    )  # fmt: skip
    err = done.stderr.decode()
    assert done.returncode == 0, err
    assert f"{MARKER} uptime".encode() in done.stdout
    assert "vcpu 0: power off" in err
    assert " cpuid " in err and " rdmsr " in err  # the exit summary's rows


def test_typing_on_a_pipe_reaches_the_shell(bfm: Bfm, linux_assets: LinuxAssets) -> None:
    child = subprocess.Popen(
        _kernel_args(linux_assets), env=bfm.env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdin is not None and child.stdout is not None
    seen = bytearray()
    try:
        _read_until(child.stdout.fileno(), PROMPT, seen)
        child.stdin.write(b"echo $((6*7))\n")
        child.stdin.flush()
        _read_until(child.stdout.fileno(), b"\n42\r\n", seen)
        child.stdin.write(b"exit\n")  # the shell ends: /init powers off
        child.stdin.flush()
        _, err = child.communicate(timeout=60)
    finally:
        child.kill()
    assert child.returncode == 0, err.decode()


def test_typing_on_a_terminal_reaches_the_shell(bfm: Bfm, linux_assets: LinuxAssets) -> None:
    controller, terminal = pty.openpty()
    before = termios.tcgetattr(terminal)
    child = subprocess.Popen(
        _kernel_args(linux_assets), env=bfm.env,
        stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert child.stdout is not None
    seen = bytearray()
    try:
        _read_until(child.stdout.fileno(), PROMPT, seen)
        assert not termios.tcgetattr(terminal)[3] & termios.ICANON  # a key at a time
        os.write(controller, b"echo $((6*7))\n")
        _read_until(child.stdout.fileno(), b"\n42\r\n", seen)
        os.write(controller, b"exit\n")
        _, err = child.communicate(timeout=60)
        assert child.returncode == 0, err.decode()
        assert termios.tcgetattr(terminal) == before  # the terminal's mode is put back
    finally:
        child.kill()
        os.close(controller)
        os.close(terminal)


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (["run"], "run takes a program (.s, ELF or flat binary) or --kernel FILE"),
        (["run", "prog.s", "--kernel", "k"], "run takes a program or --kernel, not both"),
        (["run", "prog.s", "--initrd", "i"], "run: --initrd goes with --kernel"),
        (["run", "prog.s", "--append", "quiet"], "run: --append goes with --kernel"),
        (["run", "--kernel", "/nonexistent/bzImage"], "cannot read /nonexistent/bzImage"),
    ],
)
def test_what_cannot_be_booted_is_refused_in_one_line(
    bfm: Bfm, args: list[str], reason: str
) -> None:
    assert reason in bfm.fails(*args)


def test_a_file_that_is_no_kernel_is_refused(bfm: Bfm, tmp_path: Path) -> None:
    not_a_kernel = tmp_path / "notes.txt"
    not_a_kernel.write_text("not a kernel\n" * 100)
    reason = bfm.fails("run", "--backend", "emu", "--kernel", str(not_a_kernel))
    assert str(not_a_kernel) in reason


def test_a_kernel_gets_one_vcpu(bfm: Bfm, linux_assets: LinuxAssets) -> None:
    reason = bfm.fails("run", "--vcpus", "2", "--kernel", str(linux_assets.kernel.bzimage))
    assert "--kernel boots one vCPU" in reason
