# The demo guest: every exit the seed's handler knows, then VMXOFF.
# The VMM maps the DATA buffers at BUFFERS (guest-virtual, not identity-mapped, crossing
# pages) before the run; the demo defines BUFFERS ahead of this file.

.include "pyflank.inc"

demo_start:
    PUTS banner, banner_len
    PYFLANK_INIT

    xor eax, eax                       # CPUID: vendor
    xor ecx, ecx
    cpuid
    mov eax, 0x40000000                # CPUID: the hypervisor's signature
    cpuid

    mov ecx, 0xC0000080                # RDMSR IA32_EFER (VMCS-backed)
    rdmsr
    or eax, 1                          # WRMSR IA32_EFER.SCE
    wrmsr
    rdmsr                              # ... and read it back
    mov ecx, 0xC0000082                # WRMSR/RDMSR IA32_LSTAR (the CPU's own MSR)
    mov eax, 0xFFFF8000
    mov edx, 0xFFFFFFFF
    wrmsr
    rdmsr
    mov ecx, 0x39                      # RDMSR of a platform MSR that reads as 0
    rdmsr
    invd

    VMCALL_VERSIONS 0
    VMCALL_VERSIONS 1
    VMCALL_VERSIONS 10
    mov rbx, 0x3333
    mov rsi, 0x4444
    mov rcx, 0x2222
    VMCALL_REGISTERS
    VMCALL_EVENT 0x42
    VMCALL_START
    VMCALL_STOP
    VMCALL_UNITTEST 2

    # DATA: copy each request into the guest-virtual input buffer, then call.
    lea rsi, [rip + text]
    mov rdi, BUFFERS + 0xFF0
    mov rcx, text_len
    rep movsb
    VMCALL_DATA VMCALL_DATA_STRING, BUFFERS + 0xFF0, text_len, BUFFERS + 0x1F00, 0x200
    lea rsi, [rip + json]
    mov rdi, BUFFERS + 0xFF0
    mov rcx, json_len
    rep movsb
    VMCALL_DATA VMCALL_DATA_JSON, BUFFERS + 0xFF0, json_len, BUFFERS + 0x1F00, 0x200
    VMCALL_DATA VMCALL_DATA_BINARY, BUFFERS + 0xFF0, 16, BUFFERS + 0x1F00, 0x200

    PUTS goodbye, goodbye_len
    PYFLANK_VMXOFF
    PYFLANK_HALT

banner: .ascii "demo guest: hello from 64-bit long mode\n"
.equ banner_len, 40
goodbye: .ascii "demo guest: leaving VMX operation\n"
.equ goodbye_len, 34
text: .ascii "hello from the guest"
.equ text_len, 20
json: .ascii "{\"from\": \"guest\", \"n\": [1, 2, 3]}"
.equ json_len, 33

    PYFLANK_RUNTIME
