"""A guest whose exits are known on every backend, and handlers to run it under.

vCPU n runs ``n + 1`` rounds of three RDMSRs of IA32_PAT (a VMCS-backed MSR: every backend
exits on it, the seed answers it from the VMCS) and two OUTs to port 0x80 (they exit:
``PortExits`` asks for I/O exiting), then HLT with interrupts off (no exit).
"""

from __future__ import annotations

import pytest

from counting import CountingExits
from pyflank.backends.kvm.policy import GAPS
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.controls import PrimaryProcessorBasedControls as Proc
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.intel_x64.vmcs import Vmcs
from pyflank.vmm import Vm

LOAD = 0x100000
ROUNDS = """
    lea r14, [rdi + 1]
again:
    mov ecx, 0x277
    rdmsr
    rdmsr
    rdmsr
    out 0x80, al
    out 0x80, al
    dec r14
    jnz again
    hlt
"""
# Where each instruction of ROUNDS is (every encoding is fixed: nothing is relaxed).
FIRST_RDMSR = LOAD + 4 + 5  # lea r14, [rdi + 1] (4 bytes), mov ecx, imm32 (5 bytes)
FIRST_OUT = FIRST_RDMSR + 3 * 2
INSTRUCTIONS_PER_ROUND = 8  # mov, 3 rdmsr, 2 out, dec, jnz


def rdmsrs(vcpu: int) -> int:
    return 3 * (vcpu + 1)


def outs(vcpu: int) -> int:
    return 2 * (vcpu + 1)


class PortExits(ExitHandlerIntelX64):
    """The seed, plus port I/O exits that the handler steps over."""

    def setup(self, vmcs: Vmcs) -> None:
        primary = f.PRIMARY_PROCESSOR_BASED_VM_EXECUTION_CONTROLS
        vmcs.write(primary, vmcs.read(primary) | Proc.UNCONDITIONAL_IO_EXITING)

    def handle_io_instruction(self) -> None:
        self.advance_rip()


class CountingPortExits(CountingExits, PortExits):
    """A user's handler that counts its own exits (observers must not change it)."""


EXPECTED = {ExitReason.RDMSR: rdmsrs, ExitReason.IO_INSTRUCTION: outs}


def rounds_vm(backend: str, handler: type[ExitHandlerIntelX64] = PortExits, **kwargs: object) -> Vm:
    vm = Vm(handler, backend=backend, **kwargs)  # type: ignore[arg-type]
    vm.load_asm(ROUNDS)
    return vm


def kvm_gap(backend: str, gap: str) -> None:
    """Skip on KVM: the test needs what ``GAPS[gap]`` says KVM cannot do."""
    if backend == "kvm":
        pytest.skip(f"KVM gap '{gap}': {GAPS[gap]}")
