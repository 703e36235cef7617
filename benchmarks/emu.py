"""The software CPU: CPUID exits of a guest loop against the engine's floor (issue 6)."""

from __future__ import annotations

import cProfile
import pstats
from pathlib import Path

from benchmarks import dispatch
from benchmarks import emu_cpuid as emu_bench
from benchmarks.registry import register
from pyflank import native


def _where_the_time_goes(count: int = 30_000, top: int = 8) -> list[str]:
    profiler = cProfile.Profile()
    profiler.runcall(emu_bench.full, count, emu_bench.SeedThroughDispatch)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())
    ranked = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return [f"{own / total:6.1%}  {Path(file).stem}:{func}" for (file, _, func), (_, _, own, _, _)
            in ranked]  # fmt: skip


def bench_emu() -> dict[str, float | str]:
    result = emu_bench.cpuid_benchmark(count=100_000, repeat=3)
    for line in result.report().splitlines():
        print("  " + line)
    fused = result.ratio(result.full_seconds)
    through_dispatch = result.ratio(result.dispatch_seconds)
    # The floor under the goal for dispatch(): the seed's Python code alone, on a
    # software VMCS without any engine (benchmarks.dispatch), in this same run.
    alone_us = 1e6 / dispatch.rate(dispatch.cpuid_handler())
    alone = alone_us / (result.floor_binding_seconds * 1e6 / result.count)
    print(f"  the seed's dispatch() alone, no engine: {alone_us:.2f} us/exit ({alone:.1f}x)")
    if result.accelerated:
        print(f"  goals: the seed through dispatch() {through_dispatch:.2f}x (<= 1.5x; its "
              f"Python alone is {alone:.1f}x), fused {fused:.2f}x (<= 1.0x)")  # fmt: skip
    print("  where the time goes, through dispatch() (share of own time under cProfile):")
    for line in _where_the_time_goes():
        print("    " + line)
    per = 1e6 / result.count
    return {
        "emu_cpuid_exits_per_s": result.exits_per_second,
        "emu_floor_binding_per_s": result.count / result.floor_binding_seconds,
        "emu_floor_ctypes_per_s": result.count / result.floor_ctypes_seconds,
        "emu_full_over_floor": fused,
        "emu_pure_python_us_per_exit": result.pure_seconds * per,
        "emu_pure_python_over_floor": result.ratio(result.pure_seconds),
        "emu_dispatch_us_per_exit": result.dispatch_seconds * per,
        "emu_dispatch_over_floor": through_dispatch,
        "emu_fused_us_per_exit": result.full_seconds * per,
        "emu_python_us_per_exit": (result.dispatch_seconds - result.full_seconds) * per,
        "emu_dispatch_alone_us_per_exit": alone_us,
        "native": native.status(),
    }


register("software CPU (unicorn): CPUID exits of a guest loop", bench_emu)
