"""``bfm run PROGRAM``: a guest program of the user's, in the foreground, under a handler.

The program is assembly (``.s``, with the guest SDK's ``.include "pyflank.inc"``), an
ELF64 executable, or a flat binary loaded at the load address.  COM1 goes to stdout as
the guest writes it; when every vCPU has stopped (or Ctrl-C), a summary of how each one
stopped goes to stderr, and the exit status says whether they all stopped cleanly.

What the guest is made of is a list of ``ImageLoader``s: the program is one.  A Linux
kernel (``--kernel``, with ``--initrd`` and ``--append`` as QEMU takes them) builds its
own PC instead (``Vm.boot_linux``); standard input is typed into its console
(``keyboard``), its exit statistics follow the summary, and a power-off is a clean end.
``--gdb PORT`` runs either under the gdb stub (``Vm(gdb=PORT)``, the software CPU): its
address goes to stderr (even with ``-q``: it is what the user connects to), and the guest
waits for gdb before its first instruction unless ``--gdb-no-wait``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from pyflank.backends.base import BackendUnavailable, StopReason
from pyflank.cli.backend_choice import BackendChoice, choose_backend
from pyflank.cli.errors import CommandError, UsageError
from pyflank.cli.extension import load_handler
from pyflank.cli.files import read_input
from pyflank.cli.keyboard import Keyboard
from pyflank.cli.runtime import RuntimeDir
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.observe import ExitStatistics
from pyflank.platform.assemble import SDK_INCLUDE_DIRS, AssemblyError, assemble
from pyflank.platform.linux.setup_header import BootProtocolError
from pyflank.platform.loader import ELF_MAGIC, LoadError
from pyflank.vmm import DEFAULT_MEMORY_SIZE, LINUX_MEMORY_SIZE, VcpuResult, Vm

ASSEMBLY_SUFFIXES = (".s", ".S", ".asm")
# Stops that are a program's own end; any other is a failure (exit status 1).
CLEAN_STOPS = frozenset(
    {StopReason.GUEST_HLT, StopReason.PROMOTED, StopReason.HALTED, StopReason.POWER_OFF}
)
EXIT_INTERRUPTED = 130  # as a shell reports a command ended by SIGINT


@dataclass(frozen=True)
class RunRequest:
    program: Path | None = None  # or a kernel
    program_format: str = "auto"  # auto | asm | elf | flat
    kernel: Path | None = None
    initrd: Path | None = None
    append: str = "console=ttyS0"
    backend: str = "auto"
    vcpus: int = 1
    memory: int = 0  # bytes; 0: 16 MiB for a program, 256 MiB for a kernel
    extension: str | None = None  # None: the seed's handler
    timeout: float | None = None
    gdb: str | None = None  # the gdb stub's address: the guest runs under gdb
    gdb_wait: bool = True  # the guest waits for gdb before its first instruction
    verbose: bool = False
    quiet: bool = False


ImageLoader = Callable[[Vm, RunRequest], str]  # loads a part of the guest; says what


def program_kind(path: Path, data: bytes, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    if data.startswith(ELF_MAGIC):
        return "elf"
    return "asm" if path.suffix in ASSEMBLY_SUFFIXES else "flat"


def load_program(vm: Vm, request: RunRequest) -> str:
    path = request.program
    assert path is not None
    data = read_input(path, vm.memory.size)
    kind = program_kind(path, data, request.program_format)
    try:
        if kind == "asm":
            try:
                source = data.decode()
            except UnicodeDecodeError as exc:
                raise CommandError(f"{path}: not UTF-8 text (byte {exc.start})") from None
            address = vm.layout.load_address
            vm.load_flat(assemble(source, address, (path.parent, *SDK_INCLUDE_DIRS)), address)
        elif kind == "elf":
            vm.load_elf(path)  # its errors name the file
        else:
            if not data:
                raise CommandError(f"{path}: the program is empty")
            vm.load_flat(data)
    except AssemblyError as exc:
        raise CommandError(f"{path}: {exc}") from None
    except LoadError as exc:
        raise CommandError(str(exc) if kind == "elf" else f"{path}: {exc}") from None
    return f"{path} ({kind})"


LOADERS: tuple[ImageLoader, ...] = (load_program,)


class Console:
    """COM1 to a binary stream as the guest writes it; a closed reader is not an error."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.broken = False

    def __call__(self, byte: int) -> None:
        if self.broken:
            return
        try:
            self.stream.write(bytes((byte,)))
            self.stream.flush()
        except (BrokenPipeError, ValueError, OSError):
            self.broken = True


def _handler(spec: str | None) -> type[ExitHandlerIntelX64]:
    return ExitHandlerIntelX64 if spec is None else load_handler(spec)


def _summary(result: VcpuResult) -> str:
    line = f"vcpu {result.vcpuid}: {result.reason.value}"
    if result.message:
        line += f": {result.message}"
    return line + f" ({result.exits} exits, rip {result.state.rip:#x})"


