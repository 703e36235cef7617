"""Record a run on the software CPU and replay it: the same exits and decisions, the console
input at the same points of the guest however late the host typed it, the first
divergence of a changed handler found and named; recordings that cannot be replayed are
refused in one line."""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

import pytest

from counting import CountingExits
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.observe import Recorder, RecordingError, Replayer
from pyflank.processor import StopReason
from pyflank.vmm import VcpuResult, Vm
from small_guests import LOOP, WAITS_FOR_INPUT


class FlipsRbxAtExit(ExitHandlerIntelX64):
    """The seed, except that at exit ``AT`` it answers one bit differently."""

    AT = 1234

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0

    def handle_cpuid(self) -> None:
        super().handle_cpuid()
        if self.seen == self.AT:
            self.m_state_save.rbx ^= 1
        self.seen += 1


def loop_vm(handler: type[ExitHandlerIntelX64], observer: object) -> Vm:
    vm = Vm(handler, trace=True, observers=[observer])  # type: ignore[list-item]
    vm.load_asm(LOOP)
    return vm


def test_a_replay_gives_the_same_exits_and_decisions(tmp_path: Path) -> None:
    recorder = Recorder(tmp_path / "loop.rec")
    [recorded] = loop_vm(CountingExits, recorder).run(timeout=60)
    assert recorder.exits == 3000
    replayer = Replayer(tmp_path / "loop.rec")
    [replayed] = loop_vm(CountingExits, replayer).run(timeout=60)
    assert replayer.report.matched, replayer.report.describe()
    assert replayer.report.exits == 3000
    assert replayed.trace == recorded.trace
    assert replayed.state.as_dict() == recorded.state.as_dict()


def test_a_changed_handler_is_caught_at_its_first_different_decision(tmp_path: Path) -> None:
    loop_vm(ExitHandlerIntelX64, Recorder(tmp_path / "loop.rec")).run(timeout=60)
    replayer = Replayer(tmp_path / "loop.rec")
    [replayed] = loop_vm(FlipsRbxAtExit, replayer).run(timeout=60)
    report = replayer.report
    assert replayed.reason is StopReason.DIVERGED
    assert report.divergence is not None and report.exits == FlipsRbxAtExit.AT
    assert report.divergence.exit == FlipsRbxAtExit.AT
    assert report.divergence.what == "rbx"
    assert f"exit {FlipsRbxAtExit.AT} (cpuid at RIP 0x" in report.describe()
    assert "recorded with pyflank.exit_handler" in report.notes[0]
    assert "replay diverged at exit 1234" in replayed.debug_ring


def waiting_vm(observer: object) -> Vm:
    vm = Vm(platform="pc", trace=True, observers=[observer])  # type: ignore[list-item]
    vm.load_asm(WAITS_FOR_INPUT)
    return vm


def test_console_input_reaches_the_replay_where_it_reached_the_recording(tmp_path: Path) -> None:
    vm = waiting_vm(recorder := Recorder(tmp_path / "typed.rec"))
    results: list[list[VcpuResult]] = []
    thread = threading.Thread(target=lambda: results.append(vm.run(timeout=30)))
    thread.start()
    time.sleep(0.3)  # the guest waits in HLT: the byte comes whenever the host types it
    vm.serial.feed(b"q")
    thread.join(30)
    [recorded] = results[0]
    assert recorded.reason is StopReason.GUEST_HLT and recorded.state.r12 == ord("q")
    assert recorder.inputs == 1

    replayer = Replayer(tmp_path / "typed.rec")
    [replayed] = waiting_vm(replayer).run(timeout=30)  # nobody types
    assert replayer.report.matched, replayer.report.describe()
    assert replayed.state.r12 == ord("q")
    assert replayed.state.as_dict() == recorded.state.as_dict()
    assert replayed.trace == recorded.trace


def test_input_on_the_minimal_platform_arrives_at_an_exit(tmp_path: Path) -> None:
    polls = """
    again:
        cpuid
        mov dx, 0x3fd
        in al, dx
        test al, 1
        jz again
        mov dx, 0x3f8
        in al, dx
        movzx r12, al
        hlt
    """

    def polling(observer: object) -> Vm:
        vm = Vm(observers=[observer])  # type: ignore[list-item]
        vm.load_asm(polls)
        return vm

    vm = polling(Recorder(tmp_path / "polled.rec"))
    results: list[list[VcpuResult]] = []
    thread = threading.Thread(target=lambda: results.append(vm.run(timeout=30)))
    thread.start()
    time.sleep(0.2)
    vm.serial.feed(b"z")
    thread.join(30)
    [recorded] = results[0]
    replayer = Replayer(tmp_path / "polled.rec")
    [replayed] = polling(replayer).run(timeout=30)
    assert recorded.state.r12 == replayed.state.r12 == ord("z")
    assert replayed.exits == recorded.exits and replayer.report.matched


def test_a_replay_into_another_guest_is_refused(tmp_path: Path) -> None:
    loop_vm(ExitHandlerIntelX64, Recorder(tmp_path / "loop.rec")).run(timeout=60)
    vm = Vm(observers=[Replayer(tmp_path / "loop.rec")])
    vm.load_asm("cpuid\nhlt")
    with pytest.raises(RecordingError, match="starts from another state"):
        vm.run(timeout=10)


def test_record_and_replay_need_one_vcpu_on_the_software_cpu(tmp_path: Path) -> None:
    vm = Vm(vcpus=2, observers=[Recorder(tmp_path / "two.rec")])
    vm.load_asm(LOOP)
    with pytest.raises(RecordingError, match="one vCPU"):
        vm.run(timeout=10)


def test_files_that_are_no_recording_are_refused(tmp_path: Path) -> None:
    (tmp_path / "text.rec").write_text("hello\n")
    with pytest.raises(RecordingError, match="not a pyflank recording"):
        Replayer(tmp_path / "text.rec")
    with gzip.open(tmp_path / "v9.rec", "wt") as file:
        file.write(json.dumps({"type": "header", "format": "pyflank-recording", "version": 9}))
    with pytest.raises(RecordingError, match="version 9 recording; this pyflank replays "):
        Replayer(tmp_path / "v9.rec")
    loop_vm(ExitHandlerIntelX64, Recorder(tmp_path / "loop.rec")).run(timeout=60)
    data = (tmp_path / "loop.rec").read_bytes()
    (tmp_path / "cut.rec").write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordingError, match="cut short or corrupt"):
        Replayer(tmp_path / "cut.rec")


def test_a_run_stopped_from_outside_replays_to_where_it_was_stopped(tmp_path: Path) -> None:
    def forever(observer: object) -> Vm:
        vm = Vm(trace=True, observers=[observer])  # type: ignore[list-item]
        vm.load_asm("again:\n    cpuid\n    jmp again")
        return vm

    [recorded] = forever(Recorder(tmp_path / "forever.rec")).run(timeout=0.5)
    assert recorded.reason is StopReason.TIMEOUT
    replayer = Replayer(tmp_path / "forever.rec")
    [replayed] = forever(replayer).run(timeout=60)
    assert replayer.report.matched, replayer.report.describe()
    assert replayed.reason is StopReason.STOPPED and "the recording ends here" in replayed.message
    assert replayed.trace == recorded.trace
