"""Observers (issue 14): what each costs per exit when attached, and that nothing attached
costs nothing, measured in one run on both backends.

    python -m benchmarks.observe [COUNT]

The software CPU runs the CPUID loop of ``emu_cpuid``; KVM runs the guest SDK's VERSIONS
loop (the I/O-port doorbell).  Each configuration runs the vCPU in this thread (its CPU
time, ``time.thread_time``), best of three, interleaved.  "none" is the exit path itself,
which must match ``emu_cpuid``'s full path and the KVM doorbell of ``kvm_compare``.
"""

from __future__ import annotations

import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from benchmarks.emu_cpuid import loop_source
from benchmarks.registry import register
from pyflank.backends.kvm.probe import probe_kvm
from pyflank.observe import BreakOnExit, ExitStatistics, ExitTrace
from pyflank.processor import StopReason
from pyflank.processor.observer import VmObserver
from pyflank.testing import versions_loop
from pyflank.vmm import Vm, run_loop

Observers = Callable[[Path], Sequence[VmObserver]]
CONFIGURATIONS: dict[str, Observers] = {
    "none": lambda _: (),
    "ExitStatistics": lambda _: [ExitStatistics(log_table=False)],
    "BreakOnExit (never)": lambda _: [BreakOnExit(rips=[0xDEAD])],
    "ExitTrace, no counts": lambda out: [ExitTrace(out / "a.jsonl", instructions=False)],
    "ExitTrace": lambda out: [ExitTrace(out / "b.jsonl")],
    "stats + trace + break": lambda out: [
        ExitStatistics(log_table=False),
        ExitTrace(out / "c.jsonl"),
        BreakOnExit(rips=[0xDEAD]),
    ],
}


def run_here(vm: Vm, observers: Sequence[VmObserver]) -> tuple[float, int]:
    """Run ``vm``'s one vCPU in this thread: (its CPU seconds, exits)."""
    [vcpu] = vm.vcpus
    vcpu._attach(vm.backend, trace=False, observers=observers)
    assert vcpu.engine is not None and vcpu.processor is not None
    start = time.thread_time()
    stop = run_loop(vcpu.engine, vcpu.processor)
    seconds = time.thread_time() - start
    for observer in observers:
        observer.finished()
    vm.close()
    if stop.reason not in (StopReason.GUEST_HLT, StopReason.HALTED):
        raise RuntimeError(f"benchmark guest ended badly: {stop.reason} {stop.message}")
    return seconds, vcpu.processor.exits


def _vm(backend: str, count: int) -> Vm:
    vm = Vm(backend=backend)
    vm.load_asm(loop_source(count) if backend == "emu" else versions_loop(count))
    return vm


def measure(backend: str, count: int, repeat: int = 3) -> dict[str, float]:
    """Microseconds per exit of each configuration on ``backend``."""
    best = dict.fromkeys(CONFIGURATIONS, float("inf"))
    with tempfile.TemporaryDirectory(prefix="pyflank-observe-bench-") as tmp:
        for _ in range(repeat):
            for name, observers in CONFIGURATIONS.items():
                seconds, exits = run_here(_vm(backend, count), observers(Path(tmp)))
                best[name] = min(best[name], 1e6 * seconds / exits)
    return best


def report(backend: str, figures: dict[str, float]) -> list[str]:
    base = figures["none"]
    lines = [f"{backend}: {'observers':<24} {'us/exit':>8} {'+us/exit':>9}"]
    for name, us in figures.items():
        lines.append(f"     {name:<24} {us:8.2f} {us - base:+9.2f}")
    return lines


def bench_observe() -> dict[str, float | str]:
    results: dict[str, float | str] = {}
    backends = [("emu", 50_000)]
    capabilities = probe_kvm("/dev/kvm", measure=False)
    if capabilities.usable:
        backends.append(("kvm", 10_000))
    else:
        print(f"  KVM skipped: {capabilities.reason}")
    for backend, count in backends:
        figures = measure(backend, count)
        for line in report(backend, figures):
            print("  " + line)
        for name, us in figures.items():
            results[f"observe_{backend}_{name}_us_per_exit"] = us
    return results


register("observers: cost per exit, attached and not (thread CPU time)", bench_observe)


def main(argv: list[str]) -> None:
    count = int(argv[1]) if len(argv) > 1 else 50_000
    for backend in ("emu", "kvm"):
        if backend == "kvm" and not probe_kvm("/dev/kvm", measure=False).usable:
            continue
        print(
            "\n".join(report(backend, measure(backend, count if backend == "emu" else count // 5)))
        )


if __name__ == "__main__":
    main(sys.argv)
