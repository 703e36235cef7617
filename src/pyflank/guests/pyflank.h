/* pyflank.h: the guest side of pyflank for freestanding C (gcc, x86-64, 64-bit mode).
 * GENERATED from pyflank.abi by `python -m pyflank.abi.generate`: do not edit.
 *
 * Build (see the README, "C guests"): python -m pyflank.guests cflags
 *
 *     #define PYFLANK_DEFINE_RUNTIME   // in exactly one file: memset/memcpy/memmove/memcmp
 *     #include "pyflank.h"
 *     static void guest_main(uint64_t vcpuid) {
 *         struct pyflank_vmm vmm = pyflank_init();
 *         struct pyflank_vmcall_registers regs;
 *         if (pyflank_vmcall_versions(&vmm, &regs, PYFLANK_VERSION_PROTOCOL) == PYFLANK_SUCCESS)
 *             pyflank_puts("protocol version ok\n");
 *     }
 *     PYFLANK_ENTRY(guest_main)
 *
 * vmcall_registers_t on Intel x64: r00=rax r01=rdx r02=rcx r03=rbx r04=rsi r05=r08 r06=r09 r07=r10 r08=r11 r09=r12 r10=r13 r11=r14 r12=r15.
 */
#ifndef PYFLANK_H
#define PYFLANK_H

#include <stddef.h>
#include <stdint.h>

/* -- the ABI ---------------------------------------------------------------------------- */

#define PYFLANK_MAGIC UINT64_C(0xb045eacdacd52e22)
#define PYFLANK_SUCCESS UINT64_C(0x0)
#define PYFLANK_FAILURE UINT64_C(0x8000001000000000)
#define PYFLANK_PROTOCOL_VERSION 0x1
#define PYFLANK_IN_BUFFER_SIZE 0x20000
#define PYFLANK_OUT_BUFFER_SIZE 0x20000

enum pyflank_opcode {
    PYFLANK_VMCALL_VERSIONS = 0x1,
    PYFLANK_VMCALL_REGISTERS = 0x2,
    PYFLANK_VMCALL_DATA = 0x3,
    PYFLANK_VMCALL_EVENT = 0x4,
    PYFLANK_VMCALL_START = 0x5,
    PYFLANK_VMCALL_STOP = 0x6,
    PYFLANK_VMCALL_UNITTEST = 0xa,
};
enum pyflank_version_index {
    PYFLANK_VERSION_PROTOCOL = 0x0,
    PYFLANK_VERSION_BAREFLANK = 0x1,
    PYFLANK_VERSION_USER = 0xa,
};
enum pyflank_data_type {
    PYFLANK_DATA_NONE = 0x0,
    PYFLANK_DATA_STRING = 0x1,
    PYFLANK_DATA_JSON = 0x2,
    PYFLANK_DATA_BINARY = 0xa,
};

/* CPUID 0x40000000: max leaf, signature in EBX ECX EDX;
   CPUID 0x40000001: EAX the features, EBX the doorbell port */
#define PYFLANK_CPUID_BASE 0x40000000u
#define PYFLANK_CPUID_FEATURES 0x40000001u
#define PYFLANK_DEFAULT_DOORBELL_PORT 0xcf6u
#define PYFLANK_FEATURE_VMCALL_INSTRUCTION 0x1u
#define PYFLANK_FEATURE_IO_PORT_DOORBELL 0x2u
#define PYFLANK_SIGNATURE "PyFlank"

struct pyflank_vmcall_registers {
    uint64_t r00;
    uint64_t r01;
    uint64_t r02;
    uint64_t r03;
    uint64_t r04;
    uint64_t r05;
    uint64_t r06;
    uint64_t r07;
    uint64_t r08;
    uint64_t r09;
    uint64_t r10;
    uint64_t r11;
    uint64_t r12;
    uint64_t r13;
    uint64_t r14;
    uint64_t r15;
};

/* How this guest reaches the VMM: CPUID 0x40000001, read once by pyflank_init(). */
struct pyflank_vmm {
    uint32_t features;
    uint16_t doorbell_port;
};

static inline void pyflank_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4])
{
    __asm__ volatile("cpuid" : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3])
                     : "a"(leaf), "c"(subleaf));
}

static inline struct pyflank_vmm pyflank_init(void)
{
    uint32_t out[4];
    pyflank_cpuid(PYFLANK_CPUID_FEATURES, 0, out);
    struct pyflank_vmm vmm = {out[0], (uint16_t)out[1]};
    return vmm;
}

/* The raw call: every slot that travels goes in and comes back; returns the status.
 * The VMCALL instruction unless CPUID offers only the I/O-port doorbell. */
