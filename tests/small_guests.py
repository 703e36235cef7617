"""Small guests that stop and go on: a CPUID loop over a table, and one that waits in HLT
for COM1's input (snapshots, record and replay)."""

# 3000 rounds of CPUID (leaf 0-3) and a store of the running sum, per vCPU its own table.
LOOP = """
    mov r15, 3000
    xor rbx, rbx
    mov r14, rdi
    shl r14, 16
loop:
    mov eax, r15d
    and eax, 3
    cpuid
    add rbx, rax
    mov qword ptr [0x200000 + r14 + r15*8], rbx
    dec r15
    jnz loop
    hlt
"""
TABLE = 0x200000

# On the PC platform: COM1's receive interrupt (IRQ 4, vector 0x24) through the guest's IDT
# while it waits in HLT with nothing else to wake it; the byte goes to R12, then a CPUID.
WAITS_FOR_INPUT = """
    lea rax, [rip + on_com1]
    lea rdi, [rip + idt + 0x24 * 16]
    mov word ptr [rdi], ax
    mov word ptr [rdi + 2], cs
    mov byte ptr [rdi + 4], 0
    mov byte ptr [rdi + 5], 0x8e
    shr rax, 16
    mov word ptr [rdi + 6], ax
    shr rax, 16
    mov dword ptr [rdi + 8], eax
    lea rax, [rip + idtr]
    lea rdi, [rip + idt]
    mov [rax + 2], rdi
    lidt [rax]
    mov al, 0x11
    out 0x20, al
    mov al, 0x20
    out 0x21, al
    mov al, 4
    out 0x21, al
    mov al, 1
    out 0x21, al
    mov al, 0xef
    out 0x21, al
    mov dx, 0x3f9
    mov al, 1
    out dx, al
    mov dx, 0x3fc
    mov al, 8
    out dx, al
    sti
idle:
    hlt
    jmp idle
on_com1:
    mov dx, 0x3f8
    in al, dx
    movzx r12, al
    xor eax, eax
    cpuid
    cli
    hlt
.balign 8
idtr: .word 0x25 * 16 - 1
      .quad 0
.balign 16
idt: .fill 0x25 * 16, 1, 0
"""
