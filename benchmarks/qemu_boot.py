"""The reference figure for a Linux boot: QEMU TCG booting the same kernel and initramfs to
the ``/init`` marker, ``-M pc`` (SeaBIOS, bzImage) and ``-M microvm`` (PVH vmlinux).

    python -m benchmarks.qemu_boot [--runs N] [--flavour cloud|generic]

``-M pc`` gets pyflank's own command line (``cmdline.compose("console=ttyS0")``: no ACPI,
no APICs, the 8259 and the PIT, as pyflank's platform); ``-M microvm`` has no 8259 wiring
of its own worth the name, so it keeps its ACPI and (IO)APICs and gets only the
time-related arguments.  The figure is wall time from starting QEMU to the marker line,
the median of the runs; QEMU is killed at the marker.  QEMU is Debian's
``qemu-system-x86``; where it is not installed the section says so.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pyflank.platform.linux.assets import AssetsUnavailable, LinuxAssets, ensure, vmlinux
from pyflank.platform.linux.cmdline import compose, platform_arguments
from pyflank.platform.linux.initramfs import MARKER

QEMU = "qemu-system-x86_64"
MEMORY_MIB = 256
_APIC_FREE = {"acpi", "noapic", "nolapic", "nosmp"}  # what -M microvm cannot do without
_MARKER_LINE = re.compile(re.escape(MARKER.encode()) + rb" uptime (\S+) s")


@dataclass(frozen=True)
class Boot:
    machine: str
    seconds: float  # QEMU start to the marker, wall time
    guest_uptime: str  # what the marker says /proc/uptime was


def find_qemu() -> str | None:
    return shutil.which(QEMU)


def machines(assets: LinuxAssets) -> dict[str, tuple[list[str], Path, str]]:
    microvm_args = [a for a in platform_arguments() if a.split("=")[0] not in _APIC_FREE]
    return {
        "pc": (["-M", "pc"], assets.kernel.bzimage, compose("console=ttyS0")),
        "microvm": (
            ["-M", "microvm"],
            vmlinux(assets.kernel),
            " ".join(["console=ttyS0", *microvm_args]),
        ),
    }


def boot_to_marker(
    qemu: str, machine: list[str], kernel: Path, initrd: Path, append: str, timeout: float = 60.0
) -> tuple[float, str]:
    command = [
        qemu, *machine, "-accel", "tcg", "-m", str(MEMORY_MIB), "-display", "none",
        "-serial", "stdio", "-monitor", "none", "-no-reboot", "-nodefaults",
        "-kernel", str(kernel), "-initrd", str(initrd), "-append", append,
    ]  # fmt: skip
    start = time.monotonic()
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    assert process.stdout is not None
    output = b""
    try:
        os.set_blocking(process.stdout.fileno(), False)
        while time.monotonic() - start < timeout and process.poll() is None:
            ready, _, _ = select.select([process.stdout], [], [], 0.05)
            if ready:
                output += process.stdout.read() or b""
            found = _MARKER_LINE.search(output)
            if found:
                return time.monotonic() - start, found.group(1).decode()
    finally:
        process.kill()
        process.wait()
    tail = output.decode(errors="replace")[-400:]
    raise RuntimeError(f"QEMU {' '.join(machine)} did not reach the marker:\n{tail}")


def measure(runs: int = 3, flavour: str = "cloud") -> dict[str, float | str]:
    qemu = find_qemu()
    if qemu is None:
        return {"qemu": f"{QEMU} is not installed (apt-get install qemu-system-x86)"}
    try:
        assets = ensure(flavour)
    except AssetsUnavailable as exc:
        return {"qemu": f"no kernel: {exc}"}
    results: dict[str, float | str] = {"kernel": assets.kernel.package}
    for name, (machine, kernel, append) in machines(assets).items():
        boots = [
            Boot(name, *boot_to_marker(qemu, machine, kernel, assets.initramfs, append))
            for _ in range(runs)
        ]
        median = statistics.median(b.seconds for b in boots)
        print(f"  QEMU TCG -M {name:8} to the /init marker: {median:5.2f} s (median of {runs};"
              f" guest uptime {boots[0].guest_uptime} s)")  # fmt: skip
        results[f"qemu_tcg_{name}_to_marker_s"] = median
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.qemu_boot")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--flavour", choices=("cloud", "generic"), default="cloud")
    args = parser.parse_args(argv)
    print(json.dumps(measure(args.runs, args.flavour), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