static inline uint64_t pyflank_vmcall(const struct pyflank_vmm *vmm,
                                      struct pyflank_vmcall_registers *regs)
{
    uint64_t rax = regs->r00;
    uint64_t rdx = regs->r01;
    uint64_t rcx = regs->r02;
    uint64_t rbx = regs->r03;
    uint64_t rsi = regs->r04;
    register uint64_t r08 __asm__("r8") = regs->r05;
    register uint64_t r09 __asm__("r9") = regs->r06;
    register uint64_t r10 __asm__("r10") = regs->r07;
    register uint64_t r11 __asm__("r11") = regs->r08;
    register uint64_t r12 __asm__("r12") = regs->r09;
    register uint64_t r13 __asm__("r13") = regs->r10;
    register uint64_t r14 __asm__("r14") = regs->r11;
    register uint64_t r15 __asm__("r15") = regs->r12;
    if ((vmm->features & PYFLANK_FEATURE_VMCALL_INSTRUCTION) ||
        !(vmm->features & PYFLANK_FEATURE_IO_PORT_DOORBELL)) {
        __asm__ volatile("vmcall"
                       : "+a"(rax), "+d"(rdx), "+c"(rcx), "+b"(rbx), "+S"(rsi),
                         "+r"(r08), "+r"(r09), "+r"(r10), "+r"(r11), "+r"(r12),
                         "+r"(r13), "+r"(r14), "+r"(r15)
                       :
                       : "memory");
    } else {
        uint64_t rdi = rdx;
        rdx = vmm->doorbell_port; /* OUT takes its port in DX */
        __asm__ volatile("outb %%al, %%dx"
                       : "+a"(rax), "+d"(rdx), "+c"(rcx), "+b"(rbx), "+S"(rsi),
                         "+r"(r08), "+r"(r09), "+r"(r10), "+r"(r11), "+r"(r12),
                         "+r"(r13), "+r"(r14), "+r"(r15), "+D"(rdi)
                       :
                       : "memory");
    }
    regs->r00 = rax;
    regs->r01 = rdx;
    regs->r02 = rcx;
    regs->r03 = rbx;
    regs->r04 = rsi;
    regs->r05 = r08;
    regs->r06 = r09;
    regs->r07 = r10;
    regs->r08 = r11;
    regs->r09 = r12;
    regs->r10 = r13;
    regs->r11 = r14;
    regs->r12 = r15;
    return regs->r01;
}

/* Opcode and magic number in; with clear, every other slot 0. */
static inline void pyflank_vmcall_prepare(struct pyflank_vmcall_registers *regs,
                                          uint64_t opcode, int clear)
{
    regs->r00 = opcode;
    regs->r01 = PYFLANK_MAGIC;
    if (clear) {
        regs->r02 = 0;
        regs->r03 = 0;
        regs->r04 = 0;
        regs->r05 = 0;
        regs->r06 = 0;
        regs->r07 = 0;
        regs->r08 = 0;
        regs->r09 = 0;
        regs->r10 = 0;
        regs->r11 = 0;
        regs->r12 = 0;
        regs->r13 = 0;
        regs->r14 = 0;
        regs->r15 = 0;
    }
}

/* VERSIONS: index (r02 = rcx) -> major (r03 = rbx), minor (r04 = rsi), patch (r05 = r08) */
static inline uint64_t pyflank_vmcall_versions(const struct pyflank_vmm *vmm,
        struct pyflank_vmcall_registers *regs, uint64_t index)
{
    pyflank_vmcall_prepare(regs, PYFLANK_VMCALL_VERSIONS, 1);
    regs->r02 = index;
    return pyflank_vmcall(vmm, regs);
}
#define PYFLANK_VERSIONS_MAJOR(regs) ((regs)->r03)
#define PYFLANK_VERSIONS_MINOR(regs) ((regs)->r04)
#define PYFLANK_VERSIONS_PATCH(regs) ((regs)->r05)

/* REGISTERS: r02-r12 as the guest left them, logged */
static inline uint64_t pyflank_vmcall_registers(const struct pyflank_vmm *vmm,
        struct pyflank_vmcall_registers *regs)
{
    pyflank_vmcall_prepare(regs, PYFLANK_VMCALL_REGISTERS, 0);
    return pyflank_vmcall(vmm, regs);
}

/* DATA: in_type (r04 = rsi), in_addr (r05 = r08), in_size (r06 = r09), out_addr (r08 = r11), out_size (r09 = r12) -> reply_type (r07 = r10), reply_size (r09 = r12) */
static inline uint64_t pyflank_vmcall_data(const struct pyflank_vmm *vmm,
        struct pyflank_vmcall_registers *regs, uint64_t in_type, uint64_t in_addr, uint64_t in_size, uint64_t out_addr, uint64_t out_size)
{
    pyflank_vmcall_prepare(regs, PYFLANK_VMCALL_DATA, 1);
    regs->r04 = in_type;
    regs->r05 = in_addr;
    regs->r06 = in_size;
    regs->r08 = out_addr;
    regs->r09 = out_size;
    return pyflank_vmcall(vmm, regs);
}
#define PYFLANK_DATA_REPLY_TYPE(regs) ((regs)->r07)
#define PYFLANK_DATA_REPLY_SIZE(regs) ((regs)->r09)

