"""The C guest SDK (``pyflank.h``), written from ``pyflank.abi``.

The constants, the ``vmcall_registers_t`` struct, the call itself (each slot bound to the
register the map names, the VMCALL instruction or the I/O-port doorbell) and one wrapper
per opcode are generated; COM1 output, halting and the entry point are fixed text.
"""

from __future__ import annotations

from pyflank.abi.asm_header import GENERATED_NOTE
from pyflank.abi.cpuid import (
    DEFAULT_DOORBELL_PORT,
    HYPERVISOR_BASE_LEAF,
    HYPERVISOR_FEATURES_LEAF,
    SIGNATURE,
    HypervisorFeatures,
)
from pyflank.abi.registers import DOORBELL_REGISTERS, INTEL_X64_REGISTER_MAP, REGISTER_OF_SLOT
from pyflank.abi.vmcall import (
    BF_VMCALL_FAILURE,
    BF_VMCALL_SUCCESS,
    DATA_TYPE_SDK_NAMES,
    MAGIC_SLOT,
    OPCODE_SLOT,
    SIGNATURES,
    SLOTS,
    STATUS_SLOT,
    VMCALL_IN_BUFFER_SIZE,
    VMCALL_MAGIC_NUMBER,
    VMCALL_OUT_BUFFER_SIZE,
    VMCALL_VERSION,
    Signature,
    VmcallOpcode,
    VmcallVersionIndex,
)

# GCC's operand constraint for the registers that have one; r8-r15 need register variables.
_CONSTRAINTS = {"rax": "a", "rbx": "b", "rcx": "c", "rdx": "d", "rsi": "S", "rdi": "D"}

_PREAMBLE = """\
/* pyflank.h: the guest side of pyflank for freestanding C (gcc, x86-64, 64-bit mode).
 * {note}
 *
 * Build (see the README, "C guests"): python -m pyflank.guests cflags
 *
 *     #define PYFLANK_DEFINE_RUNTIME   // in exactly one file: memset/memcpy/memmove/memcmp
 *     #include "pyflank.h"
 *     static void guest_main(uint64_t vcpuid) {{
 *         struct pyflank_vmm vmm = pyflank_init();
 *         struct pyflank_vmcall_registers regs;
 *         if (pyflank_vmcall_versions(&vmm, &regs, PYFLANK_VERSION_PROTOCOL) == PYFLANK_SUCCESS)
 *             pyflank_puts("protocol version ok\\n");
 *     }}
 *     PYFLANK_ENTRY(guest_main)
 *
 * vmcall_registers_t on Intel x64: {slots}.
 */
#ifndef PYFLANK_H
#define PYFLANK_H

#include <stddef.h>
#include <stdint.h>
"""

_RUNTIME = """
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
#define PYFLANK_ENTRY(fn)                                                                 \\
    __attribute__((used)) static void fn(uint64_t vcpuid);                                \\
    __asm__(".pushsection .text.pyflank_entry, \\"ax\\"\\n"                                 \\
            ".globl _start\\n"                                                              \\
            "_start:\\n"                                                                    \\
            "    and $-16, %rsp\\n"                                                         \\
            "    call " #fn "\\n"                                                           \\
            "0:  cli\\n"                                                                    \\
            "    hlt\\n"                                                                    \\
            "    jmp 0b\\n"                                                                 \\
            ".popsection\\n");

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
"""


def _define(name: str, value: int, suffix: str = "") -> str:
    if suffix == "ull":
        return f"#define {name} UINT64_C({value:#x})"
    return f"#define {name} {value:#x}{suffix}"


def _enum(name: str, members: list[tuple[str, int]]) -> list[str]:
    return [f"enum {name} {{", *(f"    {m} = {v:#x}," for m, v in members), "};"]


def _constants() -> list[str]:
    lines = [
        "/* -- the ABI " + "-" * 76 + " */",
        "",
        _define("PYFLANK_MAGIC", VMCALL_MAGIC_NUMBER, "ull"),
        _define("PYFLANK_SUCCESS", BF_VMCALL_SUCCESS, "ull"),
        _define("PYFLANK_FAILURE", BF_VMCALL_FAILURE, "ull"),
        _define("PYFLANK_PROTOCOL_VERSION", VMCALL_VERSION),
        _define("PYFLANK_IN_BUFFER_SIZE", VMCALL_IN_BUFFER_SIZE),
        _define("PYFLANK_OUT_BUFFER_SIZE", VMCALL_OUT_BUFFER_SIZE),
        "",
        *_enum("pyflank_opcode", [(f"PYFLANK_VMCALL_{op.name}", op) for op in VmcallOpcode]),
        *_enum(
            "pyflank_version_index",
            [(f"PYFLANK_VERSION_{index.name}", index) for index in VmcallVersionIndex],
        ),
        *_enum(
            "pyflank_data_type",
            [(f"PYFLANK_DATA_{name}", kind) for kind, name in DATA_TYPE_SDK_NAMES.items()],
        ),
        "",
        "/* CPUID 0x40000000: max leaf, signature in EBX ECX EDX;",
        "   CPUID 0x40000001: EAX the features, EBX the doorbell port */",
        _define("PYFLANK_CPUID_BASE", HYPERVISOR_BASE_LEAF, "u"),
        _define("PYFLANK_CPUID_FEATURES", HYPERVISOR_FEATURES_LEAF, "u"),
        _define("PYFLANK_DEFAULT_DOORBELL_PORT", DEFAULT_DOORBELL_PORT, "u"),
        *(_define(f"PYFLANK_FEATURE_{flag.name}", flag, "u") for flag in HypervisorFeatures),
        f'#define PYFLANK_SIGNATURE "{SIGNATURE.rstrip(chr(0))}"',
        "",
        "struct pyflank_vmcall_registers {",
        *(f"    uint64_t {slot};" for slot in SLOTS),
        "};",
    ]
    return lines


