"""CPUID exits per second on the software CPU, against unicorn's own floor, in one run.

    python -m benchmarks.emu_cpuid [N]

Loops of N CPUIDs: through pyflank's full exit path (VMCS, StateSave, the seed's
handling) -- on the pure-Python path, with the native accelerator through ``dispatch()``
(an override that calls the seed), and fused (the seed not overridden); with a bare
unicorn hook through the Python binding that only skips the instruction (the floor the
issue measures against); and with the same hook as a raw ctypes callback (the cheapest any
Python hook can be).  ``profile`` shows where the time
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from unicorn import UC_HOOK_INSN
from unicorn import x86_const as x86

from pyflank import native
from pyflank.backends.emu import engine as eng
from pyflank.backends.emu.engine import Engine
from pyflank.backends.emu.register_probe import register_file
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.platform.assemble import assemble

if TYPE_CHECKING:
    from pyflank.vmm import Vm

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


class SeedThroughDispatch(ExitHandlerIntelX64):
    """The seed's CPUID handling through ``dispatch()``: an extension that overrides
    ``handle_cpuid`` and calls the seed (README's HideHypervisor), which the fused path
    leaves alone."""

    def handle_cpuid(self) -> None:
        super().handle_cpuid()


def full(count: int, handler: type[ExitHandlerIntelX64] = ExitHandlerIntelX64) -> float:
    """Seconds for ``count`` CPUID exits through pyflank's whole exit path.

    The vCPU runs in the calling thread (as ``Vm.run`` would in its own) so that a
    profiler sees it.
    """
    from pyflank.vmm import Vm  # noqa: PLC0415 - keep the floors light

    vm = Vm(handler)
    vm.load_asm(loop_source(count))
    return timed_run(vm, count)


def timed_run(vm: Vm, expected_exits: int, clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds (by ``clock``) that ``vm``'s one vCPU runs to its HLT in this thread,
    checked to have made ``expected_exits`` exits."""
    from pyflank.backends.base import StopReason  # noqa: PLC0415 - keep the floors light
    from pyflank.vmm import run_loop  # noqa: PLC0415

    [vcpu] = vm.vcpus
    vcpu._attach(vm.backend, trace=False)
    assert vcpu.engine is not None and vcpu.processor is not None
    start = clock()
    stop = run_loop(vcpu.engine, vcpu.processor)
    elapsed = clock() - start
    if stop.reason is not StopReason.GUEST_HLT or vcpu.processor.exits != expected_exits:
        raise RuntimeError(f"benchmark guest ended badly: {stop.reason} {stop.message}")
    return elapsed


def pure_python(count: int) -> float:
    """``full`` on the pure-Python exit path (``PYFLANK_NATIVE=0``)."""
    with native.disabled():
        return full(count)


def register_file_mode() -> str:
    """The register file the exit path uses: ``InPlace`` or ``ThroughApi``."""
    engine = Engine()
    return type(register_file(engine.uc, engine.handle)).__name__


@dataclass(frozen=True)
class CpuidBenchmark:
    count: int
    full_seconds: float  # the default: the fused path where the accelerator is built
    floor_binding_seconds: float
    floor_ctypes_seconds: float
    register_file: str = ""
    pure_seconds: float = 0.0  # the pure-Python exit path
    dispatch_seconds: float = 0.0  # the seed's handler through dispatch()
    accelerated: bool = False

    @property
    def exits_per_second(self) -> float:
        return self.count / self.full_seconds

    @property
    def overhead_vs_binding(self) -> float:
        """Handler overhead as a fraction of the binding floor (0.25 = 25 %)."""
        return self.full_seconds / self.floor_binding_seconds - 1

    def ratio(self, seconds: float) -> float:
        """``seconds`` against the binding floor (the issue's goals are ratios of it)."""
        return seconds / self.floor_binding_seconds

    def report(self) -> str:
        per = 1e6 / self.count

        def line(label: str, seconds: float) -> str:
            return (f"  {label:<44} {self.count / seconds:10.0f}/s ({seconds * per:5.2f} us/exit,"
                    f" {self.ratio(seconds):4.1f}x)")  # fmt: skip

        lines = [f"CPUID exits: {self.count} (x: against the binding-hook floor)"]
        lines.append(line("pure-Python exit path (PYFLANK_NATIVE=0)", self.pure_seconds))
        if self.accelerated:
            lines.append(line("native, the seed through dispatch()", self.dispatch_seconds))
            lines.append(line("native, fused (the seed not overridden)", self.full_seconds))
            python_us = (self.dispatch_seconds - self.full_seconds) * per
            lines.append(f"  Python per exit through dispatch() (processor + handler): "
                         f"{python_us:.2f} us")  # fmt: skip
        else:
            lines.append(f"  (no native accelerator: {native.status()})")
        lines.append(line("floor: binding hook that only skips", self.floor_binding_seconds))
        lines.append(line("floor: ctypes hook that only skips", self.floor_ctypes_seconds))
        lines.append(f"  register file: {self.register_file}")
        return "\n".join(lines)


def cpuid_benchmark(count: int = 100_000, repeat: int = 3) -> CpuidBenchmark:
    """Best of ``repeat`` runs of each loop, interleaved (a shared machine is noisy)."""
    accelerated = native.accelerator() is not None
    runs = [
        (
            full(count),
            floor_binding(count),
            floor_ctypes(count),
            pure_python(count),
            full(count, SeedThroughDispatch) if accelerated else 0.0,
        )
        for _ in range(repeat)
    ]
    full_s, binding_s, ctypes_s, pure_s, dispatch_s = (min(c) for c in zip(*runs, strict=True))
    return CpuidBenchmark(
        count, full_s, binding_s, ctypes_s, register_file_mode(), pure_s, dispatch_s, accelerated
    )


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
