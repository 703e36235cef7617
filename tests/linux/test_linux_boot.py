"""Debian's kernel boots to the initramfs's /init on the software CPU, under a handler that
counts its exits; the boot is deterministic, and its shell answers on the console."""

from __future__ import annotations

import hashlib
import re
import threading
from dataclasses import dataclass
from typing import Any

import pytest
from linux_runs import boot_to_power_off

from example_modules import example
from native_support import accelerated, pure_python
from pyflank.backends.base import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.platform.linux.assets import LinuxAssets
from pyflank.platform.linux.initramfs import MARKER, POWEROFF_FLAG
from pyflank.vmm import VcpuResult, Vm

MARKER_LINE = re.compile(
    rf"{MARKER} uptime (?P<uptime>[0-9.]+) s, kernel (?P<release>\S+), "
    r"memory (?P<memory>\d+) kB"
)


class CountingExits(ExitHandlerIntelX64):
    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[int, int] = {}

    def handle_exit(self, reason: int) -> None:
        self.counts[reason] = self.counts.get(reason, 0) + 1
        super().handle_exit(reason)


@dataclass
class Boot:
    result: VcpuResult
    console: str
    counts: dict[int, int]
    hooks: Any = None  # the native exits of the boot's engine, if it had them

    @property
    def exit_sequence_hash(self) -> str:
        assert self.result.trace is not None
        return hashlib.sha256(repr(self.result.trace).encode()).hexdigest()


def boot(assets: LinuxAssets, *, decompress_in_guest: bool = False) -> Boot:
    console = bytearray()
    vm = Vm.boot_linux(
        assets.kernel.bzimage,
        initrd=assets.initramfs,
        append=f"console=ttyS0 {POWEROFF_FLAG}",
        handler=CountingExits,
        trace=True,
        console=console.append,
        decompress_in_guest=decompress_in_guest,
    )
    [result] = vm.run(timeout=120)
    handler = vm.vcpus[0].handler
    assert isinstance(handler, CountingExits)
    native = getattr(vm.vcpus[0].engine, "native", None)
    hooks = None if native is None else native.native
    return Boot(result, console.decode(errors="replace"), handler.counts, hooks)


@pytest.fixture(scope="module")
def booted(linux_assets: LinuxAssets) -> Boot:
    return boot(linux_assets)


@pytest.mark.slow
def test_the_bzimages_own_decompressor_boots_it_too(linux_assets: LinuxAssets) -> None:
    through_decompressor = boot(linux_assets, decompress_in_guest=True)
    assert through_decompressor.result.reason is StopReason.POWER_OFF
    assert MARKER_LINE.search(through_decompressor.console) is not None


def test_linux_boots_to_init_and_powers_off(booted: Boot, linux_assets: LinuxAssets) -> None:
    assert booted.result.reason is StopReason.POWER_OFF, booted.result.message
    marker = MARKER_LINE.search(booted.console)
    assert marker is not None, booted.console[-2000:]
    assert marker["release"] == linux_assets.kernel.release
    assert 200_000 < int(marker["memory"]) < 256 * 1024  # of a 256 MiB guest
    assert float(marker["uptime"]) > 0
    assert "Run /init as init process" in booted.console


def test_the_handler_sees_every_exit_the_default_controls_make(booted: Boot) -> None:
    for reason in (ExitReason.CPUID, ExitReason.RDMSR, ExitReason.WRMSR):
        assert booted.counts.get(reason, 0) > 0, reason
    assert booted.result.exits == sum(booted.counts.values())


def test_two_boots_give_the_same_exits(booted: Boot, linux_assets: LinuxAssets) -> None:
    again = boot(linux_assets)
    assert again.result.exits == booted.result.exits
    assert again.exit_sequence_hash == booted.exit_sequence_hash
    assert again.console == booted.console  # the virtual clock prints the same times


@pytest.mark.skipif(not accelerated(), reason="no native accelerator to compare with")
def test_the_pure_python_exit_paths_boot_it_the_same(
    booted: Boot, linux_assets: LinuxAssets
) -> None:
    """The differential test on Linux: the boot's RDTSC(P)s, port I/O and exits taken in C
    leave the same exit sequence and console as the pure-Python hooks."""
    native = booted.hooks
    assert native is not None and native.counts["tsc"] > 10_000 and native.counts["io"] > 10_000
    with pure_python():
        reference = boot(linux_assets)
    assert reference.hooks is None
    assert reference.result.exits == booted.result.exits
    assert reference.exit_sequence_hash == booted.exit_sequence_hash
    assert reference.console == booted.console
    assert reference.result.state.as_dict() == booted.result.state.as_dict()


def test_linux_boots_with_its_io_hlt_and_interrupt_exits_in_the_handler(
    linux_assets: LinuxAssets,
) -> None:
    watching = example("watch_linux").WatchingLinux
    watching.seen.clear()
    _, _, text = boot_to_power_off(linux_assets, watching)
    assert MARKER_LINE.search(text) is not None
    for reason in ("io_instruction", "hlt", "external_interrupt", "interrupt_window", "cpuid"):
        assert watching.seen[reason] > 0, (reason, watching.seen)


def test_the_shell_answers_on_the_console(linux_assets: LinuxAssets) -> None:
    console = bytearray()
    prompt = threading.Event()

    def receive(byte: int) -> None:
        console.append(byte)
        if console.endswith(b"# "):
            prompt.set()

    vm = Vm.boot_linux(linux_assets.kernel.bzimage, initrd=linux_assets.initramfs, console=receive)
    thread = threading.Thread(target=lambda: vm.run(timeout=120), daemon=True)
    thread.start()
    assert prompt.wait(120), console.decode(errors="replace")[-2000:]
    prompt.clear()
    vm.serial.feed(b"echo $((6*7))\n")
    assert prompt.wait(60), console.decode(errors="replace")[-500:]
    assert b"\n42\r\n" in console
    vm.serial.feed(b"exit\n")  # the shell ends: /init powers off
    thread.join(60)
    assert not thread.is_alive()
