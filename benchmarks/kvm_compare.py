"""Exit round trips per second on KVM: pyflank's backend against a minimal C VMM.

Both run the same guest loop on the same KVM: ``vmcall`` (a doorbell VMCALL
answered with VERSIONS by the seed's handler), ``io-exit`` (an OUT that exits
to the handler because the VMCS asks for I/O exiting) and ``io-device`` (an
OUT that goes to a platform device without a handler).  The C runner
(``benchmarks/kvm_runner.c``) is compiled here with the system ``cc``.

``python -m benchmarks.kvm_compare [COUNT]`` prints the table.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import keystone

from pyflank import native
from pyflank.abi import (
    DEFAULT_DOORBELL_PORT,
    VMCALL_MAGIC_NUMBER,
    HypervisorFeatures,
    hypervisor_leaves,
)
from pyflank.backends.kvm.device import KvmSystem
from pyflank.backends.kvm.guest_state import sregs_to_vmcs
from pyflank.backends.kvm.longmode import FlatLayout
from pyflank.backends.kvm.machine import KvmMachine
from pyflank.backends.kvm.policy import unsupported
from pyflank.backends.kvm.ports import NoDevices
from pyflank.backends.kvm.tiny import TinyGuest
from pyflank.backends.kvm.vcpu import KvmVcpu
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.checks.valid_state import default_controls
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Primary
from pyflank.memory import GuestPhysicalMemory
from pyflank.processor import EntryPlan, ExitRecord, Stop, StopReason, VmxProcessor
from pyflank.processor.cpuid_table import sample_cpuid
from pyflank.vmm import run_loop

RUNNER_SOURCE = Path(__file__).with_name("kvm_runner.c")
IO_PORT = 0x80
KINDS = ("vmcall", "io-exit", "io-device")


def guest_source(kind: str, count: int) -> str:
    """The loop: ``count`` OUTs, four instructions per iteration, then HLT."""
    port = DEFAULT_DOORBELL_PORT if kind == "vmcall" else IO_PORT
    return f"""
        mov rbp, {count}
        mov rax, 1
        mov rdi, {VMCALL_MAGIC_NUMBER:#x}
        xor ecx, ecx
    again:
        mov dx, {port:#x}
        out dx, al
        dec rbp
        jnz again
        hlt
    """


@dataclass(frozen=True)
class BenchResult:
    who: str
    kind: str
    exits: int
    seconds: float

    python_us: float = 0.0  # per exit in the processor and handler, where it was timed

    @property
    def per_second(self) -> float:
        return self.exits / self.seconds if self.seconds else 0.0

    @property
    def microseconds(self) -> float:
        return 1e6 * self.seconds / self.exits if self.exits else 0.0


class IoExitHandler(ExitHandlerIntelX64):
    """The seed's handler plus the least an I/O exit needs: step over the instruction."""


    def handle_io_instruction(self) -> None:
        self.advance_rip()


def _code(kind: str, count: int, layout: FlatLayout) -> bytes:
    encoding, _ = keystone.Ks(keystone.KS_ARCH_X86, keystone.KS_MODE_64).asm(
        guest_source(kind, count), layout.code
    )
    return bytes(encoding or b"")


class TimedProcessor(VmxProcessor):
    """The processor, timing its exits (``exit``: the record stored, ``dispatch()``, the
    entry planned): the Python part of each exit, for a run of its own."""

    spent_ns = 0

    def exit(self, record: ExitRecord) -> EntryPlan | Stop:
        start = time.perf_counter_ns()
        try:
            return super().exit(record)
        finally:
            self.spent_ns += time.perf_counter_ns() - start


def bench_pyflank(
    kind: str, count: int, processor_type: type[VmxProcessor] = VmxProcessor
) -> BenchResult:
    layout = FlatLayout()
    system = KvmSystem()
    try:
        # A TinyGuest builds the long-mode image and state; the VMCS takes them from there.
        with TinyGuest(system, _code(kind, count, layout), layout=layout) as tiny:
            sregs, image = tiny.vcpu.get_sregs(), tiny.memory.read(0, layout.ram)
        handler = IoExitHandler() if kind == "io-exit" else ExitHandlerIntelX64()
        vmcs = handler.m_vmcs
        sregs_to_vmcs(sregs, vmcs)
        vmcs.processor_write(f.GUEST_RFLAGS, 2)
        default_controls(vmcs, handler.m_cpu)
        if kind == "io-exit":
            primary = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
            vmcs.write(primary, vmcs.read(primary) | Primary.UNCONDITIONAL_IO_EXITING)
        handler.m_state_save.rip, handler.m_state_save.rsp = layout.code, layout.stack_top
        handler.hypervisor_leaves = hypervisor_leaves(
            HypervisorFeatures.IO_PORT_DOORBELL, DEFAULT_DOORBELL_PORT
        )
        with GuestPhysicalMemory(layout.ram) as memory:
            memory.write(0, image)
            machine = KvmMachine(memory, system=system)
            vcpu = KvmVcpu(machine, 0, NoDevices())
            try:
                handler.set_cpu(vcpu.cpu)
                vcpu.set_cpuid(sample_cpuid(handler, vcpu.cpuid_leaves()))
                processor = processor_type(handler, unsupported)
                start = time.perf_counter()
                stop = run_loop(vcpu, processor)
                seconds = time.perf_counter() - start
            finally:
                vcpu.close()
                machine.close()
        if stop.reason is not StopReason.GUEST_HLT:
            raise RuntimeError(f"benchmark guest stopped early: {stop.message}")
        exits = processor.exits if kind != "io-device" else count
        spent = processor.spent_ns if isinstance(processor, TimedProcessor) else 0
        return BenchResult("pyflank", kind, exits, seconds, spent / 1e3 / exits)
    finally:
        system.close()


def build_runner(workdir: Path, cc: str = "cc") -> Path:
    binary = workdir / "kvm_runner"
    subprocess.run([cc, "-O2", "-o", str(binary), str(RUNNER_SOURCE)], check=True)
    return binary


def bench_c(kind: str, count: int, runner: Path, workdir: Path) -> BenchResult:
    layout = FlatLayout()
    system = KvmSystem()
    try:
        with TinyGuest(system, _code(kind, count, layout), layout=layout) as tiny:
            (workdir / "image.bin").write_bytes(tiny.memory.read(0, layout.ram))
            state = bytes(tiny.vcpu.get_sregs()) + bytes(tiny.vcpu.get_regs())
            (workdir / "state.bin").write_bytes(state)
    finally:
        system.close()
    mode, port = ("vmcall", DEFAULT_DOORBELL_PORT) if kind == "vmcall" else ("io", IO_PORT)
    out = subprocess.run(
        [str(runner), str(workdir / "image.bin"), str(workdir / "state.bin"), mode, str(port)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    words = out.stdout.split()
    return BenchResult("C", kind, int(words[1]), float(words[3]))


@dataclass(frozen=True)
class Comparison:
    """One kind of exit: pyflank (the default path), its pure-Python path, the C runner."""

    pyflank: BenchResult
    pure: BenchResult
    c: BenchResult

    def ratio(self, result: BenchResult) -> float:
        """The C runner's rate over ``result``'s (the issue's goals are these)."""
        return self.c.per_second / result.per_second if result.per_second else float("inf")


def _best(results: list[BenchResult]) -> BenchResult:
    return min(results, key=lambda r: r.seconds)


def compare(count: int = 20_000, cc: str = "cc", repeat: int = 3) -> list[Comparison]:
    """Each kind of exit three ways, best of ``repeat`` interleaved runs."""
    with tempfile.TemporaryDirectory(prefix="pyflank-kvm-bench-") as tmp:
        workdir = Path(tmp)
        runner = build_runner(workdir, cc)
        found = []
        for kind in KINDS:
            runs = []
            for _ in range(repeat):
                with native.disabled():
                    pure = bench_pyflank(kind, count)
                c = bench_c(kind, count, runner, workdir)
                runs.append((bench_pyflank(kind, count), pure, c))
            best = [_best(list(column)) for column in zip(*runs, strict=True)]
            timed = bench_pyflank(kind, count, TimedProcessor)  # a run of its own
            pyflank = BenchResult(**{**vars(best[0]), "python_us": timed.python_us})
            found.append(Comparison(pyflank, best[1], best[2]))
        return found


def report(comparisons: list[Comparison]) -> str:
    lines = [
        f"{'exit':10} {'pyflank/s':>10} {'pure-Py/s':>10} {'C/s':>10} {'pyflank us':>11} "
        f"{'C us':>7} {'ratio':>6} {'pure-Py ratio':>14}"
    ]
    for row in comparisons:
        py, c = row.pyflank, row.c
        lines.append(
            f"{py.kind:10} {py.per_second:10.0f} {row.pure.per_second:10.0f} "
            f"{c.per_second:10.0f} {py.microseconds:11.1f} {c.microseconds:7.1f} "
            f"{row.ratio(py):6.2f} {row.ratio(row.pure):14.2f}"
        )
    lines.append("where pyflank's time goes (us per exit): the C runner's KVM_RUN round trip, the "
                 "processor and handler in Python (a timed run), the rest (exit decoding, entry)")
    for row in comparisons:
        py, c = row.pyflank, row.c
        rest = py.microseconds - c.microseconds - py.python_us
        lines.append(f"  {py.kind:10} {c.microseconds:5.1f} + {py.python_us:5.2f} + {rest:5.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    count = int(args[0]) if args else 20_000
    print(report(compare(count)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
