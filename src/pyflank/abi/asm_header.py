"""The ABI part of the assembly guest SDK (``pyflank_abi.inc``), written from ``pyflank.abi``.

Constants as ``.equ``, one ``VMCALL_<OPCODE>`` macro per opcode that moves its arguments into
the registers the map names, and the macros that move all slots at once (the bfm agent).
The subroutines the macros call (``pyflank_vmcall``) are the hand-written ``pyflank.inc``.
"""

from __future__ import annotations

from pyflank.abi.cpuid import (
    DEFAULT_DOORBELL_PORT,
    HYPERVISOR_BASE_LEAF,
    HYPERVISOR_FEATURES_LEAF,
    HypervisorFeatures,
)
from pyflank.abi.registers import (
    DOORBELL_REGISTERS,
    INTEL_X64_REGISTER_MAP,
    REGISTER_OF_SLOT,
)
from pyflank.abi.vmcall import (
    BF_VMCALL_FAILURE,
    BF_VMCALL_SUCCESS,
    DATA_TYPE_SDK_NAMES,
    MAGIC_SLOT,
    OPCODE_SLOT,
    SIGNATURES,
    STATUS_SLOT,
    VMCALL_IN_BUFFER_SIZE,
    VMCALL_MAGIC_NUMBER,
    VMCALL_OUT_BUFFER_SIZE,
    VMCALL_VERSION,
    VmcallOpcode,
    VmcallVersionIndex,
)

GENERATED_NOTE = "GENERATED from pyflank.abi by `python -m pyflank.abi.generate`: do not edit."


def _register(slot: str) -> str:
    return REGISTER_OF_SLOT[slot].replace("r0", "r")  # keystone spells r8, not r08


def _slots_line() -> str:
    return " ".join(f"{slot}={_register(slot)}" for slot, _ in INTEL_X64_REGISTER_MAP)


def _constants() -> list[str]:
    values: list[tuple[str, int]] = [
        ("PYFLANK_MAGIC", VMCALL_MAGIC_NUMBER),
        ("PYFLANK_SUCCESS", BF_VMCALL_SUCCESS),
        ("PYFLANK_FAILURE", BF_VMCALL_FAILURE),
        ("PYFLANK_PROTOCOL_VERSION", VMCALL_VERSION),
        ("VMCALL_IN_BUFFER_SIZE", VMCALL_IN_BUFFER_SIZE),
        ("VMCALL_OUT_BUFFER_SIZE", VMCALL_OUT_BUFFER_SIZE),
    ]
    values += [(f"VMCALL_OP_{op.name}", op) for op in VmcallOpcode]
    values += [(f"VMCALL_VERSION_{index.name}", index) for index in VmcallVersionIndex]
    values += [(f"VMCALL_DATA_{name}", kind) for kind, name in DATA_TYPE_SDK_NAMES.items()]
    values += [
        ("PYFLANK_CPUID_BASE", HYPERVISOR_BASE_LEAF),
        ("PYFLANK_CPUID_FEATURES", HYPERVISOR_FEATURES_LEAF),
        ("PYFLANK_DEFAULT_DOORBELL_PORT", DEFAULT_DOORBELL_PORT),
    ]
    values += [(f"PYFLANK_FEATURE_{flag.name}", flag) for flag in HypervisorFeatures]
    return [f".equ {name}, {int(value):#x}" for name, value in values]


def _opcode_macros() -> list[str]:
    lines = [
        "# The raw call: r00 = opcode, r01 = magic; the other slots as the caller left them.",
        ".macro VMCALL_RAW opcode",
        f"    mov {_register(OPCODE_SLOT)}, \\opcode",
        f"    mov {_register(MAGIC_SLOT)}, PYFLANK_MAGIC",
        "    call pyflank_vmcall",
        ".endm",
    ]
    for signature in SIGNATURES.values():
        name = signature.opcode.name
        lines += ["", f"# {name}: {signature.describe(_register)}"]
        params = ", ".join(arg for arg, _ in signature.inputs)
        lines.append(f".macro VMCALL_{name}" + (f" {params}" if params else ""))
        lines += [f"    mov {_register(slot)}, \\{arg}" for arg, slot in signature.inputs]
        lines += [f"    VMCALL_RAW VMCALL_OP_{name}", ".endm"]
    return lines


def _slot_block_macros() -> list[str]:
    loads = [f"    mov {_register(s)}, qword ptr [\\base + {8 * i:#04x}]"
             for i, (s, _) in enumerate(INTEL_X64_REGISTER_MAP)]  # fmt: skip
    stores = [f"    mov qword ptr [\\base + {8 * i:#04x}], {_register(s)}"
              for i, (s, _) in enumerate(INTEL_X64_REGISTER_MAP)]  # fmt: skip
    doorbell = [f"    mov {moved}, {_register(slot)}" for slot, moved in DOORBELL_REGISTERS.items()]
    return [
        "# Every slot that travels, from / to a block of 8-byte slots at [base] (slot i at",
        "# base + 8 i); base must be a register the map does not use.",
        ".macro VMCALL_LOAD_SLOTS base",
        *loads,
        ".endm",
        "",
        ".macro VMCALL_STORE_SLOTS base",
        *stores,
        ".endm",
        "",
        "# Through the I/O-port doorbell OUT needs DX for the port: these slots move first.",
        ".macro VMCALL_DOORBELL_MOVE",
        *doorbell,
        ".endm",
    ]


def render() -> str:
    """The text of ``pyflank_abi.inc``."""
    lines = [
        "# pyflank_abi.inc: the vmcall ABI for assembly guests (Intel syntax, keystone).",
        f"# {GENERATED_NOTE}",
        "# Included by pyflank.inc, which supplies pyflank_vmcall and the other subroutines.",
        "#",
        f"# vmcall_registers_t on Intel x64: {_slots_line()}.",
        f"# The status comes back in {STATUS_SLOT} = {_register(STATUS_SLOT)}: "
        f"{BF_VMCALL_SUCCESS} success, {BF_VMCALL_FAILURE:#x} failure.",
        "",
        *_constants(),
        "",
        *_opcode_macros(),
        "",
        *_slot_block_macros(),
    ]
    return "\n".join(lines) + "\n"
