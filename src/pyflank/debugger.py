"""``python -m pyflank.debugger``: run a guest on the software CPU under the gdb stub.

    python -m pyflank.debugger [--port 1234] [--no-wait] [--handler EXT] PROGRAM.s
    python -m pyflank.debugger --elf PROGRAM.elf
    python -m pyflank.debugger --kernel bzImage [--initrd FILE] [--append "..."]

then, in another terminal, ``gdb -ex 'target remote :1234'``.  The guest waits for gdb
before its first instruction (``--no-wait``: it runs, and gdb attaching interrupts it);
``monitor help`` in gdb lists the stub's own commands.  ``EXT`` names a handler as
``bfm`` does (``file.py``, ``file.py:Class``, ``pkg.mod:Class``).  What ``bfm run --gdb
PORT`` does is the same: ``Vm(..., gdb=PORT)`` and ``run(timeout=None)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pyflank.cli.extension import ExtensionError, load_handler
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.vmm import Vm


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m pyflank.debugger", description=__doc__)
    parser.add_argument("program", nargs="?", help="an assembly program (Intel syntax)")
    parser.add_argument("--elf", help="an ELF64 executable instead")
    parser.add_argument("--kernel", help="a Linux bzImage instead")
    parser.add_argument("--initrd")
    parser.add_argument("--append", default="console=ttyS0")
    parser.add_argument("--port", default="1234", help="PORT or HOST:PORT (loopback only)")
    parser.add_argument("--no-wait", action="store_true", help="run at once")
    parser.add_argument("--handler", help="file.py[:Class] or module:Class")
    parser.add_argument("--vcpus", type=int, default=1)
    return parser


def _vm(args: argparse.Namespace) -> Vm:
    handler = load_handler(args.handler) if args.handler else ExitHandlerIntelX64
    gdb = int(args.port) if args.port.isdigit() else args.port
    if args.kernel:
        return Vm.boot_linux(args.kernel, initrd=args.initrd, append=args.append, handler=handler,
                             console=_echo, gdb=gdb, gdb_wait=not args.no_wait)  # fmt: skip
    vm = Vm(handler, vcpus=args.vcpus, gdb=gdb, gdb_wait=not args.no_wait, console=_echo)
    if args.elf:
        vm.load_elf(args.elf)
    elif args.program:
        vm.load_asm(Path(args.program).read_text())
    else:
        raise ValueError("name a program, --elf or --kernel")
    return vm


def _echo(byte: int) -> None:
    sys.stdout.buffer.write(bytes((byte,)))
    sys.stdout.buffer.flush()


def main(argv: list[str] | None = None) -> int:
    """Run the guest the arguments name under the stub; 0, or 2 for bad arguments."""
    args = _parser().parse_args(argv)
    try:
        vm = _vm(args)
    except (OSError, ValueError, ExtensionError) as exc:
        print(f"pyflank.debugger: {exc}", file=sys.stderr)
        return 2
    assert vm.gdb is not None
    print(f"gdb stub on {vm.gdb.address}: gdb -ex 'target remote {vm.gdb.address}'",
          file=sys.stderr, flush=True)  # fmt: skip
    for result in vm.run(timeout=None):
        print(f"vCPU {result.vcpuid}: {result.reason.value} {result.message}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
