"""Observe a run: statistics, a replayable trace and a picture, around an unchanged handler.

    python examples/observe_run.py [OUT_DIR]     (``make picture`` writes docs/exits.png)

The guest goes through phases -- it probes CPUID leaves, reads and writes an MSR, talks to
a port, asks the VMM for its version -- so the exits over the run have a shape.
"""

import sys
from pathlib import Path

from pyflank import observe
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.observe import ExitStatistics, ExitTrace, replay
from pyflank.vmm import Vm

GUEST = """
    .include "pyflank.inc"
    PYFLANK_INIT
    mov r15, 3
phases:
    xor esi, esi
probe:                      # CPUID leaves 0..0x1f
    mov eax, esi
    xor ecx, ecx
    cpuid
    inc esi
    cmp esi, 0x20
    jb probe
    mov r14, 150
msrs:                       # IA32_PAT, read and written back
    mov ecx, 0x277
    rdmsr
    wrmsr
    dec r14
    jnz msrs
    mov r14, 200
ports:                      # a device at port 0x80 (I/O exits)
    in al, 0x80
    out 0x80, al
    dec r14
    jnz ports
    mov r14, 40
calls:
    VMCALL_VERSIONS 1
    dec r14
    jnz calls
    dec r15
    jnz phases
    hlt
    PYFLANK_RUNTIME
"""


class PortDevice(ExitHandlerIntelX64):
    """The user's handler: port 0x80 is a tiny device, HLT ends the run."""

    def setup(self, vmcs: Vmcs) -> None:
        primary = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        vmcs.write(primary, vmcs.read(primary) | Proc.HLT_EXITING | Proc.UNCONDITIONAL_IO_EXITING)

    def handle_io_instruction(self) -> None:
        self.m_state_save.rax = 0x2A
        self.advance_rip()

    def handle_hlt(self) -> None:
        self.halt()


def main(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    stats, trace = ExitStatistics(), ExitTrace(out / "exits.jsonl")
    vm = Vm(PortDevice, observers=[stats, trace])
    vm.load_asm(GUEST)
    [result] = vm.run(timeout=30)
    print(f"{result.reason.value}: {result.exits} exits\n{stats.table()}")
    print(replay(out / "exits.jsonl", PortDevice).describe())
    try:
        plot = observe.plot_exits  # needs the plot extra
    except ImportError as missing:
        print(f"no picture: {missing}")
        return
    print(plot(out / "exits.jsonl", out / "exits.png", title="VM exits of a guest in phases"))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("build/observe"))
