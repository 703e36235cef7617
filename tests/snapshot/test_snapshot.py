"""A running VM saved to a file and restored into a new Vm goes on exactly as the original:
the same exits, registers, memory and handler state; pausing does not change the run."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from snapshot_helpers import PauseAtExit, run_in_thread, snapshot_at_exit

from counting import CountingExits
from pyflank.debug import StopPoint
from pyflank.exit_handler import MemoryHooks
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.observe import Observer, Recorder, Replayer
from pyflank.processor import StopReason
from pyflank.snapshot import SnapshotError
from pyflank.vmm import Vm
from small_guests import LOOP, TABLE, WAITS_FOR_INPUT


def loop_vm(observers: list[Observer], vcpus: int = 1) -> Vm:
    vm = Vm(CountingExits, vcpus=vcpus, trace=True, observers=observers)
    vm.load_asm(LOOP)
    return vm


def test_a_restored_vm_goes_on_as_the_original(tmp_path: Path) -> None:
    plain = loop_vm([])
    [whole] = plain.run(timeout=60)
    assert whole.reason is StopReason.GUEST_HLT and whole.exits == 3000

    _, [paused], at = snapshot_at_exit(loop_vm, 1234, tmp_path / "loop.pfs")
    assert at == 1234
    assert paused.trace == whole.trace  # pausing and saving changed nothing

    again = Vm.restore(tmp_path / "loop.pfs", handler=CountingExits, trace=True)
    assert again.restored is not None and again.restored.ram > 0
    [restored] = again.run(timeout=60)
    assert restored.reason is StopReason.GUEST_HLT
    assert restored.trace == whole.trace[at:]
    assert restored.exits == whole.exits == 3000  # the handler's count goes on
    assert restored.state.as_dict() == whole.state.as_dict()
    assert again.memory.read(TABLE, 3001 * 8) == plain.memory.read(TABLE, 3001 * 8)
    # The handler's own state came along: CountingExits' counts cover the whole run.
    assert again.vcpus[0].handler.counts == plain.vcpus[0].handler.counts  # type: ignore[attr-defined]


def test_every_vcpu_is_saved_and_restored(tmp_path: Path) -> None:
    plain = loop_vm([], vcpus=2)
    wholes = plain.run(timeout=60)
    snapshot_at_exit(lambda o: loop_vm(o, vcpus=2), 700, tmp_path / "two.pfs")
    again = Vm.restore(tmp_path / "two.pfs", handler=CountingExits, trace=True)
    restored = again.run(timeout=60)
    for before, after in zip(wholes, restored, strict=True):
        assert after.reason is StopReason.GUEST_HLT
        assert after.exits == before.exits == 3000
        assert after.state.as_dict() == before.state.as_dict()
        assert before.trace is not None and after.trace is not None
        assert before.trace[-len(after.trace) :] == after.trace
    assert again.memory.read(TABLE, 0x20000) == plain.memory.read(TABLE, 0x20000)


def test_a_vm_halted_waiting_for_input_is_saved_there(tmp_path: Path) -> None:
    vm = Vm(platform="pc", trace=True)
    vm.load_asm(WAITS_FOR_INPUT)
    finish = run_in_thread(vm)
    for _ in range(100):  # a few instructions on it halts, nothing armed to wake it but COM1
        vm.pause()
        stopped = vm.vcpus[0].parking().stopped
        assert stopped is not None
        if stopped.point is StopPoint.IDLE:
            break
        vm.resume()
        time.sleep(0.02)
    assert stopped.point is StopPoint.IDLE
    vm.snapshot(tmp_path / "idle.pfs")
    vm.serial.feed(b"x")
    vm.resume()
    [original] = finish()

    again = Vm.restore(tmp_path / "idle.pfs", trace=True)
    again.serial.feed(b"x")
    [restored] = again.run(timeout=30)
    assert original.reason is restored.reason is StopReason.GUEST_HLT
    assert original.state.r12 == restored.state.r12 == ord("x")
    assert original.trace == restored.trace == [(10, original.trace[0][1])]  # type: ignore[index]
    assert restored.state.as_dict() == original.state.as_dict()


def test_pause_and_snapshot_need_a_running_vm(tmp_path: Path) -> None:
    vm = Vm()
    vm.load_asm("hlt")
    with pytest.raises(RuntimeError, match="not running"):
        vm.pause()
    vm.run(timeout=10)
    with pytest.raises(RuntimeError, match="has stopped"):
        vm.snapshot(tmp_path / "late.pfs")


def test_a_run_restored_from_a_snapshot_records_and_replays(tmp_path: Path) -> None:
    snapshot_at_exit(loop_vm, 1000, tmp_path / "mid.pfs")
    recorder = Recorder(tmp_path / "mid.rec")
    [recorded] = Vm.restore(tmp_path / "mid.pfs", observers=[recorder], trace=True).run(timeout=60)
    replayer = Replayer(tmp_path / "mid.rec")
    [replayed] = Vm.restore(tmp_path / "mid.pfs", observers=[replayer], trace=True).run(timeout=60)
    assert recorder.exits == 2000 and replayer.report.matched, replayer.report.describe()
    assert replayed.trace == recorded.trace


class HookingTable(MemoryHooks):
    def setup(self, vmcs: Vmcs) -> None:
        super().setup(vmcs)
        self.hook(TABLE, 0x8000, write=True)


def test_a_handler_with_ept_tables_is_refused_saying_why_and_the_run_goes_on(
    tmp_path: Path,
) -> None:
    plain = Vm(HookingTable, trace=True)
    plain.load_asm(LOOP)
    [whole] = plain.run(timeout=60)
    pause = PauseAtExit(1000)
    vm = Vm(HookingTable, trace=True, observers=[pause])
    vm.load_asm(LOOP)
    pause.vm = vm
    finish = run_in_thread(vm)
    assert pause.asked.wait(30)
    vm.pause()
    with pytest.raises(SnapshotError, match=r"VMM memory \(EPT tables, self.ept\)"):
        vm.snapshot(tmp_path / "ept.pfs")
    assert not (tmp_path / "ept.pfs").exists()
    vm.resume()
    [result] = finish()
    assert result.reason is StopReason.GUEST_HLT and result.trace == whole.trace
