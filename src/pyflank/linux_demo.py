"""``make run``'s Linux part: Debian's kernel boots to a busybox /init under the seed's
exit handler on the software CPU, the console live, the exit summary at the end.

    python -m pyflank.linux_demo [--kernel cloud|generic] [--shell]

The kernel and busybox come from Debian's packages (``platform.linux.assets``: apt-get
download, cached); ``AssetsUnavailable`` says why where they cannot be had.
"""

from __future__ import annotations

import argparse
import sys
import time

from pyflank.backends.base import StopReason
from pyflank.observe import ExitStatistics
from pyflank.platform.linux import assets
from pyflank.platform.linux.initramfs import MARKER, POWEROFF_FLAG
from pyflank.vmm import Vm

_A_DAY = 24 * 3600.0


def _console(byte: int) -> None:
    sys.stdout.buffer.write(bytes((byte,)))
    if byte == 0x0A:
        sys.stdout.buffer.flush()


def boot(flavour: str = "cloud", *, shell: bool = False) -> int:
    """Boot to the marker (and power off), or to an interactive shell; 0 when it ended
    cleanly.  ``AssetsUnavailable`` where the kernel cannot be obtained."""
    found = assets.ensure(flavour)
    print(f"booting {found.kernel.package} {found.kernel.version} with busybox "
          f"{found.busybox_version} on the software CPU; COM1 is this terminal:")  # fmt: skip
    sys.stdout.flush()
    statistics = ExitStatistics()
    append = "console=ttyS0" + ("" if shell else f" {POWEROFF_FLAG}")
    vm = Vm.boot_linux(
        found.kernel.bzimage, initrd=found.initramfs, append=append,
        console=_console, observers=[statistics],
    )  # fmt: skip
    if shell:
        _type_into(vm)
    start = time.perf_counter()
    [result] = vm.run(timeout=_A_DAY if shell else 300.0)
    elapsed = time.perf_counter() - start
    sys.stdout.buffer.flush()
    print(f"\n== {result.reason.value} after {elapsed:.1f} s: {result.message}")
    print(statistics.table())
    marked = MARKER.encode() in vm.serial_output
    return 0 if result.reason is StopReason.POWER_OFF and marked else 1


def _type_into(vm: Vm) -> None:
    """Forward this terminal's lines to COM1, from a thread of its own."""
    import threading  # noqa: PLC0415 - only for the interactive shell

    def forward() -> None:
        for line in sys.stdin.buffer:
            vm.serial.feed(line)

    threading.Thread(target=forward, daemon=True, name="console").start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pyflank.linux_demo")
    parser.add_argument("--kernel", choices=("cloud", "generic"), default="cloud")
    parser.add_argument("--shell", action="store_true", help="stay at the shell (exit ends)")
    args = parser.parse_args(argv)
    try:
        return boot(args.kernel, shell=args.shell)
    except assets.AssetsUnavailable as exc:
        print(f"no Linux kernel here: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