def _linux_vm(
    request: RunRequest, handler: type[ExitHandlerIntelX64], backend: str, memory: int
) -> tuple[Vm, str, ExitStatistics]:
    assert request.kernel is not None
    if request.vcpus != 1:
        raise UsageError("--kernel boots one vCPU (the platform has no local APIC to start more)")
    kernel = read_input(request.kernel, memory, "the guest's memory")
    initrd = None if request.initrd is None else read_input(request.initrd, memory)
    statistics = ExitStatistics()
    try:
        vm = Vm.boot_linux(
            kernel, initrd=initrd, append=request.append, handler=handler,
            memory_size=memory, backend=backend, observers=[statistics],
            gdb=_gdb_port(request), gdb_wait=request.gdb_wait,
        )  # fmt: skip
    except BootProtocolError as exc:
        raise CommandError(f"{request.kernel}: {exc}") from None
    parts = f"{request.kernel} (Linux)" + (f", {request.initrd} (initrd)" if initrd else "")
    return vm, parts, statistics


def _gdb_port(request: RunRequest) -> int | str | None:
    spec = None if request.gdb is None else request.gdb.strip()
    return int(spec) if spec is not None and spec.isdigit() else spec


def _open_vm(request: RunRequest, handler: type[ExitHandlerIntelX64], backend: str,
             memory: int) -> tuple[Vm, str | None, ExitStatistics | None]:  # fmt: skip
    """The VM (and for a kernel, what was loaded and its statistics), its errors in bfm's
    words."""
    try:
        if request.kernel is not None:
            return _linux_vm(request, handler, backend, memory)
        vm = Vm(handler, vcpus=request.vcpus, backend=backend, memory_size=memory,
                gdb=_gdb_port(request), gdb_wait=request.gdb_wait)  # fmt: skip
        return vm, None, None
    except BackendUnavailable as exc:
        raise CommandError(str(exc)) from None
    except (ValueError, OSError) as exc:
        if str(exc).startswith("gdb stub"):  # the stub's own words name the address
            raise CommandError(f"--gdb {request.gdb}: {exc}") from None
        raise CommandError(f"cannot build the VM: {exc}") from None


def run_program(
    request: RunRequest,
    console: BinaryIO,
    report: TextIO,
    cache: RuntimeDir | None = None,
    keyboard: int | None = None,
) -> int:
    """Run the guest; the exit status (0: every vCPU stopped cleanly).  ``cache`` keeps
    the ``--backend auto`` decision between runs; ``keyboard``: a file descriptor whose
    input a kernel's console receives."""
    if request.vcpus < 1:
        raise UsageError("--vcpus must be at least 1")
    linux = request.kernel is not None
    memory = request.memory or (LINUX_MEMORY_SIZE if linux else DEFAULT_MEMORY_SIZE)
    handler = _handler(request.extension)
    if request.program is not None:
        read_input(request.program, memory)  # a missing or odd file fails first
    if request.gdb is not None:  # the stub runs on the software CPU (auto means it)
        if request.backend == "kvm":
            raise UsageError("--gdb needs the software CPU (--backend emu), not kvm")
        choice = BackendChoice(
            "emu",
            ""
            if request.backend == "emu"
            else "backend auto: chose emu: the gdb stub runs on the software CPU",
        )
    else:
        choice = choose_backend(request.backend, cache)

    def say(text: str) -> None:
        if not request.quiet:
            print(text, file=report)

    vm, loaded, statistics = _open_vm(request, handler, choice.name, memory)
    with vm:
        if loaded is None:
            loaded = ", ".join(loader(vm, request) for loader in LOADERS)
        if choice.why:
            say(choice.why)
        if vm.gdb is not None:
            waits = "waits for gdb" if request.gdb_wait else "runs; gdb attaching stops it"
            print(f"bfm run: gdb stub on {vm.gdb.address} (the guest {waits}): "
                  f"gdb -ex 'target remote {vm.gdb.address}'", file=report, flush=True)  # fmt: skip
        vm.serial.sink = Console(console)
        started = time.monotonic()
        interrupted = False
        try:
            if linux and keyboard is not None:
                with Keyboard(keyboard, vm.serial.feed):
                    results = vm.run(timeout=request.timeout)
            else:
                results = vm.run(timeout=request.timeout)
        except KeyboardInterrupt:  # the vCPUs are stopped: report what they did
            interrupted = True
            results = [v.result for v in vm.vcpus if v.result is not None]
        except (Exception, SystemExit) as exc:  # noqa: BLE001 - the VM could not start
            raise CommandError(f"the VM could not run: {type(exc).__name__}: {exc}") from None
        elapsed = time.monotonic() - started
    vcpus = f"{request.vcpus} vCPU{'s' if request.vcpus > 1 else ''}"
    say(f"bfm run: {loaded} on {choice.name}, {vcpus}, {memory >> 20} MiB: "
        f"{'interrupted after' if interrupted else 'ran'} {elapsed:.2f} s")  # fmt: skip
    for result in results:
        say(_summary(result))
        if request.verbose and result.debug_ring:
            say(f"vcpu {result.vcpuid} debug ring:\n{result.debug_ring.rstrip()}")
    if statistics is not None:
        say(statistics.table())
    if interrupted:
        return EXIT_INTERRUPTED
    failed = [r for r in results if r.reason not in CLEAN_STOPS]
    if failed and request.quiet:  # -q prints only errors: a vCPU that failed is one
        print(f"bfm run: {_summary(failed[0])}", file=report)
    return 1 if failed else 0
