"""The software CPU: CPUID exits of a guest loop against the engine's floor (issue 6)."""

from __future__ import annotations

import cProfile
import pstats
from pathlib import Path

from benchmarks import emu_cpuid as emu_bench
from benchmarks.registry import register


def _where_the_time_goes(count: int = 30_000, top: int = 8) -> list[str]:
    profiler = cProfile.Profile()
    profiler.runcall(emu_bench.full, count)
    stats = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())
    ranked = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    return [f"{own / total:6.1%}  {Path(file).stem}:{func}" for (file, _, func), (_, _, own, _, _)
            in ranked]  # fmt: skip


def bench_emu() -> dict[str, float | str]:
    result = emu_bench.cpuid_benchmark(count=100_000, repeat=3)
    for line in result.report().splitlines():
        print("  " + line)
    ratio = result.full_seconds / result.floor_binding_seconds
    print(f"  full path / floor (binding hook that only skips): {ratio:.1f}x")
    print("  where the time goes (share of own time under cProfile):")
    for line in _where_the_time_goes():
        print("    " + line)
    return {
        "emu_cpuid_exits_per_s": result.exits_per_second,
        "emu_floor_binding_per_s": result.count / result.floor_binding_seconds,
        "emu_floor_ctypes_per_s": result.count / result.floor_ctypes_seconds,
        "emu_full_over_floor": ratio,
    }


register("software CPU (unicorn): CPUID exits of a guest loop", bench_emu)
