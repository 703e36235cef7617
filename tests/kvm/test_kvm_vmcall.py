"""VMCALL on KVM through the I/O-port doorbell that CPUID 0x40000001 advertises."""

from __future__ import annotations

import pytest
from kvm_guest_helpers import Guest

import pyflank
from kvm_support import kvm_marks
from pyflank.abi import (
    DEFAULT_DOORBELL_PORT,
    VMCALL_MAGIC_NUMBER,
    VMCALL_VERSION,
    HypervisorFeatures,
)
from pyflank.backends.kvm import StopReason
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.exit_reasons import ExitReason

pytestmark = kvm_marks()

# The doorbell ABI: the vmcall registers as for VMCALL, except that RDX's value travels
# in RDI (DX holds the port); the reply comes back in the usual registers (RDX = status).
DISCOVER = """
    mov eax, 0x40000001
    xor ecx, ecx
    cpuid
    mov r15d, eax
    mov r14d, ebx
"""
VERSIONS = f"""
    mov rax, 1
    mov rdi, {VMCALL_MAGIC_NUMBER:#x}
    xor ecx, ecx
    mov dx, r14w
    out dx, al
"""


def test_cpuid_advertises_the_doorbell() -> None:
    with Guest(DISCOVER + "hlt") as guest:
        assert guest.run() is StopReason.GUEST_HLT
        state = guest.handler.m_state_save
        assert state.r15 & HypervisorFeatures.IO_PORT_DOORBELL
        assert not state.r15 & HypervisorFeatures.VMCALL_INSTRUCTION
        assert state.r14 == DEFAULT_DOORBELL_PORT


class Recorder(ExitHandlerIntelX64):
    def __init__(self) -> None:
        super().__init__()
        self.exits: list[tuple[int, int, int]] = []

    def handle_vmcall(self) -> None:
        vmcs = self.m_vmcs
        self.exits.append(
            (
                vmcs.read(f.VM_EXIT_REASON),
                vmcs.read(f.GUEST_RIP),
                vmcs.read(f.VM_EXIT_INSTRUCTION_LENGTH),
            )
        )
        super().handle_vmcall()


def test_doorbell_is_a_vmcall_exit_answering_versions() -> None:
    handler = Recorder()
    with Guest(DISCOVER + VERSIONS + "hlt", handler) as guest:
        assert guest.run() is StopReason.GUEST_HLT
        state = handler.m_state_save
        assert state.rdx == 0, "BF_VMCALL_SUCCESS"
        assert (state.rbx, state.rsi, state.r08) == (VMCALL_VERSION, 0, 0)
        assert state.rdi == VMCALL_MAGIC_NUMBER
        [(reason, rip, length)] = handler.exits
        assert reason == ExitReason.VMCALL
        assert length == 1  # out dx, al
        assert guest.memory.read(rip, 1) == b"\xee"


def _loop(count: int) -> str:
    """``count`` VERSIONS calls; R13 counts the wrong replies, R12 the calls made."""
    return (
        DISCOVER
        + f"""
    xor r12, r12
    xor r13, r13
again:
    mov rax, 1
    mov rdi, {VMCALL_MAGIC_NUMBER:#x}
    mov rcx, r12
    and rcx, 1
    mov rbx, -1
    mov dx, r14w
    out dx, al
    test rdx, rdx
    jnz bad
    cmp rcx, 0
    jne bareflank
    cmp rbx, {VMCALL_VERSION}
    jne bad
    jmp next
bareflank:
    cmp rbx, {pyflank.VERSION_MAJOR}
    jne bad
    cmp rsi, {pyflank.VERSION_MINOR}
    je next
bad:
    inc r13
next:
    inc r12
    cmp r12, {count}
    jne again
    hlt
"""
    )


def _run_loop(count: int, timeout: float) -> None:
    with Guest(_loop(count)) as guest:
        assert guest.run(timeout) is StopReason.GUEST_HLT
        state = guest.handler.m_state_save
        assert state.r12 == count
        assert state.r13 == 0, f"{state.r13} wrong replies"
        assert guest.dispatched == count


def test_thousand_vmcalls_all_answered() -> None:
    _run_loop(1000, timeout=30)


@pytest.mark.slow
def test_hundred_thousand_vmcalls_all_answered() -> None:
    _run_loop(100_000, timeout=300)