def _variable(register: str) -> str:
    if register in _CONSTRAINTS:
        return f"    uint64_t {register}"
    return f'    register uint64_t {register} __asm__("{register.replace("r0", "r")}")'


def _operand(register: str) -> str:
    return f'"+{_CONSTRAINTS.get(register, "r")}"({register})'


def _operands(registers: list[str]) -> str:
    """In/out operands of an asm statement, five to a line."""
    operands = [_operand(r) for r in registers]
    rows = [", ".join(operands[i : i + 5]) for i in range(0, len(operands), 5)]
    return ",\n                         ".join(rows)


def _call() -> list[str]:
    registers = [register for _, register in INTEL_X64_REGISTER_MAP]
    doorbell = list(DOORBELL_REGISTERS.values())
    vmcall_operands = _operands(registers)
    doorbell_operands = _operands(registers + doorbell)
    lines = [
        "",
        "/* How this guest reaches the VMM: CPUID 0x40000001, read once by pyflank_init(). */",
        "struct pyflank_vmm {",
        "    uint32_t features;",
        "    uint16_t doorbell_port;",
        "};",
        "",
        "static inline void pyflank_cpuid(uint32_t leaf, uint32_t subleaf, uint32_t out[4])",
        "{",
        '    __asm__ volatile("cpuid" : "=a"(out[0]), "=b"(out[1]), "=c"(out[2]), "=d"(out[3])',
        '                     : "a"(leaf), "c"(subleaf));',
        "}",
        "",
        "static inline struct pyflank_vmm pyflank_init(void)",
        "{",
        "    uint32_t out[4];",
        "    pyflank_cpuid(PYFLANK_CPUID_FEATURES, 0, out);",
        "    struct pyflank_vmm vmm = {out[0], (uint16_t)out[1]};",
        "    return vmm;",
        "}",
        "",
        "/* The raw call: every slot that travels goes in and comes back; returns the status.",
        " * The VMCALL instruction unless CPUID offers only the I/O-port doorbell. */",
        "static inline uint64_t pyflank_vmcall(const struct pyflank_vmm *vmm,",
        "                                      struct pyflank_vmcall_registers *regs)",
        "{",
        *(f"{_variable(reg)} = regs->{slot};" for slot, reg in INTEL_X64_REGISTER_MAP),
        "    if ((vmm->features & PYFLANK_FEATURE_VMCALL_INSTRUCTION) ||",
        "        !(vmm->features & PYFLANK_FEATURE_IO_PORT_DOORBELL)) {",
        '        __asm__ volatile("vmcall"',
        f"                       : {vmcall_operands}",
        "                       :",
        '                       : "memory");',
        "    } else {",
        *(f"    {_variable(to)} = {REGISTER_OF_SLOT[s]};" for s, to in DOORBELL_REGISTERS.items()),
        "        rdx = vmm->doorbell_port; /* OUT takes its port in DX */",
        '        __asm__ volatile("outb %%al, %%dx"',
        f"                       : {doorbell_operands}",
        "                       :",
        '                       : "memory");',
        "    }",
        *(f"    regs->{slot} = {reg};" for slot, reg in INTEL_X64_REGISTER_MAP),
        f"    return regs->{STATUS_SLOT};",
        "}",
    ]
    return lines


def _prepare() -> list[str]:
    others = [s for s in SLOTS if s not in (OPCODE_SLOT, MAGIC_SLOT)]
    return [
        "",
        "/* Opcode and magic number in; with clear, every other slot 0. */",
        "static inline void pyflank_vmcall_prepare(struct pyflank_vmcall_registers *regs,",
        "                                          uint64_t opcode, int clear)",
        "{",
        f"    regs->{OPCODE_SLOT} = opcode;",
        f"    regs->{MAGIC_SLOT} = PYFLANK_MAGIC;",
        "    if (clear) {",
        *(f"        regs->{slot} = 0;" for slot in others),
        "    }",
        "}",
    ]


def _wrapper(signature: Signature) -> list[str]:
    name = signature.opcode.name
    inputs = {slot: arg for arg, slot in signature.inputs}
    zeroed = signature.opcode is not VmcallOpcode.REGISTERS  # REGISTERS sends what it is given
    params = "".join(f", uint64_t {arg}" for arg, _ in signature.inputs)
    described = signature.describe(REGISTER_OF_SLOT.__getitem__)
    lines = [
        "",
        f"/* {name}: {described} */",
        f"static inline uint64_t pyflank_vmcall_{name.lower()}(const struct pyflank_vmm *vmm,",
        f"        struct pyflank_vmcall_registers *regs{params})",
        "{",
        f"    pyflank_vmcall_prepare(regs, PYFLANK_VMCALL_{name}, {int(zeroed)});",
        *(f"    regs->{slot} = {arg};" for slot, arg in inputs.items()),
        "    return pyflank_vmcall(vmm, regs);",
        "}",
    ]
    lines += [
        f"#define PYFLANK_{name}_{arg.upper()}(regs) ((regs)->{slot})"
        for arg, slot in signature.outputs
    ]
    return lines


def render() -> str:
    """The text of ``pyflank.h``."""
    slots = " ".join(f"{slot}={register}" for slot, register in INTEL_X64_REGISTER_MAP)
    lines = [_PREAMBLE.format(note=GENERATED_NOTE, slots=slots), *_constants(), *_call()]
    lines += _prepare()
    for signature in SIGNATURES.values():
        lines += _wrapper(signature)
    return "\n".join(lines) + "\n" + _RUNTIME
