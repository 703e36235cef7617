# The guest agent: serves bfm's vmcalls from inside the guest, one loop per vCPU.
#
# Each vCPU (RDI = its id at entry) owns a mailbox slot in guest memory (MAILBOX_BASE +
# id * MAILBOX_SLOT) holding r00-r15 and the DATA buffers, and a pair of ports
# (MAILBOX_PORT + 2 * id: wait for a request; + 1: post the result).  The VMM service
# fills the slot and answers the wait; the agent loads the registers, makes the real
# VMCALL (or the doorbell the VMM advertises), stores the registers back and posts.
# The service defines MAILBOX_BASE, MAILBOX_SLOT and MAILBOX_PORT before this file.

.include "pyflank.inc"

agent_start:
    PYFLANK_INIT
    mov rax, rdi
    imul rax, rax, MAILBOX_SLOT
    mov rbp, MAILBOX_BASE
    add rbp, rax
    lea rax, [rdi * 2 + MAILBOX_PORT]
    mov qword ptr [rbp + 0x800], rax

agent_wait:
    mov rdx, qword ptr [rbp + 0x800]
    in eax, dx
    test eax, eax
    jz agent_stop
    mov rax, qword ptr [rbp + 0x00]
    mov rdx, qword ptr [rbp + 0x08]
    mov rcx, qword ptr [rbp + 0x10]
    mov rbx, qword ptr [rbp + 0x18]
    mov rsi, qword ptr [rbp + 0x20]
    mov r8, qword ptr [rbp + 0x28]
    mov r9, qword ptr [rbp + 0x30]
    mov r10, qword ptr [rbp + 0x38]
    mov r11, qword ptr [rbp + 0x40]
    mov r12, qword ptr [rbp + 0x48]
    mov r13, qword ptr [rbp + 0x50]
    mov r14, qword ptr [rbp + 0x58]
    mov r15, qword ptr [rbp + 0x60]
    call pyflank_vmcall
    mov qword ptr [rbp + 0x00], rax
    mov qword ptr [rbp + 0x08], rdx
    mov qword ptr [rbp + 0x10], rcx
    mov qword ptr [rbp + 0x18], rbx
    mov qword ptr [rbp + 0x20], rsi
    mov qword ptr [rbp + 0x28], r8
    mov qword ptr [rbp + 0x30], r9
    mov qword ptr [rbp + 0x38], r10
    mov qword ptr [rbp + 0x40], r11
    mov qword ptr [rbp + 0x48], r12
    mov qword ptr [rbp + 0x50], r13
    mov qword ptr [rbp + 0x58], r14
    mov qword ptr [rbp + 0x60], r15
    mov rdx, qword ptr [rbp + 0x800]
    inc edx
    out dx, eax
    jmp agent_wait

agent_stop:
    PYFLANK_HALT

    PYFLANK_RUNTIME
