"""Debian's kernel booted to its shell, typed at as a person would (whenever the host gets
to it), recorded; the replay boots to the same exits and console with nobody typing, and a
handler that answers CPUID differently is caught at its first different exit."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from counting import CountingExits
from pyflank.observe import Recorder, Replayer, read_recording
from pyflank.platform.linux.assets import LinuxAssets
from pyflank.processor import StopReason
from pyflank.vmm import VcpuResult, Vm

PROMPT = b"# \x1b[6n"


class HidesTheHypervisor(CountingExits):
    """CPUID leaf 1 without its "hypervisor present" bit (examples/cpuid_masking.py)."""

    def handle_cpuid(self) -> None:
        leaf = self.m_state_save.rax & 0xFFFF_FFFF
        super().handle_cpuid()
        if leaf == 1:
            self.m_state_save.rcx &= ~(1 << 31)


def boot(
    assets: LinuxAssets, observer: object, console: object, handler: type = CountingExits
) -> Vm:
    return Vm.boot_linux(
        assets.kernel.bzimage, initrd=assets.initramfs, handler=handler, trace=True,
        console=console, observers=[observer],  # type: ignore[arg-type, list-item]
    )  # fmt: skip


@pytest.fixture(scope="module")
def recorded(linux_assets: LinuxAssets, tmp_path_factory: pytest.TempPathFactory) -> tuple[
    Path, VcpuResult, bytes
]:
    path = tmp_path_factory.mktemp("recordings") / "shell.rec"
    output = bytearray()
    prompt = threading.Event()

    def receive(byte: int) -> None:
        output.append(byte)
        if output.endswith(PROMPT):
            prompt.set()

    vm = boot(linux_assets, Recorder(path), receive)
    results: list[list[VcpuResult]] = []
    thread = threading.Thread(target=lambda: results.append(vm.run(timeout=180)))
    thread.start()
    for line in (b"echo $((6*7))\n", b"exit\n"):
        assert prompt.wait(180), output[-2000:].decode(errors="replace")
        prompt.clear()
        time.sleep(0.05)  # a person types a little later: the guest has run on meanwhile
        vm.serial.feed(line)
    thread.join(180)
    [result] = results[0]
    assert result.reason is StopReason.POWER_OFF, result.message
    assert b"\r\n42\r\n" in output
    return path, result, bytes(output)


def test_a_recorded_linux_run_replays_to_the_same_exits_and_console(
    linux_assets: LinuxAssets, recorded: tuple[Path, VcpuResult, bytes]
) -> None:
    path, original, console = recorded
    output = bytearray()
    replayer = Replayer(path)
    [replayed] = boot(linux_assets, replayer, output.append).run(timeout=180)
    assert replayer.report.matched, replayer.report.describe()
    assert replayed.reason is StopReason.POWER_OFF
    assert replayed.trace == original.trace and replayed.exits == original.exits
    assert bytes(output) == console  # 42 included: the input came from the recording
    assert len(read_recording(path).inputs) >= 2


def test_a_changed_handler_is_reported_at_the_first_divergent_exit(
    linux_assets: LinuxAssets, recorded: tuple[Path, VcpuResult, bytes]
) -> None:
    path, _, _ = recorded
    recording = read_recording(path)
    first_leaf_1 = next(
        e.n for e in recording.exits if any(c[:2] == ["cpuid", "0x1"] for c in e.cpu)
    )
    replayer = Replayer(path)
    [replayed] = boot(linux_assets, replayer, None, HidesTheHypervisor).run(timeout=180)
    divergence = replayer.report.divergence
    assert replayed.reason is StopReason.DIVERGED
    assert divergence is not None, replayer.report.describe()
    assert divergence.exit == first_leaf_1 and divergence.what == "rcx"
    assert replayer.report.exits == first_leaf_1
