"""A harness with DATA buffers in a non-identity mapping that crosses pages."""

from collections.abc import Callable

from pyflank.abi import VMCALL_MAGIC_NUMBER, VmcallOpcode
from pyflank.abi.registers import REGISTER_OF_SLOT
from pyflank.exit_handler import ExitHandlerIntelX64
from pyflank.intel_x64.exit_reasons import ExitReason
from pyflank.testing import ExitHarness

BUFFERS_GVA = 0x0000_4000_0000_0000
# Three virtual pages backed by physical pages far apart and out of order.
BACKING = (0x300000, 0x280000, 0x2C0000)
IN_GVA = BUFFERS_GVA + 0xFF0  # crosses page 0 -> 1
OUT_GVA = BUFFERS_GVA + 0x1F00  # crosses page 1 -> 2
OUT_SIZE = 0x200


def buffer_harness(
    handler: Callable[[], ExitHandlerIntelX64] = ExitHandlerIntelX64,
) -> ExitHarness:
    h = ExitHarness(handler)
    for i, gpa in enumerate(BACKING):
        h.page_tables.map(BUFFERS_GVA + i * 0x1000, gpa, 0x1000)
    return h


def gva_to_gpa(gva: int) -> int:
    page = (gva - BUFFERS_GVA) // 0x1000
    return BACKING[page] + (gva & 0xFFF)


def put(h: ExitHarness, gva: int, data: bytes) -> None:
    for i, byte in enumerate(data):
        h.memory.write(gva_to_gpa(gva + i), bytes([byte]))


def get(h: ExitHarness, gva: int, length: int) -> bytes:
    return b"".join(h.memory.read(gva_to_gpa(gva + i), 1) for i in range(length))


def vmcall(h: ExitHarness, opcode: int, magic: int = VMCALL_MAGIC_NUMBER, **regs: int) -> None:
    """Exit with a VMCALL; ``regs`` name vmcall_registers_t slots (r02...) or GPRs."""
    gprs = {REGISTER_OF_SLOT.get(k, k): v for k, v in regs.items()}
    h.exit(ExitReason.VMCALL, length=3, rax=opcode, rdx=magic, **gprs)


def data_call(
    h: ExitHarness, kind: int, payload: bytes, *, out_gva: int = OUT_GVA, out_size: int = OUT_SIZE
) -> None:
    put(h, IN_GVA, payload)
    vmcall(
        h, VmcallOpcode.DATA, r04=kind, r05=IN_GVA, r06=len(payload),
        r07=0, r08=out_gva, r09=out_size,
    )  # fmt: skip
