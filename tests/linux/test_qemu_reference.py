"""The kernel, initramfs and command line checked independently of pyflank: QEMU TCG
boots them to the marker, its shell answers, and the power-off program ends QEMU."""

from __future__ import annotations

import contextlib
import queue
import shutil
import subprocess
import threading
import time

import pytest

from pyflank.platform.linux.assets import LinuxAssets
from pyflank.platform.linux.cmdline import compose
from pyflank.platform.linux.initramfs import MARKER

QEMU = shutil.which("qemu-system-x86_64")


class Console:
    """QEMU's serial console on pipes: what it printed so far, and typing into it."""

    def __init__(self, command: list[str]) -> None:
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        self.text = ""
        self._chunks: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        while chunk := self.process.stdout.read1(4096):
            self._chunks.put(chunk)

    def wait_for(self, text: str, after: int = 0, timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while (found := self.text.find(text, after)) < 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} on the console:\n{self.text[-600:]}")
            with contextlib.suppress(queue.Empty):
                self.text += self._chunks.get(timeout=0.1).decode(errors="replace")
        return found + len(text)

    def type(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")
        self.process.stdin.flush()


@pytest.mark.skipif(QEMU is None, reason="no qemu-system-x86_64 (apt-get install qemu-system-x86)")
def test_qemu_boots_to_the_marker_and_a_shell_then_powers_off(linux_assets: LinuxAssets) -> None:
    assert QEMU is not None
    console = Console([
        QEMU, "-M", "pc", "-accel", "tcg", "-m", "256", "-display", "none", "-nodefaults",
        "-serial", "stdio", "-monitor", "none", "-no-reboot",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=1",
        "-kernel", str(linux_assets.kernel.bzimage), "-initrd", str(linux_assets.initramfs),
        "-append", compose("console=ttyS0 quiet"),  # no kernel lines inside the marker's
    ])  # fmt: skip
    try:
        marker = console.wait_for(f"{MARKER} uptime ")
        console.wait_for(f" s, kernel {linux_assets.kernel.release}, memory ", marker)
        prompt = console.wait_for("/ # ", marker)
        console.type("echo $((6*7))")
        console.wait_for("\n42", prompt)
        console.type("exit")
        console.wait_for(f"{MARKER} powering off", prompt)
        assert console.process.wait(timeout=30) == 1  # isa-debug-exit: (0 << 1) | 1
    finally:
        console.process.kill()
        console.process.wait()
