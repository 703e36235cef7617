"""CPUID exits per second on the software CPU, against unicorn's own floor, in one run.

    python -m benchmarks.emu_cpuid [N]

Three loops of N CPUIDs: through pyflank's full exit path (VMCS, StateSave, the seed's
``dispatch``); with a bare unicorn hook through the Python binding that only skips the
instruction (the floor the issue measures against); and with the same hook as a raw
ctypes callback (the cheapest any Python hook can be).  ``profile`` shows where the time
of the full path goes (ctypes calls are not seen by cProfile: their time is their
caller's).  The report names how the exit path reaches the registers: ``InPlace``, or
``ThroughApi`` (batch calls, ~2.5 us slower per exit) where unicorn's CPU state was not
confirmed.
"""

from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from dataclasses import dataclass

from unicorn import UC_HOOK_INSN
from unicorn import x86_const as x86

from pyflank.backends.emu import engine as eng
from pyflank.backends.emu.engine import Engine
from pyflank.backends.emu.register_probe import register_file
from pyflank.platform.assemble import assemble

LOAD = 0x100000


def loop_source(count: int) -> str:
    return f"""
        mov r15, {count}
    bench_loop:
        xor eax, eax
        cpuid
        dec r15
        jnz bench_loop
        cli
        hlt
    """


def _bare_engine(count: int) -> Engine:
    """A flat 64-bit unicorn CPU (no paging) with the loop at LOAD."""
    engine = Engine()
    engine.map_private(0, 0x200000)
    engine.write_physical(LOAD, assemble(loop_source(count), LOAD))
    engine.write(x86.UC_X86_REG_RSP, 0x80000)
    return engine


def _time_engine(engine: Engine) -> float:
    start = time.perf_counter()
    engine.uc.emu_start(LOAD, eng.NO_END)
    return time.perf_counter() - start


def floor_binding(count: int) -> float:
    """Seconds for ``count`` CPUIDs with a binding-level hook that only skips."""
    engine = _bare_engine(count)
    engine.uc.hook_add(UC_HOOK_INSN, lambda uc, data: 1, None, 1, 0, x86.UC_X86_INS_CPUID)
    return _time_engine(engine)


def floor_ctypes(count: int) -> float:
    """Seconds for ``count`` CPUIDs with a raw ctypes hook that only skips."""
    engine = _bare_engine(count)
    callback = eng.INSN_CB(lambda uc, data: 1)
    engine.hook_instruction(x86.UC_X86_INS_CPUID, callback)
    return _time_engine(engine)


def full(count: int) -> float:
    """Seconds for ``count`` CPUID exits through pyflank's whole exit path.

    The vCPU runs in the calling thread (as ``Vm.run`` would in its own) so that a
    profiler sees it.
    """
    from pyflank.backends.base import StopReason  # noqa: PLC0415 - keep the floors light
    from pyflank.vmm import Vm, run_loop  # noqa: PLC0415

    vm = Vm()
    vm.load_asm(loop_source(count))
    [vcpu] = vm.vcpus
    vcpu._attach(vm.backend, trace=False)
    assert vcpu.engine is not None and vcpu.processor is not None
    start = time.perf_counter()
    stop = run_loop(vcpu.engine, vcpu.processor)
    elapsed = time.perf_counter() - start
    if stop.reason is not StopReason.GUEST_HLT or vcpu.processor.exits != count:
        raise RuntimeError(f"benchmark guest ended badly: {stop.reason} {stop.message}")
    return elapsed


def register_file_mode() -> str:
    """The register file the exit path uses: ``InPlace`` or ``ThroughApi``."""
    engine = Engine()
    return type(register_file(engine.uc, engine.handle)).__name__


@dataclass(frozen=True)
class CpuidBenchmark:
    count: int
    full_seconds: float
    floor_binding_seconds: float
    floor_ctypes_seconds: float
    register_file: str = ""

    @property
    def exits_per_second(self) -> float:
        return self.count / self.full_seconds

    @property
    def overhead_vs_binding(self) -> float:
        """Handler overhead as a fraction of the binding floor (0.25 = 25 %)."""
        return self.full_seconds / self.floor_binding_seconds - 1

    def report(self) -> str:
        per = 1e6 / self.count
        return "\n".join(
            [
                f"CPUID exits: {self.count}",
                f"  full exit path:      {self.exits_per_second:10.0f}/s "
                f"({self.full_seconds * per:.2f} us/exit)",
                f"  floor (binding hook): {self.count / self.floor_binding_seconds:9.0f}/s "
                f"({self.floor_binding_seconds * per:.2f} us/exit)",
                f"  floor (ctypes hook):  {self.count / self.floor_ctypes_seconds:9.0f}/s "
                f"({self.floor_ctypes_seconds * per:.2f} us/exit)",
                f"  overhead over the binding floor: {self.overhead_vs_binding:.0%}",
                f"  register file: {self.register_file}",
            ]
        )


def cpuid_benchmark(count: int = 100_000, repeat: int = 3) -> CpuidBenchmark:
    """Best of ``repeat`` runs of each loop, interleaved (a shared machine is noisy)."""
    runs = [(full(count), floor_binding(count), floor_ctypes(count)) for _ in range(repeat)]
    best = [min(column) for column in zip(*runs, strict=True)]
    full_s, binding_s, ctypes_s = best
    return CpuidBenchmark(count, full_s, binding_s, ctypes_s, register_file_mode())


def profile(count: int = 50_000, top: int = 25) -> str:
    """cProfile of the full exit path, sorted by own time."""
    profiler = cProfile.Profile()
    profiler.enable()
    full(count)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str]) -> None:
    count = int(argv[1]) if len(argv) > 1 else 100_000
    print(cpuid_benchmark(count).report())
    if "--profile" in argv:
        print(profile(min(count, 50_000)))


if __name__ == "__main__":
    main(sys.argv)
