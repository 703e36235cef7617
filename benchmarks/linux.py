"""A Linux boot: Debian's kernel to the /init marker on the software CPU, against QEMU TCG
booting the same kernel and initramfs in the same run (issue 16)."""

from __future__ import annotations

import statistics
import time

from benchmarks import qemu_boot
from benchmarks.registry import register
from pyflank.platform.linux.assets import AssetsUnavailable, LinuxAssets, ensure
from pyflank.platform.linux.initramfs import MARKER, POWEROFF_FLAG
from pyflank.vmm import Vm


def boot_to_marker(assets: LinuxAssets, *, decompress_in_guest: bool = False) -> tuple[float, int]:
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
    vm = Vm.boot_linux(
        assets.kernel.bzimage, initrd=assets.initramfs,
        append=f"console=ttyS0 {POWEROFF_FLAG}", console=receive,
        decompress_in_guest=decompress_in_guest,
    )  # fmt: skip
    [result] = vm.run(timeout=300)
    if not seen:
        raise RuntimeError(f"the boot did not reach the marker: {result.message}")
    return seen[0] - start, result.exits


def bench_linux(runs: int = 3) -> dict[str, float | str]:
    try:
        assets = ensure("cloud")
    except AssetsUnavailable as exc:
        print(f"  skipped: no kernel: {exc}")
        return {"skipped": str(exc)}
    boots = [boot_to_marker(assets) for _ in range(runs)]
    pyflank = statistics.median(seconds for seconds, _ in boots)
    print(f"  kernel: {assets.kernel.package} {assets.kernel.version}")
    print(f"  pyflank (software CPU) to the /init marker: {pyflank:5.2f} s "
          f"(median of {runs}; {boots[0][1]} exits through the handler)")  # fmt: skip
    in_guest, _ = boot_to_marker(assets, decompress_in_guest=True)
    print(f"  pyflank, the bzImage decompressing itself in the guest: {in_guest:5.2f} s (one run)")
    results: dict[str, float | str] = {
        "linux_pyflank_to_marker_s": pyflank,
        "linux_pyflank_decompressing_in_guest_s": in_guest,
    }
    reference = qemu_boot.measure(runs)
    results.update(reference)
    for machine in ("pc", "microvm"):
        qemu = reference.get(f"qemu_tcg_{machine}_to_marker_s")
        if isinstance(qemu, float):
            ratio = pyflank / qemu
            print(f"  pyflank / QEMU TCG -M {machine}: {ratio:.2f}x")
            results[f"linux_pyflank_over_qemu_{machine}"] = ratio
    return results


register("Linux boot: Debian's kernel to the /init marker, against QEMU TCG", bench_linux)
