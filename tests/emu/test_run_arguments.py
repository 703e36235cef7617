"""Vm.run checks its arguments before any vCPU thread starts, and always stops and joins
its vCPU threads before the backend is freed: on a timeout, on an exception and on Ctrl-C
in the caller (every backend).  The crashing cases run in a child process."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest
from emu_helpers import current_backend

from pyflank.backends.base import StopReason
from pyflank.vmm import Vm

LOOP = "spin:\n jmp spin"


def _vm(source: str = "hlt") -> Vm:
    vm = Vm(backend=current_backend())
    vm.load_asm(source)
    return vm


@pytest.mark.parametrize(
    ("timeout", "error"),
    [
        ("5", TypeError),
        (True, TypeError),
        ([1], TypeError),
        (-1, ValueError),
        (math.nan, ValueError),
        (-math.inf, ValueError),
    ],
)
def test_bad_timeouts_are_refused_before_any_thread(timeout: object, error: type) -> None:
    vm = _vm(LOOP)
    before = threading.active_count()
    with pytest.raises(error, match="timeout"):
        vm.run(timeout=timeout)  # type: ignore[arg-type]
    assert threading.active_count() == before
    [result] = vm.run(timeout=0.2)  # the refusal used nothing up: the VM still runs
    assert result.reason is StopReason.TIMEOUT


def test_on_stop_must_be_callable() -> None:
    with pytest.raises(TypeError, match="on_stop must be callable"):
        _vm().run(on_stop=42)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [None, math.inf])
def test_no_time_limit_runs_until_the_vcpu_stops(timeout: float | None) -> None:
    [result] = _vm("mov r12, 5\n hlt").run(timeout=timeout)
    assert result.reason is StopReason.GUEST_HLT
    assert result.state.r12 == 5


def test_on_stop_sees_each_result_as_it_happens() -> None:
    seen = []
    vm = Vm(vcpus=2, backend=current_backend())
    vm.load_asm("test rdi, rdi\n jz done\n spin:\n jmp spin\n done:\n hlt")
    results = vm.run(timeout=0.5, on_stop=seen.append)
    assert sorted(r.vcpuid for r in seen) == [0, 1]
    assert [r.reason for r in results] == [StopReason.GUEST_HLT, StopReason.TIMEOUT]
    assert seen[0].vcpuid == 0  # vCPU 0 halted long before the timeout


def _child(body: str, backend: str) -> subprocess.Popen[str]:
    script = textwrap.dedent(
        f"""
        import math, sys, threading
        from pyflank.vmm import Vm
        vm = Vm(backend={backend!r})
        vm.load_asm("spin: jmp spin")
        """
    ) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def test_an_unlimited_run_of_a_looping_guest_ends_cleanly_on_ctrl_c() -> None:
    child = _child(
        """
        print("running", flush=True)
        try:
            vm.run(timeout=None)
        except KeyboardInterrupt:
            print("interrupted; threads left:", threading.active_count() - 1, flush=True)
        """,
        current_backend(),
    )
    assert child.stdout is not None
    assert child.stdout.readline().strip() == "running"
    time.sleep(0.5)  # the vCPU is in the guest's loop
    child.send_signal(signal.SIGINT)
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0, out  # was a segfault (the engine freed under its vCPU)
    assert "interrupted; threads left: 0" in out


def test_a_refused_timeout_leaves_nothing_running() -> None:
    child = _child(
        """
        try:
            vm.run(timeout="soon")
        except TypeError as exc:
            print("refused:", exc)
        """,
        current_backend(),
    )
    out, _ = child.communicate(timeout=30)
    assert child.returncode == 0, out
    assert "refused: timeout must be a number" in out
