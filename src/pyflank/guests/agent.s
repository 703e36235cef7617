# The guest agent: serves bfm's vmcalls from inside the guest, one loop per vCPU.
#
# Each vCPU (RDI = its id at entry) owns a mailbox slot in guest memory (MAILBOX_BASE +
# id * MAILBOX_SLOT) holding r00-r15 and the DATA buffers, and a pair of ports
# (MAILBOX_PORT + 2 * id: wait for a request; + 1: post the result and wait for the
# next, in one exit).  The VMM service fills the slot and answers the wait; the agent
# loads the registers, makes the real VMCALL (or the doorbell the VMM advertises), stores
# the registers back and posts.  A wait that returns 0 means stop.
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
    mov rdx, rax
    in eax, dx

agent_serve:
    test eax, eax
    jz agent_stop
    VMCALL_LOAD_SLOTS rbp
    call pyflank_vmcall
    VMCALL_STORE_SLOTS rbp
    mov rdx, qword ptr [rbp + 0x800]
    inc edx
    in eax, dx
    jmp agent_serve

agent_stop:
    PYFLANK_HALT

    PYFLANK_RUNTIME
