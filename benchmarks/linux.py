"""A Linux boot: Debian's kernel to the /init marker on the software CPU, against QEMU TCG
booting the same kernel and initramfs in the same run (issue 16)."""

from __future__ import annotations

import cProfile
import pstats
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from benchmarks import qemu_boot
from benchmarks.registry import register
from pyflank import native, vmm
from pyflank.platform.linux.assets import AssetsUnavailable, LinuxAssets, ensure, vmlinux
from pyflank.platform.linux.initramfs import MARKER, POWEROFF_FLAG
from pyflank.vmm import Vm


def boot_to_marker(
    assets: LinuxAssets, *, decompress_in_guest: bool = False, pvh: bool = False
) -> tuple[float, int]:
    """Seconds from loading the kernel (``Vm.boot_linux``: decompressing, placing) to the
    marker on the console, and the exits; QEMU's figure likewise starts at its launch."""
    seen: list[float] = []
    console = bytearray()
    marker = MARKER.encode()

    def receive(byte: int) -> None:
        console.append(byte)
        if not seen and console.endswith(marker):
            seen.append(time.perf_counter())

    start = time.perf_counter()
    kernel = vmlinux(assets.kernel) if pvh else assets.kernel.bzimage
    vm = Vm.boot_linux(
        kernel, initrd=assets.initramfs,
        append=f"console=ttyS0 {POWEROFF_FLAG}", console=receive,
        decompress_in_guest=decompress_in_guest,
    )  # fmt: skip
    [result] = vm.run(timeout=300)
    if not seen:
        raise RuntimeError(f"the boot did not reach the marker: {result.message}")
    return seen[0] - start, result.exits


@contextmanager
def _profiled_vcpus(profiler: cProfile.Profile) -> Iterator[None]:
    """Profile every vCPU thread's run loop (cProfile sees only the thread it runs in)."""
    plain = vmm.run_loop

    def profiled(*args: Any, **kwargs: Any) -> Any:
        return profiler.runcall(plain, *args, **kwargs)

    vmm.run_loop = profiled  # type: ignore[assignment]
    try:
        yield
    finally:
        vmm.run_loop = plain  # type: ignore[assignment]


def _engine_start(file: str, _line: int, name: str) -> bool:
    """The call that runs guest code: the accelerator's, or ``Engine.start`` (its ctypes
    call is its own time: cProfile does not see ctypes calls)."""
    accelerated = name.startswith("<method 'start' of 'pyflank.native._accel.")
    return accelerated or (name == "start" and file.endswith("backends/emu/engine.py"))


def seconds_in_unicorn(assets: LinuxAssets) -> tuple[float, float]:
    """One boot under cProfile: the seconds unicorn itself ran (the own time of the engine's
    start call: guest code and the native hooks, not the Python they call) and the
    seconds the vCPU's run loop took.  The profiler slows only the Python, so the first
    figure is a floor under any VMM built on this engine."""
    profiler = cProfile.Profile()
    with _profiled_vcpus(profiler):
        boot_to_marker(assets)
    stats: dict[tuple[str, int, str], Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    starts = [own for key, (_, _, own, _, _) in stats.items() if _engine_start(*key)]
    loop = max(total for (_, _, name), (_, _, _, total, _) in stats.items() if name == "run_loop")
    return sum(starts), loop


def bench_linux(runs: int = 3) -> dict[str, float | str]:
    try:
        assets = ensure("cloud")
    except AssetsUnavailable as exc:
        print(f"  skipped: no kernel: {exc}")
        return {"skipped": str(exc)}
    boots, pure_boots = [], []
    for _ in range(runs):  # interleaved: the machine's load hits both alike
        boots.append(boot_to_marker(assets))
        with native.disabled():
            pure_boots.append(boot_to_marker(assets))
    pyflank = statistics.median(seconds for seconds, _ in boots)
    pure = statistics.median(seconds for seconds, _ in pure_boots)
    print(f"  kernel: {assets.kernel.package} {assets.kernel.version}")
    print(f"  pyflank (software CPU) to the /init marker: {pyflank:5.2f} s "
          f"(median of {runs}; {boots[0][1]} exits through the handler; {native.status()})")
    print(f"  pyflank on the pure-Python exit paths (PYFLANK_NATIVE=0): {pure:5.2f} s "
          f"({pure / pyflank:.2f}x the native boot's time)")  # fmt: skip
    in_guest, _ = boot_to_marker(assets, decompress_in_guest=True)
    print(f"  pyflank, the bzImage decompressing itself in the guest: {in_guest:5.2f} s (one run)")
    by_pvh, _ = boot_to_marker(assets, pvh=True)
    print(f"  pyflank, the vmlinux by its PVH entry (as -M microvm boots it): {by_pvh:5.2f} s "
          "(one run)")  # fmt: skip
    results: dict[str, float | str] = {
        "linux_pyflank_to_marker_s": pyflank,
        "linux_pyflank_pure_python_to_marker_s": pure,
        "linux_pyflank_decompressing_in_guest_s": in_guest,
        "linux_pyflank_pvh_to_marker_s": by_pvh,
    }
    in_unicorn, loop = seconds_in_unicorn(assets)
    print(f"  floor: unicorn itself ran {in_unicorn:5.2f} s of a profiled boot's {loop:5.2f} s "
          "(guest code and native hooks; a VMM on this engine cannot boot faster)")  # fmt: skip
    results["linux_seconds_in_unicorn"] = in_unicorn
    reference = qemu_boot.measure(runs)
    results.update(reference)
    goals = {"pc": 1.0, "microvm": 1.5}
    for machine in ("pc", "microvm"):
        qemu = reference.get(f"qemu_tcg_{machine}_to_marker_s")
        if isinstance(qemu, float):
            ratio = pyflank / qemu
            print(f"  pyflank / QEMU TCG -M {machine}: {ratio:.2f}x (goal <= {goals[machine]}x; "
                  f"pure-Python paths {pure / qemu:.2f}x)")  # fmt: skip
            results[f"linux_pyflank_over_qemu_{machine}"] = ratio
            results[f"linux_pure_python_over_qemu_{machine}"] = pure / qemu
            floor = in_unicorn / qemu
            print(f"    the floor (unicorn alone) / QEMU TCG -M {machine}: {floor:.2f}x")
            results[f"linux_unicorn_floor_over_qemu_{machine}"] = floor
    microvm = reference.get("qemu_tcg_microvm_to_marker_s")
    if isinstance(microvm, float):
        ratio = by_pvh / microvm
        print(f"  pyflank's PVH boot / QEMU TCG -M microvm (the same entry): {ratio:.2f}x")
        results["linux_pyflank_pvh_over_qemu_microvm"] = ratio
    return results


register("Linux boot: Debian's kernel to the /init marker, against QEMU TCG", bench_linux)
