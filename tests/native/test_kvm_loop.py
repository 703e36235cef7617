"""The native KVM run loop: doorbell vmcalls, I/O exits and device OUTs go through it and
leave what the Python loop leaves."""

from __future__ import annotations

import pytest

from kvm_support import kvm_marks
from native_support import RunImage, accelerated, differences, pure_python
from pyflank import native
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.testing import versions_loop
from pyflank.vmm import VcpuResult, Vm

pytestmark = [
    *kvm_marks(),
    pytest.mark.skipif(not accelerated(), reason=native.status()),
]
CALLS = 300


class StepOverIo(ExitHandlerIntelX64):
    def handle_io_instruction(self) -> None:
        self.advance_rip()


def io_exiting(vmcs: Vmcs) -> None:
    primary = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
    vmcs.write(primary, vmcs.read(primary) | Proc.UNCONDITIONAL_IO_EXITING)


OUTS = f"""
    mov rcx, {CALLS}
    mov dx, 0x80
again:
    mov al, cl
    out dx, al
    dec rcx
    jnz again
    hlt
"""


def run(
    source: str, handler: type[ExitHandlerIntelX64], io_exits: bool
) -> tuple[Vm, list[VcpuResult]]:
    vm = Vm(handler, backend="kvm", trace=True)
    vm.load_asm(source)
    if io_exits:
        vm.configure(io_exiting)
    return vm, vm.run(timeout=60)


@pytest.mark.parametrize(
    ("source", "handler", "io_exits", "exits"),
    [
        (versions_loop(CALLS), ExitHandlerIntelX64, False, CALLS),  # doorbell vmcalls
        (OUTS, StepOverIo, True, CALLS),  # I/O-instruction exits
        (OUTS, ExitHandlerIntelX64, False, 0),  # OUTs the platform's bus takes
    ],
    ids=["doorbell", "io-exit", "device"],
)
def test_the_native_loop_takes_the_hot_exits(
    source: str, handler: type[ExitHandlerIntelX64], io_exits: bool, exits: int
) -> None:
    with pure_python():
        reference = RunImage.of(*run(source, handler, io_exits))
    vm, results = run(source, handler, io_exits)
    assert differences(reference, RunImage.of(vm, results)) == []
    assert results[0].exits == exits
    loop = getattr(vm.vcpus[0].engine, "native", None)
    assert loop is not None, "KVM without KVM_CAP_SYNC_REGS runs the Python loop"
    taken = loop.counts
    if exits:
        assert taken["native"] == exits
    else:
        assert taken["device"] == CALLS
