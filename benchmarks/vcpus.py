"""Several vCPUs on the software CPU (issue 15 item 3): total exits per second with 1, 2
and 4 vCPUs, each running the CPUID loop of ``emu_cpuid``, in one run.

    python -m benchmarks.vcpus [COUNT]

Three configurations: the seed's handler (with the accelerator its CPUID exits are fused:
no Python, no GIL, so vCPUs run side by side), an extension whose ``handle_cpuid`` runs
Python at every exit (the GIL serialises the handlers: the most one can ask is that
adding vCPUs costs nothing), and the pure-Python exit path.  Goal: every ratio >= 1.0x.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from benchmarks.emu_cpuid import SeedThroughDispatch, loop_source
from benchmarks.registry import register
from pyflank import native
from pyflank.backends.base import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.vmm import Vm

VCPUS = (1, 2, 4)


def total_rate(vcpus: int, count: int, handler: type[ExitHandlerIntelX64]) -> float:
    """Exits per second of all ``vcpus`` together, each making ``count`` CPUID exits: from
    the first vCPU thread's start to the last one's end (the engines made before)."""
    vm = Vm(handler, vcpus=vcpus)
    vm.load_asm(loop_source(count))
    for vcpu in vm.vcpus:  # what Vm.run does first, outside the measured time
        vcpu._attach(vm.backend, trace=False)
    start = time.perf_counter()
    for vcpu in vm.vcpus:
        vcpu.start(None)
    for vcpu in vm.vcpus:
        vcpu.finished.wait(600)
    seconds = time.perf_counter() - start
    for vcpu in vm.vcpus:
        vcpu.join()
    vm.close()
    results = [vcpu.result for vcpu in vm.vcpus]
    if any(r is None or r.reason is not StopReason.GUEST_HLT or r.exits != count for r in results):
        raise RuntimeError(f"benchmark guest ended badly: {results}")
    return vcpus * count / seconds


def _pure(vcpus: int, count: int, handler: type[ExitHandlerIntelX64]) -> float:
    with native.disabled():
        return total_rate(vcpus, count, handler)


CONFIGURATIONS: dict[str, tuple[Callable[..., float], type[ExitHandlerIntelX64], int]] = {
    "the seed's handler": (total_rate, ExitHandlerIntelX64, 400_000),
    "a Python handle_cpuid": (total_rate, SeedThroughDispatch, 40_000),
    "pure-Python exit path": (_pure, ExitHandlerIntelX64, 40_000),
}


def measure(scale: float = 1.0, repeat: int = 2) -> dict[str, dict[int, float]]:
    """Exits per second by configuration and vCPU count, best of ``repeat``."""
    rates: dict[str, dict[int, float]] = {}
    for name, (rate, handler, count) in CONFIGURATIONS.items():
        per = max(1000, int(count * scale))
        rates[name] = {n: max(rate(n, per, handler) for _ in range(repeat)) for n in VCPUS}
    return rates


def report(rates: dict[str, dict[int, float]]) -> list[str]:
    lines = [f"{'':24} {'1 vCPU':>12} " + " ".join(f"{f'{n} vCPUs':>16}" for n in VCPUS[1:])]
    for name, by_count in rates.items():
        base = by_count[1]
        cells = " ".join(f"{by_count[n]:10,.0f} {by_count[n] / base:4.2f}x" for n in VCPUS[1:])
        lines.append(f"{name:24} {base:10,.0f}/s {cells}")
    return lines


def bench_vcpus() -> dict[str, float | str]:
    if native.accelerator() is None:
        print(f"  ({native.status()})")
    rates = measure()
    for line in report(rates):
        print("  " + line)
    worst = min(by[n] / by[1] for by in rates.values() for n in VCPUS[1:])
    print(f"  goal: total exits/s with 2 and 4 vCPUs >= 1.0x of one; lowest here {worst:.2f}x")
    results: dict[str, float | str] = {}
    for name, by_count in rates.items():
        key = name.replace("'", "").replace(" ", "_").replace("-", "_")
        for n, rate in by_count.items():
            results[f"vcpus_{key}_{n}_per_s"] = rate
            results[f"vcpus_{key}_{n}_over_1"] = rate / by_count[1]
    return results


register("several vCPUs on the software CPU: total CPUID exits/s (ratio to 1 vCPU)", bench_vcpus)


if __name__ == "__main__":
    scale = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
    print("\n".join(report(measure(scale))))
