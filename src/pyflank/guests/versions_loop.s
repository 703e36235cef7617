# VERSIONS vmcalls in a loop, alternating indexes 0 (protocol) and 1 (pyflank), every
# reply checked.  The includer defines CALLS, COUNTS (vCPU n stores its call count at
# COUNTS + 8 n), and the versions it expects: PROTOCOL_MAJOR, PYFLANK_MAJOR, PYFLANK_MINOR.
# R12 counts the calls, R13 the wrong replies.

.include "pyflank.inc"

    mov rbp, rdi
    PYFLANK_INIT
    xor r12, r12
    xor r13, r13
versions_again:
    mov rcx, r12
    and rcx, 1
    mov rbx, -1
    VMCALL_RAW VMCALL_OP_VERSIONS
    test rdx, rdx
    jnz versions_bad
    test r12, 1
    jnz versions_pyflank
    cmp rbx, PROTOCOL_MAJOR
    jne versions_bad
    jmp versions_next
versions_pyflank:
    cmp rbx, PYFLANK_MAJOR
    jne versions_bad
    cmp rsi, PYFLANK_MINOR
    je versions_next
versions_bad:
    inc r13
versions_next:
    inc r12
    cmp r12, CALLS
    jne versions_again
    mov qword ptr [rbp * 8 + COUNTS], r12
    PYFLANK_HALT

    PYFLANK_RUNTIME