/* EVENT: index (r02 = rcx) */
static inline uint64_t pyflank_vmcall_event(const struct pyflank_vmm *vmm,
        struct pyflank_vmcall_registers *regs, uint64_t index)
{
    pyflank_vmcall_prepare(regs, PYFLANK_VMCALL_EVENT, 1);
    regs->r02 = index;
    return pyflank_vmcall(vmm, regs);
}

/* START: no arguments */
static inline uint64_t pyflank_vmcall_start(const struct pyflank_vmm *vmm,
        struct pyflank_vmcall_registers *regs)
{
    pyflank_vmcall_prepare(regs, PYFLANK_VMCALL_START, 1);
    return pyflank_vmcall(vmm, regs);
}

/* STOP: no arguments */
static inline uint64_t pyflank_vmcall_stop(const struct pyflank_vmm *vmm,
        struct pyflank_vmcall_registers *regs)
{
    pyflank_vmcall_prepare(regs, PYFLANK_VMCALL_STOP, 1);
    return pyflank_vmcall(vmm, regs);
}

/* UNITTEST: index (r02 = rcx) */
static inline uint64_t pyflank_vmcall_unittest(const struct pyflank_vmm *vmm,
        struct pyflank_vmcall_registers *regs, uint64_t index)
{
    pyflank_vmcall_prepare(regs, PYFLANK_VMCALL_UNITTEST, 1);
    regs->r02 = index;
    return pyflank_vmcall(vmm, regs);
}

/* -- COM1, halting, the entry point ------------------------------------------------------ */

#define PYFLANK_COM1 0x3F8

static inline void pyflank_outb(uint16_t port, uint8_t value)
{
    __asm__ volatile("outb %0, %1" : : "a"(value), "Nd"(port));
}

static inline uint8_t pyflank_inb(uint16_t port)
{
    uint8_t value;
    __asm__ volatile("inb %1, %0" : "=a"(value) : "Nd"(port));
    return value;
}

static inline void pyflank_putc(char c)
{
    while (!(pyflank_inb(PYFLANK_COM1 + 5) & 0x20)) /* line status: transmitter empty */
        ;
    pyflank_outb(PYFLANK_COM1, (uint8_t)c);
}

static inline void pyflank_write(const char *text, size_t size)
{
    for (size_t i = 0; i < size; i++)
        pyflank_putc(text[i]);
}

static inline void pyflank_puts(const char *text)
{
    while (*text)
        pyflank_putc(*text++);
}

/* HLT with interrupts off: the vCPU stops ("guest HLT"). */
static inline __attribute__((noreturn)) void pyflank_halt(void)
{
    for (;;)
        __asm__ volatile("cli; hlt");
}

/* PYFLANK_ENTRY(fn): the program's entry point _start.  It aligns the stack as the System V
 * ABI expects, calls void fn(uint64_t vcpuid) (RDI holds the vCPU id at entry) and halts
 * when fn returns. */
#define PYFLANK_ENTRY(fn)                                                                 \
    __attribute__((used)) static void fn(uint64_t vcpuid);                                \
    __asm__(".pushsection .text.pyflank_entry, \"ax\"\n"                                 \
            ".globl _start\n"                                                              \
            "_start:\n"                                                                    \
            "    and $-16, %rsp\n"                                                         \
            "    call " #fn "\n"                                                           \
            "0:  cli\n"                                                                    \
            "    hlt\n"                                                                    \
            "    jmp 0b\n"                                                                 \
            ".popsection\n");

/* GCC may call these even in freestanding code (struct copies, loops it recognises).
 * Define PYFLANK_DEFINE_RUNTIME in one file of the guest to get them. */
#ifdef PYFLANK_DEFINE_RUNTIME
#define PYFLANK_NO_LIBCALLS __attribute__((optimize("no-tree-loop-distribute-patterns")))
PYFLANK_NO_LIBCALLS void *memset(void *s, int c, size_t n)
{
    unsigned char *p = s;
    while (n--)
        *p++ = (unsigned char)c;
    return s;
}

PYFLANK_NO_LIBCALLS void *memcpy(void *restrict d, const void *restrict s, size_t n)
{
    unsigned char *dp = d;
    const unsigned char *sp = s;
    while (n--)
        *dp++ = *sp++;
    return d;
}

PYFLANK_NO_LIBCALLS void *memmove(void *d, const void *s, size_t n)
{
    unsigned char *dp = d;
    const unsigned char *sp = s;
    if (dp < sp) {
        while (n--)
            *dp++ = *sp++;
    } else {
        while (n--)
            dp[n] = sp[n];
    }
    return d;
}

PYFLANK_NO_LIBCALLS int memcmp(const void *a, const void *b, size_t n)
{
    const unsigned char *ap = a, *bp = b;
    for (; n--; ap++, bp++)
        if (*ap != *bp)
            return *ap - *bp;
    return 0;
}
#endif

#endif /* PYFLANK_H */
