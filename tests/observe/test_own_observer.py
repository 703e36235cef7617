"""An observer of one's own, in a few lines (``observe.Observer``), on a real guest."""

from __future__ import annotations

import threading

from observe_helpers import FIRST_OUT, rounds_vm

from pyflank.backends.base import StopReason
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.observe import Observer
from pyflank.processor import ExitRecord, Stop
from pyflank.processor.observer import ObservedVcpu


class PortLog(Observer):
    """Notes each OUT's port and what the handler made of RIP; stops vCPU 1 at its third."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, int, int]] = []
        self.stops: dict[int, str] = {}
        self.lock = threading.Lock()

    def exiting(self, vcpu: ObservedVcpu, record: ExitRecord) -> Stop | None:
        outs = sum(1 for v, _, _ in self.seen if v == vcpu.vcpuid)
        if vcpu.vcpuid == 1 and record.info.reason == ExitReason.IO_INSTRUCTION and outs == 2:
            return Stop(StopReason.BREAK, "enough")
        return None

    def exited(self, vcpu: ObservedVcpu, record: ExitRecord, handler_ns: int) -> None:
        if record.info.reason == ExitReason.IO_INSTRUCTION:
            with self.lock:
                self.seen.append((vcpu.vcpuid, record.info.qualification >> 16, vcpu.state.rip))

    def stopped(self, vcpu: ObservedVcpu, stop: Stop) -> None:
        self.stops[vcpu.vcpuid] = stop.reason.value


def test_an_observer_of_ones_own(backend: str) -> None:
    log = PortLog()
    results = rounds_vm(backend, vcpus=2, observers=[log]).run(timeout=10)
    assert [r.reason for r in results] == [StopReason.GUEST_HLT, StopReason.BREAK]
    assert results[1].message == "enough"
    # Each vCPU's OUTs of round 0 (port 0x80, RIP stepped past each); vCPU 1 then broke.
    steps = [(0x80, FIRST_OUT + 2), (0x80, FIRST_OUT + 4)]
    assert sorted(log.seen) == [(vcpu, *step) for vcpu in (0, 1) for step in steps]
    assert log.stops == {0: "guest hlt", 1: "break"}


def test_watches_picks_the_vcpus(backend: str) -> None:
    class OnlyTheFirst(PortLog):
        def watches(self, vcpu: ObservedVcpu) -> bool:
            return vcpu.vcpuid == 0

    log = OnlyTheFirst()
    rounds_vm(backend, vcpus=2, observers=[log]).run(timeout=10)
    assert {v for v, _, _ in log.seen} == {0} and log.stops == {0: "guest hlt"}
