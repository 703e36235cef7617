"""SYSCALL/SYSRET between ring 3 and ring 0 as the hardware does them (STAR, LSTAR,
SFMASK, EFER.SCE; RCX/R11), SWAPGS with KERNEL_GS_BASE, and SYSENTER -- the MSRs written
by the guest's WRMSRs, which the seed's handler carries out."""

from __future__ import annotations

import pytest
from emu_helpers import kvm_gap, run1
from small_kernel import KERNEL_CS, KERNEL_SS, STAR, USER_CS, kernel_source, user_pages

from pyflank.backends.base import StopReason
from pyflank.intel_x64 import fields as f
from pyflank.intel_x64.msrs import (
    IA32_EFER,
    IA32_FMASK,
    IA32_KERNEL_GS_BASE,
    IA32_LSTAR,
    IA32_STAR,
    IA32_SYSENTER_CS,
    IA32_SYSENTER_EIP,
    IA32_SYSENTER_ESP,
)

SFMASK = 0x47700  # TF, DF, IF, IOPL, NT, AC: what Linux masks
PERCPU_MAGIC = 0x5EC0_0DE5
_RFLAGS_DF, _RFLAGS_IF, _RFLAGS_RF = 1 << 10, 1 << 9, 1 << 16


def _wrmsr(msr: int, load_rax: str) -> str:
    """WRMSR of the value ``load_rax`` puts in RAX."""
    return f"    {load_rax}\n    mov rdx, rax\n    shr rdx, 32\n    mov ecx, {msr:#x}\n    wrmsr\n"


def _kernel(enable_sce: bool = True) -> str:
    body = (
        _wrmsr(IA32_STAR, f"mov rax, {STAR:#x}")
        + _wrmsr(IA32_LSTAR, "lea rax, [rip + syscall_entry]")
        + _wrmsr(IA32_FMASK, f"mov rax, {SFMASK:#x}")
        + _wrmsr(IA32_KERNEL_GS_BASE, "lea rax, [rip + percpu]")
        + (
            f"    mov ecx, {IA32_EFER:#x}\n    rdmsr\n    or eax, 1\n    wrmsr\n"
            "    lea rcx, [rip + user_entry]\n    mov r11, 0x202\n    sysret\n"
            if enable_sce
            else "    jmp enter_user\n"  # (SYSRET without EFER.SCE is #UD too)
        )
    )
    user = """
    mov rsi, cs
    std
    lea rbx, [rip + after_syscall]
    mov eax, 42
    syscall
after_syscall:
    mov rdi, cs
    xor eax, eax
    syscall
"""
    extra = f"""
syscall_entry:
    swapgs
    xor r13, r13
    mov r13, gs:[r13]  # (keystone makes gs:[0] RIP-relative)
    test rax, rax
    jz finish
    mov r8, rcx
    mov r9, r11
    pushfq
    pop r10
    mov r14, cs
    mov r15, ss
    swapgs
    sysret  # keystone: REX.W, to 64-bit mode
finish:
    hlt
.balign 8
percpu: .quad {PERCPU_MAGIC:#x}
"""
    return kernel_source(body, user=user, extra=extra, gates={6: ("on_ud", 0, 0)}) + (
        "on_ud:\n    mov r12, 6\n    hlt\n"
    )


def test_syscall_and_sysret_round_trip() -> None:
    kvm_gap("emulator")  # SYSRET, SWAPGS (and the SYSCALL) in the ring-0 emulator
    _, result = run1(_kernel(), setup=user_pages)
    s = result.state
    assert result.reason is StopReason.GUEST_HLT, result.debug_ring
    assert s.r12 == 0  # no #UD
    assert s.rsi == USER_CS  # SYSRET went to ring 3
    assert (s.r14, s.r15) == (KERNEL_CS, KERNEL_SS)  # SYSCALL: CS/SS from STAR
    assert s.r08 == s.rbx  # RCX: the RIP after SYSCALL
    assert s.r09 & (_RFLAGS_DF | _RFLAGS_IF) == _RFLAGS_DF | _RFLAGS_IF  # R11: user RFLAGS
    assert s.r10 & (SFMASK | _RFLAGS_RF) == 0 and s.r10 & 2  # RFLAGS masked by SFMASK
    assert s.rdi == USER_CS  # back in ring 3 after SYSRET, then SYSCALL again
    assert s.r13 == PERCPU_MAGIC  # SWAPGS brought in KERNEL_GS_BASE
    assert result.vmcs.read(f.GUEST_CS_SELECTOR) == KERNEL_CS
    assert s.rcx == s.rbx + 7  # the second SYSCALL: past "mov rdi, cs; xor eax, eax; syscall"


@pytest.mark.parametrize("backend", ["emu"], indirect=True)
def test_syscall_without_efer_sce_is_an_invalid_opcode(backend: str) -> None:
    _, result = run1(_kernel(enable_sce=False), setup=user_pages)
    assert result.state.r12 == 6
    assert result.state.rsi == USER_CS  # the #UD came from the SYSCALL in ring 3


def _sysenter_kernel(sysenter_cs: int) -> str:
    body = (
        _wrmsr(IA32_SYSENTER_CS, f"mov rax, {sysenter_cs:#x}")
        + _wrmsr(IA32_SYSENTER_EIP, "lea rax, [rip + sysenter_entry]")
        + _wrmsr(IA32_SYSENTER_ESP, "lea rax, [rip + kstack_top]")
        + "    xor r9, r9\n    jmp enter_user\n"
    )
    extra = """
sysenter_entry:
    inc r9
    cmp r9, 2
    je finish
    mov r14, cs
    mov r15, ss
    mov r13, rsp
    pushfq
    pop r10
    lea rdx, [rip + back_in_user]
    lea rcx, [rip + ustack_top]
    sysexit
finish:
    hlt
on_gp:
    mov r12, 13
    hlt
"""
    user = """
    mov rsi, cs
    sysenter
back_in_user:
    mov rdi, cs
    mov rbx, rsp
    lea r8, [rip + ustack_top]
    sysenter
"""
    return kernel_source(
        body, user=user, extra=extra, gates={13: ("on_gp", 0, 0)}, user_rflags=0x202
    )


def test_sysenter_and_sysexit_round_trip() -> None:
    kvm_gap("emulator")  # IRETQ to ring 3, SYSENTER, SYSEXIT
    _, result = run1(_sysenter_kernel(KERNEL_CS), setup=user_pages)
    s = result.state
    assert result.reason is StopReason.GUEST_HLT, result.debug_ring
    assert (s.rsi, s.r12, s.r09) == (USER_CS, 0, 2)
    assert (s.r14, s.r15) == (KERNEL_CS, KERNEL_SS)  # SYSENTER: from SYSENTER_CS
    assert s.r13 == result.vmcs.read(f.GUEST_IA32_SYSENTER_ESP)
    assert s.r10 & (_RFLAGS_IF | _RFLAGS_RF) == 0
    assert s.rdi == KERNEL_CS + 32 | 3 == USER_CS  # SYSEXIT (REX.W): 64-bit ring 3 at RDX
    assert s.rbx == s.r08  # RSP = RCX


@pytest.mark.parametrize("backend", ["emu"], indirect=True)
def test_sysenter_without_a_sysenter_cs_is_a_gp(backend: str) -> None:
    _, result = run1(_sysenter_kernel(0), setup=user_pages)
    assert (result.state.r12, result.state.rsi) == (13, USER_CS)
