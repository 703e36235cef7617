"""Snapshots (issue 14): saving a running 64 MiB guest to a file and restoring it into a new
Vm, in seconds, with every page of RAM in use, and with most of it never touched.

    python -m benchmarks.snapshot

The guest spins on the software CPU; ``Vm.snapshot`` pauses it, writes the file and lets it
go on; ``Vm.restore`` reads the file into a new Vm, ready to run.  Best of three (wall
time: the file system is part of it).
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.registry import register
from pyflank.vmm import Vm

MEMORY = 64 << 20
SPIN = "spin:\n    inc rax\n    jmp spin\n"
_DATA_START = 4 << 20  # above the boot structures and the program


def _running_vm(full: bool) -> tuple[Vm, threading.Thread]:
    vm = Vm(memory_size=MEMORY)
    vm.load_asm(SPIN)
    if full:  # every page in use, with data that does not compress
        vm.memory.write(_DATA_START, random.Random(14).randbytes(MEMORY - _DATA_START))
    thread = threading.Thread(target=lambda: vm.run(timeout=60), daemon=True)
    thread.start()
    return vm, thread


def measure(full: bool, directory: Path, repeat: int = 3) -> dict[str, float]:
    save_s = restore_s = float("inf")
    size = 0
    for _ in range(repeat):
        vm, thread = _running_vm(full)
        path = directory / "bench.pfs"
        start = time.perf_counter()
        info = vm.snapshot(path)
        save_s = min(save_s, time.perf_counter() - start)
        size = info.size
        vm.vcpus[0].request_stop()
        thread.join(10)
        start = time.perf_counter()
        again = Vm.restore(path)
        restore_s = min(restore_s, time.perf_counter() - start)
        again.close()
    return {"save_s": save_s, "restore_s": restore_s, "file_mib": size / (1 << 20)}


def bench_snapshot() -> dict[str, float | str]:
    results: dict[str, float | str] = {}
    with tempfile.TemporaryDirectory(prefix="pyflank-snapshot-bench-") as tmp:
        for name, full in (("full", True), ("sparse", False)):
            figures = measure(full, Path(tmp))
            save_ms, restore_ms = figures["save_s"] * 1000, figures["restore_s"] * 1000
            print(
                f"  64 MiB guest, {name:<6} RAM: snapshot {save_ms:7.1f} ms, "
                f"restore {restore_ms:7.1f} ms, file {figures['file_mib']:6.1f} MiB"
            )
            for key, value in figures.items():
                results[f"snapshot_64mib_{name}_{key}"] = value
    return results


register("snapshots: save and restore a running 64 MiB guest (wall time)", bench_snapshot)


if __name__ == "__main__":
    bench_snapshot()
    sys.exit(0)
