"""A way to pause a Vm at a chosen exit, and to run one in a thread."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

from pyflank.observe import Observer
from pyflank.processor.observer import ObservedVcpu
from pyflank.processor.records import ExitRecord
from pyflank.vmm import VcpuResult, Vm


class PauseAtExit(Observer):
    """Asks the Vm to pause once a vCPU's handler has seen ``exits`` exits (the first to get
    there; the others are still running): that vCPU parks at the next start of guest code,
    the same place in every run."""

    def __init__(self, exits: int) -> None:
        self.exits = exits
        self.vm: Vm | None = None
        self.asked = threading.Event()

    def exited(self, vcpu: ObservedVcpu, record: ExitRecord, handler_ns: int) -> None:
        processor = getattr(vcpu, "processor", None)
        if processor is not None and processor.exits == self.exits and not self.asked.is_set():
            assert self.vm is not None
            self.vm.request_pause()
            self.asked.set()


def run_in_thread(vm: Vm, timeout: float = 60) -> Callable[[], list[VcpuResult]]:
    """Start ``vm``; a function that waits for its results."""
    results: list[list[VcpuResult]] = []
    thread = threading.Thread(target=lambda: results.append(vm.run(timeout=timeout)))
    thread.start()

    def finish() -> list[VcpuResult]:
        thread.join(timeout)
        assert not thread.is_alive()
        return results[0]

    return finish


def snapshot_at_exit(vm_of: Callable[[list[Observer]], Vm], exits: int, path: Path) -> tuple[
    Vm, list[VcpuResult], int
]:
    """Run the Vm ``vm_of`` makes, saving it to ``path`` after a vCPU's ``exits``-th exit;
    (the Vm, its results, the exits vCPU 0's handler had seen at the snapshot)."""
    pause = PauseAtExit(exits)
    vm = vm_of([pause])
    pause.vm = vm
    finish = run_in_thread(vm)
    assert pause.asked.wait(30)
    vm.pause()
    processor = vm.vcpus[0].processor
    assert processor is not None
    at = processor.exits
    vm.snapshot(path)
    vm.resume()
    return vm, finish(), at
