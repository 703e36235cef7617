"""A small ring-0 kernel for guest programs that need privilege levels: its own GDT with
user segments and a TSS (loaded with LTR), an IDT of chosen gates, and a way to ring 3.

``kernel_source(body, user=..., gates=...)``: ``body`` runs first, in ring 0; ``jmp
enter_user`` goes to ring 3 at ``user`` through IRETQ (with RFLAGS ``user_rflags``).
``gates`` maps a vector to (handler label, gate DPL, IST index); the handlers are part of
``body`` or ``extra``.  Interrupts and exceptions taken in ring 3 switch to ``kstack_top``
(TSS.RSP0).  ``user_pages(vm)`` makes all of RAM user-accessible (a ``setup`` step).

GDT: 0x08 kernel code64, 0x10 kernel data, 0x18 user code32, 0x20 user data, 0x28 user
code64, 0x30 user data again, 0x38 a 64-bit TSS (available until LTR makes it busy).
``STAR`` is what SYSCALL/SYSRET need for that layout; SYSENTER_CS = 0x08 suits SYSENTER
and a 64-bit SYSEXIT (user code at +32, data at +40).
"""

from __future__ import annotations

from emu_helpers import INTERRUPT_GATE, SET_GATE

from pyflank.vmm import Vm

KERNEL_CS, KERNEL_SS = 0x08, 0x10
USER_SS, USER_CS = 0x20 | 3, 0x28 | 3
TSS_SELECTOR = 0x38
STAR = 0x18 << 48 | KERNEL_CS << 32
Gate = tuple[str, int, int]  # handler label, DPL, IST


def user_pages(vm: Vm) -> None:
    """Every page of RAM reachable from ring 3 (the boot map is supervisor-only)."""
    vm.page_tables.protect(0, vm.memory.size, writable=True, user=True)


def kernel_source(
    body: str,
    *,
    user: str = "    hlt\n",
    gates: dict[int, Gate] | None = None,
    extra: str = "",
    user_rflags: int = 0x2,
) -> str:
    installs = "\n".join(
        f"    lea rax, [rip + {label}]\n    mov ecx, {vector}\n"
        f"    mov edx, {INTERRUPT_GATE | dpl << 5}\n    mov r8d, {ist}\n    call set_gate"
        for vector, (label, dpl, ist) in sorted((gates or {}).items())
    )
    return f"""
    lea rax, [rip + gdtr]
    lea rdi, [rip + gdt]
    mov [rax + 2], rdi
    lgdt [rax]
    lea rax, [rip + tss]
    lea rdi, [rip + gdt + {TSS_SELECTOR}]
    mov [rdi + 2], ax
    shr rax, 16
    mov [rdi + 4], al
    mov [rdi + 7], ah
    shr rax, 16
    mov [rdi + 8], eax
    mov ax, {TSS_SELECTOR}
    ltr ax
    lea rax, [rip + kstack_top]
    lea rdi, [rip + tss]
    mov [rdi + 4], rax
    lea rax, [rip + ist_stack_top]
    mov [rdi + 0x24], rax
{installs}
    lea rax, [rip + idtr]
    lea rdi, [rip + idt]
    mov [rax + 2], rdi
    lidt [rax]
{body}

enter_user:
    push {USER_SS}
    lea rax, [rip + ustack_top]
    push rax
    push {user_rflags}
    push {USER_CS}
    lea rax, [rip + user_entry]
    push rax
    iretq

{SET_GATE}
user_entry:
{user}
{extra}
.balign 8
gdtr: .word gdt_end - gdt - 1
      .quad 0
.balign 16
gdt:
    .quad 0
    .quad 0x00AF9B000000FFFF
    .quad 0x00CF93000000FFFF
    .quad 0x00CFFB000000FFFF
    .quad 0x00CFF3000000FFFF
    .quad 0x00AFFB000000FFFF
    .quad 0x00CFF3000000FFFF
    .quad 0x0000890000000067
    .quad 0
gdt_end:
.balign 8
idtr: .word 256 * 16 - 1
      .quad 0
.balign 16
idt: .fill 256 * 16, 1, 0
.balign 16
tss: .fill 0x68, 1, 0
.balign 16
    .fill 0x1000, 1, 0
kstack_top:
    .fill 0x1000, 1, 0
ustack_top:
    .fill 0x1000, 1, 0
ist_stack_top:
    .quad 0
"""
