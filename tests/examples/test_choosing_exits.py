"""Extensions choose their exits in ``setup`` (on every backend), and count what they get."""

from __future__ import annotations

import pytest
from test_examples import example

from counting import CountingExits
from pyflank.backends.base import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.vmm import Vm


def test_hlt_and_io_exits_chosen_in_setup(backend: str) -> None:
    vm = Vm(example("hlt_and_io").HltAndIo, backend=backend)
    vm.load_asm("in al, 0x60\nadd al, 1\nout 0x80, al\nhlt")
    [result] = vm.run(timeout=10)
    assert result.reason is StopReason.HALTED, result.message
    assert "OUT 0x80 <- 0x2b" in result.debug_ring
    assert "the guest executed HLT" in result.debug_ring
    assert result.exits == 3


class AsksForRdtscExits(ExitHandlerIntelX64):
    def setup(self, vmcs: Vmcs) -> None:
        primary = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        vmcs.write(primary, vmcs.read(primary) | Proc.RDTSC_EXITING | Proc.MWAIT_EXITING)


def test_a_control_the_backend_cannot_honour_is_refused_at_setup(backend: str) -> None:
    with pytest.raises(ValueError, match=rf"AsksForRdtscExits.setup asks for .*{backend} backend"):
        Vm(AsksForRdtscExits, backend=backend)


COUNTED = """
    .include "pyflank.inc"
    PYFLANK_INIT
    mov r15, 3
again:
    xor eax, eax
    cpuid
    mov ecx, 0xC0000080
    rdmsr
    VMCALL_VERSIONS 0
    dec r15
    jnz again
    hlt
    PYFLANK_RUNTIME
"""


def test_an_exit_counting_handler_counts_the_same_on_every_backend(backend: str) -> None:
    vm = Vm(CountingExits, backend=backend)
    vm.load_asm(COUNTED)
    [result] = vm.run(timeout=10)
    assert result.reason is StopReason.GUEST_HLT, result.message
    counts = vm.vcpus[0].handler.counts  # type: ignore[attr-defined]
    # CPUID never exits on KVM (gap 'cpuid'): its answers are sampled without handle_exit,
    # so there it counts none, never the samples.
    expected = {ExitReason.RDMSR: 3, ExitReason.VMCALL: 3}
    expected[ExitReason.CPUID] = 3 + 1 if backend == "emu" else 0  # + PYFLANK_INIT's
    assert {r: counts.get(r, 0) for r in expected} == expected
