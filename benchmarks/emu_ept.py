"""One EPT-violation round trip on the software CPU against a CPUID exit, in one run.

    python -m benchmarks.emu_ept [COUNT]

The round trip is the DdiMon/hvpp hook pattern (``MemoryHooks``): a guest write to a
write-hooked page is an EPT violation; the handler's hook runs, the permission is lifted,
the monitor trap flag steps the one instruction (an MTF exit), and the permission is
restored -- two exits, two EPT walks, two nested-page-table updates.  The guest loop is
the CPUID loop's with the CPUID replaced by that write, so the difference per iteration
is the round trip.  Each loop runs the vCPU in this thread (its CPU time), best of three,
interleaved.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from benchmarks.emu_cpuid import loop_source, timed_run
from benchmarks.registry import register
from pyflank.exit_handler import EptAccess, MemoryHooks
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.vmm import Vm

HOOKED = 0x300000


def write_loop(count: int) -> str:
    return loop_source(count).replace("cpuid", f"mov qword ptr [{HOOKED:#x}], r15")


class WriteHook(MemoryHooks):
    """Observes every write to the hooked page (and counts them)."""

    def setup(self, vmcs: Vmcs) -> None:
        super().setup(vmcs)
        self.writes = 0
        self.hook(HOOKED, write=True, on_access=self._saw)

    def _saw(self, access: EptAccess) -> None:
        self.writes += 1


def _seconds(vm: Vm, expected_exits: int) -> float:
    return timed_run(vm, expected_exits, time.thread_time)


def round_trips(count: int) -> float:
    vm = Vm(WriteHook)
    vm.load_asm(write_loop(count))
    return _seconds(vm, 2 * count)  # the violation and the MTF exit


def cpuid_exits(count: int) -> float:
    vm = Vm()
    vm.load_asm(loop_source(count))
    return _seconds(vm, count)


@dataclass(frozen=True)
class EptRoundTrip:
    count: int
    round_trip_seconds: float
    cpuid_seconds: float

    @property
    def round_trip_us(self) -> float:
        return self.round_trip_seconds / self.count * 1e6

    @property
    def cpuid_us(self) -> float:
        return self.cpuid_seconds / self.count * 1e6

    def report(self) -> str:
        return "\n".join(
            [
                f"iterations: {self.count}",
                "  EPT-violation round trip (hook, MTF step, restore): "
                f"{self.round_trip_us:8.1f} us",
                f"  CPUID exit:                                          {self.cpuid_us:8.2f} us",
                f"  round trip / CPUID exit: {self.round_trip_us / self.cpuid_us:.0f}x",
            ]
        )


def ept_benchmark(count: int = 2_000, repeat: int = 3) -> EptRoundTrip:
    """Best of ``repeat`` runs of each loop, interleaved (a shared machine is noisy)."""
    runs = [(round_trips(count), cpuid_exits(count)) for _ in range(repeat)]
    hooked, cpuid = (min(column) for column in zip(*runs, strict=True))
    return EptRoundTrip(count, hooked, cpuid)


def bench_ept() -> dict[str, float | str]:
    result = ept_benchmark()
    for line in result.report().splitlines():
        print("  " + line)
    return {
        "emu_ept_round_trip_us": result.round_trip_us,
        "emu_ept_cpuid_exit_us": result.cpuid_us,
        "emu_ept_round_trip_over_cpuid": result.round_trip_us / result.cpuid_us,
    }


register("software CPU: an EPT-violation round trip against a CPUID exit", bench_ept)


if __name__ == "__main__":
    print(ept_benchmark(int(sys.argv[1]) if len(sys.argv) > 1 else 2_000).report())
