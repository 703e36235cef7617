"""Debian's kernel, booted to its shell, saved at the prompt and restored into a new Vm: both
run the same command to the same exits and the same console, down to the power-off.

Input reaches both at the same point of the guest: each Vm pauses when the shell's prompt
is out (from its console, so at the next start of guest code, the same place in every
run), and the command is typed while it stands still.
"""

from __future__ import annotations

import threading
from pathlib import Path

from pyflank.platform.linux.assets import LinuxAssets
from pyflank.processor import StopReason
from pyflank.vmm import VcpuResult, Vm

PROMPT = b"# \x1b[6n"  # ash's prompt, then its question for the cursor position
# An external command: the new process's C library asks CPUID, so the run after the
# snapshot has exits of its own.
COMMAND = b"/bin/busybox echo $((6*7))\n"


class PausingConsole:
    """COM1's output; the Vm pauses at each prompt."""

    def __init__(self) -> None:
        self.output = bytearray()
        self.prompt = threading.Event()
        self.vm: Vm | None = None

    def __call__(self, byte: int) -> None:
        self.output.append(byte)
        if self.output.endswith(PROMPT):
            assert self.vm is not None
            self.vm.request_pause()
            self.prompt.set()


def type_at_prompts(
    vm: Vm, console: PausingConsole, lines: list[bytes], snapshot: Path | None = None
) -> tuple[VcpuResult, int]:
    """Run ``vm``, typing ``lines`` at its prompts (saving it to ``snapshot`` at the first);
    its result, and the exits its handler had seen at the first prompt."""
    results: list[list[VcpuResult]] = []
    thread = threading.Thread(target=lambda: results.append(vm.run(timeout=180)))
    thread.start()
    at = -1
    for index, line in enumerate(lines):
        assert console.prompt.wait(180), console.output[-2000:].decode(errors="replace")
        console.prompt.clear()
        vm.pause()
        if index == 0:
            processor = vm.vcpus[0].processor
            assert processor is not None
            at = processor.exits
            if snapshot is not None:
                vm.snapshot(snapshot)
        vm.serial.feed(line)
        vm.resume()
    thread.join(180)
    assert not thread.is_alive()
    return results[0][0], at


def test_a_linux_guest_saved_at_its_prompt_goes_on_in_a_new_vm(
    linux_assets: LinuxAssets, tmp_path: Path
) -> None:
    snapshot = tmp_path / "shell.pfs"
    console = PausingConsole()
    vm = Vm.boot_linux(
        linux_assets.kernel.bzimage, initrd=linux_assets.initramfs, console=console, trace=True
    )
    console.vm = vm
    original, at = type_at_prompts(vm, console, [COMMAND, b"exit\n"], snapshot)
    assert original.reason is StopReason.POWER_OFF, original.message
    assert b"\r\n42\r\n" in console.output

    again_console = PausingConsole()
    again = Vm.restore(snapshot, console=again_console, trace=True)
    again_console.vm = again
    again.serial.feed(COMMAND)  # where the original got it: it was saved at the prompt
    restored, _ = type_at_prompts(again, again_console, [b"exit\n"])
    assert restored.reason is StopReason.POWER_OFF, restored.message
    assert original.trace is not None and restored.trace is not None
    assert len(restored.trace) > 0  # the command's own exits
    assert restored.trace == original.trace[at:]
    assert restored.exits == original.exits
    assert again.serial_output == vm.serial_output  # the console, from the boot on
    assert restored.state.as_dict() == original.state.as_dict()
